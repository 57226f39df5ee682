// Package bwrap is the bubblewrap sandbox provider: real Linux namespaces,
// no daemon, a few milliseconds to start. A sandbox is a state directory
// (labels, an /etc/passwd of its own) and, once started, one bwrap process
// whose child is the agent.
package bwrap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/sandbox"
)

// Inside every sandbox the REPL runs as this unprivileged user; on the host
// it is mapped to nobody (65534) when rlmrun runs as root, or to the user
// running rlmrun.
const (
	sandboxUID = 1000
	sandboxGID = 1000
	hostNobody = 65534
)

// Options configure the provider.
type Options struct {
	// AgentPath is the rlmrun binary to run inside sandboxes.
	AgentPath string
	// StateRoot holds the sandboxes' state directories (default
	// $TMPDIR/rlmrun-sandboxes); `rlmrun cleanup` looks there.
	StateRoot string
}

// Provider creates bubblewrap sandboxes.
type Provider struct {
	opts    Options
	bwrap   string
	setpriv string // set when running as root: bwrap then runs as nobody
	cg      *cgroups

	once     sync.Once
	agent    string // a copy of the agent binary every sandbox user can read
	agentErr error
}

// DefaultStateRoot is where sandbox state lives unless told otherwise.
func DefaultStateRoot() string { return filepath.Join(os.TempDir(), "rlmrun-sandboxes") }

// New finds bubblewrap and prepares the state root.
func New(opts Options) (*Provider, error) {
	if opts.StateRoot == "" {
		opts.StateRoot = DefaultStateRoot()
	}
	bw, err := exec.LookPath("bwrap")
	if err != nil {
		return nil, fmt.Errorf("%w: bubblewrap (bwrap) is not on PATH; install it with: apt-get install -y bubblewrap", sandbox.ErrNotInstalled)
	}
	p := &Provider{opts: opts, bwrap: bw}
	if os.Geteuid() == 0 {
		// As root, bwrap would keep the power to remount binds and read
		// root-owned files: it runs as nobody instead.
		sp, err := exec.LookPath("setpriv")
		if err != nil {
			return nil, fmt.Errorf("%w: setpriv (util-linux) is needed to run bubblewrap as an unprivileged user", sandbox.ErrNotInstalled)
		}
		p.setpriv = sp
		p.cg = detectCgroups()
	}
	if err := os.MkdirAll(opts.StateRoot, 0o711); err != nil {
		return nil, fmt.Errorf("bwrap state directory: %w", err)
	}
	return p, nil
}

// Name is "bwrap".
func (p *Provider) Name() string { return "bwrap" }

// Enforced says which resource limits this provider enforces here.
func (p *Provider) Enforced() string {
	switch {
	case p.cg != nil && p.cg.v2:
		return "cgroup v2: memory, pids, cpu; tmpfs size: disk"
	case p.cg != nil:
		return "cgroup v1: memory, pids, cpu; tmpfs size: disk"
	}
	return "rlimits: address space, processes; tmpfs size: disk"
}

// ownerPrefix names this provider's agent copy, so cleanup can tell whose it is.
func ownerPrefix() string {
	start, _ := procs.StartTime(os.Getpid())
	return fmt.Sprintf("agent-%d-%s", os.Getpid(), start)
}

// agentCopy puts the rlmrun binary where the sandbox user can read it (the
// original may sit in a directory only its owner can enter).
func (p *Provider) agentCopy() (string, error) {
	p.once.Do(func() {
		dst := filepath.Join(p.opts.StateRoot, ownerPrefix())
		p.agentErr = copyFile(p.opts.AgentPath, dst, 0o755)
		p.agent = dst
	})
	return p.agent, p.agentErr
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("agent binary: %w", err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// Close removes the agent copy.
func (p *Provider) Close() error {
	if p.agent != "" {
		return os.Remove(p.agent)
	}
	return nil
}

// box is one bubblewrap sandbox.
type box struct {
	p      *Provider
	id     string
	dir    string
	req    sandbox.CreateRequest
	cgroup []string

	mu   sync.Mutex
	proc *procs.Proc
	gone bool
}

// Create prepares the sandbox's state directory and cgroups; nothing runs yet.
func (p *Provider) Create(ctx context.Context, req sandbox.CreateRequest) (sandbox.Sandbox, error) {
	if _, err := p.agentCopy(); err != nil {
		return nil, err
	}
	b := &box{p: p, id: req.Name, dir: filepath.Join(p.opts.StateRoot, req.Name), req: req}
	if err := os.Mkdir(b.dir, 0o711); err != nil {
		return nil, fmt.Errorf("sandbox state: %w", err)
	}
	labels, _ := json.Marshal(req.Labels)
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\nrlm:x:%d:%d:rlmrun sandbox:/tmp:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", sandboxUID, sandboxGID)
	group := fmt.Sprintf("root:x:0:\nrlm:x:%d:\nnogroup:x:65534:\n", sandboxGID)
	for name, content := range map[string]string{"labels.json": string(labels), "passwd": passwd, "group": group} {
		if err := os.WriteFile(filepath.Join(b.dir, name), []byte(content), 0o644); err != nil {
			_ = os.RemoveAll(b.dir)
			return nil, fmt.Errorf("sandbox state: %w", err)
		}
	}
	if p.cg != nil {
		procs, err := p.cg.create(b.id, limits{
			memoryBytes: int64(req.Settings.MemoryGB * (1 << 30)),
			pids:        req.Settings.PIDs,
			cpuCores:    req.Settings.CPUCores,
		})
		b.cgroup = procs
		if err != nil {
			p.cg.remove(b.id)
			_ = os.RemoveAll(b.dir)
			return nil, err
		}
	}
	return b, nil
}

func (b *box) ID() string { return b.id }

// bwrapArgs is the sandbox: every namespace unshared (the network too,
// unless network is host), all capabilities dropped, an unprivileged uid,
// read-only system directories, a private /tmp of disk_size_gb, private /proc
// and /dev, its own /etc/passwd, the agent binary, and nothing else of the host.
func (b *box) bwrapArgs(argv []string) []string {
	s := b.req.Settings
	args := []string{
		"--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
		"--cap-drop", "ALL", "--disable-userns",
		"--uid", strconv.Itoa(sandboxUID), "--gid", strconv.Itoa(sandboxGID),
		"--hostname", "rlmrun",
	}
	if s.Network == "host" {
		args = append(args, "--share-net")
	}
	args = append(args, "--ro-bind", "/usr", "/usr")
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			if target, err := os.Readlink(d); err == nil {
				args = append(args, "--symlink", target, d)
			}
		case fi.IsDir():
			args = append(args, "--ro-bind", d, d)
		}
	}
	for _, f := range []string{"/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime", "/etc/nsswitch.conf"} {
		args = append(args, "--ro-bind-try", f, f)
	}
	args = append(args,
		"--ro-bind", filepath.Join(b.dir, "passwd"), "/etc/passwd",
		"--ro-bind", filepath.Join(b.dir, "group"), "/etc/group",
		"--proc", "/proc",
		"--dev", "/dev",
		"--perms", "1777", "--size", strconv.FormatInt(int64(s.DiskSizeGB*(1<<30)), 10), "--tmpfs", "/tmp",
		"--ro-bind", b.p.agent, sandbox.AgentPathInside,
		"--chdir", "/tmp",
		"--",
	)
	return append(args, argv...)
}

// launcher joins the sandbox's cgroups (or sets rlimits), then runs bwrap.
const launcher = `for f in $RLMRUN_CGROUP_PROCS; do echo $$ > "$f" || exit 97; done
if [ -n "$RLMRUN_RLIMITS" ]; then ulimit $RLMRUN_RLIMITS || exit 97; fi
unset RLMRUN_CGROUP_PROCS RLMRUN_RLIMITS
exec "$@"`

// Start runs argv as the sandbox's command.
func (b *box) Start(ctx context.Context, argv []string) (sandbox.Process, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.proc != nil || b.gone {
		return nil, errors.New("sandbox already started or deleted")
	}
	cmdline := []string{"/bin/sh", "-c", launcher, "rlmrun-sandbox"}
	if b.p.setpriv != "" {
		cmdline = append(cmdline, b.p.setpriv, fmt.Sprintf("--reuid=%d", hostNobody), fmt.Sprintf("--regid=%d", hostNobody), "--clear-groups", "--inh-caps=-all", "--bounding-set=-all")
	}
	cmdline = append(cmdline, b.p.bwrap)
	cmdline = append(cmdline, b.bwrapArgs(argv)...)
	cmd := exec.Command(cmdline[0], cmdline[1:]...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/tmp",
		"RLMRUN_CGROUP_PROCS=" + strings.Join(b.cgroup, " "), "RLMRUN_RLIMITS=" + b.rlimits()}
	cmd.Dir = "/"
	// Its own process group (Ctrl-C reaches the runner only) and killed if
	// the runner dies before bwrap takes over with --die-with-parent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr := procs.NewTail(8 << 10)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start bwrap: %w", err)
	}
	b.proc = procs.Watch(cmd)
	_ = os.WriteFile(filepath.Join(b.dir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	return &process{in: stdin, out: stdout, stderr: stderr}, nil
}

// rlimits are the fallback limits when no cgroup is available.
func (b *box) rlimits() string {
	if b.p.cg != nil {
		return ""
	}
	s := b.req.Settings
	return fmt.Sprintf("-v %d -u %d", int64(s.MemoryGB*(1<<20))+(4<<20), s.PIDs)
}

type process struct {
	in     io.WriteCloser
	out    io.ReadCloser
	stderr *procs.Tail
}

func (p *process) Read(b []byte) (int, error)  { return p.out.Read(b) }
func (p *process) Write(b []byte) (int, error) { return p.in.Write(b) }
func (p *process) Close() error {
	err := p.in.Close()
	_ = p.out.Close()
	return err
}
func (p *process) Diagnostics() string { return p.stderr.String() }

// Delete kills the sandbox (bwrap's death takes everything inside with it)
// and removes its state and cgroups.
func (b *box) Delete(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone {
		return nil
	}
	b.gone = true
	if b.proc != nil {
		_ = b.proc.Stop(ctx, 2*time.Second)
	}
	if b.p.cg != nil {
		b.p.cg.remove(b.id)
	}
	return os.RemoveAll(b.dir)
}

// List returns the sandboxes whose labels include all of sel.
func (p *Provider) List(ctx context.Context, sel map[string]string) ([]sandbox.Info, error) {
	entries, err := os.ReadDir(p.opts.StateRoot)
	if err != nil {
		return nil, err
	}
	var out []sandbox.Info
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.opts.StateRoot, e.Name(), "labels.json"))
		if err != nil {
			continue
		}
		var labels map[string]string
		if json.Unmarshal(b, &labels) != nil {
			continue
		}
		match := true
		for k, v := range sel {
			if labels[k] != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, sandbox.Info{ID: e.Name(), Labels: labels})
		}
	}
	return out, nil
}

// Remove deletes a sandbox found by List: it kills its bwrap process (if
// one still runs) and removes its state and cgroups.
func (p *Provider) Remove(ctx context.Context, id string) error {
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return fmt.Errorf("bad sandbox id %q", id)
	}
	dir := filepath.Join(p.opts.StateRoot, id)
	if b, err := os.ReadFile(filepath.Join(dir, "pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), dir) {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if p.cg != nil {
		p.cg.remove(id)
	}
	return os.RemoveAll(dir)
}

// StaleAgentCopies lists agent binary copies whose owner process is gone.
func (p *Provider) StaleAgentCopies() []string {
	entries, _ := os.ReadDir(p.opts.StateRoot)
	var out []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, "agent-") {
			continue
		}
		parts := strings.SplitN(strings.TrimSuffix(strings.TrimPrefix(name, "agent-"), ".tmp"), "-", 2)
		if len(parts) != 2 {
			continue
		}
		if !sandbox.OwnerAlive(map[string]string{sandbox.LabelOwnerPID: parts[0], sandbox.LabelOwnerStart: parts[1]}) {
			out = append(out, filepath.Join(p.opts.StateRoot, name))
		}
	}
	return out
}
