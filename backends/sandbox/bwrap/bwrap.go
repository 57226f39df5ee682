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
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/internal/ownerdir"
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
	// StateRoot holds the provider's state (default DefaultStateRoot());
	// `rlmrun cleanup` looks there. rlmrun creates it, or uses it only if
	// it is this user's own and nobody else may write to it.
	StateRoot string
}

// Provider creates bubblewrap sandboxes.
type Provider struct {
	opts    Options
	bwrap   string
	setpriv string // set when running as root: bwrap then runs as nobody
	cg      *cgroups

	// The state root holds sandboxes/ (0700: each sandbox's labels and
	// pid, private to this user) and bin/ (0711: the agent copy, which
	// bubblewrap, running as nobody, must reach by name). Both are opened
	// as Roots: every file is created through them, exclusively and never
	// through a symlink.
	sandboxes *os.Root
	bin       *os.Root

	once     sync.Once
	agent    string // a copy of the agent binary every sandbox user can read
	agentErr error
}

// DefaultStateRoot is where sandbox state lives unless told otherwise:
// $RLMRUN_STATE_DIR, else a directory of this user's in /run (root) or
// $XDG_RUNTIME_DIR, and only failing those one named for the user in the
// temp directory.
func DefaultStateRoot() string {
	if d := os.Getenv("RLMRUN_STATE_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		if fi, err := os.Stat("/run"); err == nil && fi.IsDir() {
			return "/run/rlmrun"
		}
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "rlmrun")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("rlmrun-%d", os.Geteuid()))
}

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
	if err := p.openState(); err != nil {
		return nil, fmt.Errorf("bwrap state directory: %w", err)
	}
	return p, nil
}

func (p *Provider) openState() error {
	root := p.opts.StateRoot
	for _, d := range []struct {
		path string
		perm os.FileMode
	}{{root, 0o711}, {filepath.Join(root, "sandboxes"), 0o700}, {filepath.Join(root, "bin"), 0o711}} {
		if err := ownerdir.Ensure(d.path, d.perm); err != nil {
			return err
		}
	}
	var err error
	if p.sandboxes, err = os.OpenRoot(filepath.Join(root, "sandboxes")); err != nil {
		return err
	}
	if p.bin, err = os.OpenRoot(filepath.Join(root, "bin")); err != nil {
		p.sandboxes.Close()
		return err
	}
	return nil
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
		name := ownerPrefix()
		p.agentErr = copyInto(p.bin, p.opts.AgentPath, name, 0o755)
		p.agent = filepath.Join(p.opts.StateRoot, "bin", name)
	})
	return p.agent, p.agentErr
}

// copyInto copies src to name under root: written to a new temporary file,
// then renamed into place.
func copyInto(root *os.Root, src, name string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	defer in.Close()
	tmp := name + ".tmp"
	_ = root.Remove(tmp) // a copy a killed run of this pid left
	out, err := root.OpenFile(tmp, ownerdir.Exclusive, mode)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(mode)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = root.Remove(tmp)
		return fmt.Errorf("agent binary: %w", err)
	}
	return root.Rename(tmp, name)
}

// Close removes the agent copy and releases the state directories.
func (p *Provider) Close() error {
	var err error
	if p.agent != "" {
		err = p.bin.Remove(filepath.Base(p.agent))
		p.agent = ""
	}
	if p.cg != nil {
		p.cg.close()
	}
	p.sandboxes.Close()
	p.bin.Close()
	return err
}

// box is one bubblewrap sandbox.
type box struct {
	p      *Provider
	id     string
	dir    string
	state  *os.Root // dir
	req    sandbox.CreateRequest
	cgroup []string

	mu   sync.Mutex
	proc *procs.Proc
	gone bool
}

// sandboxFiles are the /etc files a sandbox gets: its own users, so the
// REPL's uid has a name.
func sandboxFiles() map[string]string {
	return map[string]string{
		"/etc/passwd": fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\nrlm:x:%d:%d:rlmrun sandbox:/tmp:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", sandboxUID, sandboxGID),
		"/etc/group":  fmt.Sprintf("root:x:0:\nrlm:x:%d:\nnogroup:x:65534:\n", sandboxGID),
	}
}

// Create prepares the sandbox's state directory and cgroups; nothing runs yet.
func (p *Provider) Create(ctx context.Context, req sandbox.CreateRequest) (sandbox.Sandbox, error) {
	if _, err := p.agentCopy(); err != nil {
		return nil, err
	}
	if err := checkID(req.Name); err != nil {
		return nil, err
	}
	if err := p.sandboxes.Mkdir(req.Name, 0o700); err != nil {
		return nil, fmt.Errorf("sandbox state: %w", err)
	}
	state, err := p.sandboxes.OpenRoot(req.Name)
	if err != nil {
		_ = p.sandboxes.RemoveAll(req.Name)
		return nil, fmt.Errorf("sandbox state: %w", err)
	}
	b := &box{p: p, id: req.Name, dir: filepath.Join(p.opts.StateRoot, "sandboxes", req.Name), state: state, req: req}
	labels, _ := json.Marshal(req.Labels)
	if err := ownerdir.WriteFile(state, "labels.json", labels, 0o600); err != nil {
		b.removeState()
		return nil, fmt.Errorf("sandbox state: %w", err)
	}
	if p.cg != nil {
		procs, err := p.cg.create(b.id, limits{
			memoryBytes: req.Settings.MemoryBytes,
			pids:        req.Settings.PIDs,
			cpuCores:    req.Settings.CPUCores,
		})
		b.cgroup = procs
		if err != nil {
			_ = p.cg.remove(context.Background(), b.id)
			b.removeState()
			return nil, err
		}
	}
	return b, nil
}

func (b *box) removeState() {
	b.state.Close()
	_ = b.p.sandboxes.RemoveAll(b.id)
}

// checkID refuses a sandbox name that is not one plain directory entry.
func checkID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("bad sandbox id %q", id)
	}
	return nil
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
	if s.HostNetwork {
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
	// The sandbox's own /etc files arrive on inherited descriptors (3, 4,
	// ...: Start passes them in this order), so bubblewrap, running as
	// nobody, needs no path to this user's private state.
	for i, name := range dataFileNames() {
		args = append(args, "--ro-bind-data", strconv.Itoa(3+i), name)
	}
	args = append(args,
		"--proc", "/proc",
		"--dev", "/dev",
		"--perms", "1777", "--size", strconv.FormatInt(s.DiskBytes, 10), "--tmpfs", "/tmp",
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
	data, err := dataPipes()
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range data {
			f.Close()
		}
	}()
	cmd.ExtraFiles = data
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
	if err := ownerdir.WriteFile(b.state, "pid", []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		b.proc.Kill()
		<-b.proc.Exited()
		return nil, fmt.Errorf("sandbox state: %w", err)
	}
	return procs.Stream{R: stdout, W: stdin, Stderr: stderr}, nil
}

// dataFileNames are the sandbox's /etc files, in descriptor order.
func dataFileNames() []string {
	names := make([]string, 0, 2)
	for name := range sandboxFiles() {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// dataPipes returns, for each of dataFileNames, the read end of a pipe
// holding its content (small: it fits the pipe's buffer).
func dataPipes() ([]*os.File, error) {
	files := sandboxFiles()
	var out []*os.File
	for _, name := range dataFileNames() {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range out {
				f.Close()
			}
			return nil, err
		}
		_, err = io.WriteString(w, files[name])
		w.Close()
		if err != nil {
			r.Close()
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// rlimits are the fallback limits when no cgroup is available.
func (b *box) rlimits() string {
	if b.p.cg != nil {
		return ""
	}
	s := b.req.Settings
	return fmt.Sprintf("-v %d -u %d", s.MemoryBytes/1024+(4<<20), s.PIDs)
}

// Delete kills the sandbox (bwrap's death takes everything inside with it)
// and removes its state and cgroups. A cgroup that cannot be removed is an
// error (cleanup finds it later).
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
	var errs *multierror.Error
	if b.p.cg != nil {
		errs = multierror.Append(errs, b.p.cg.remove(context.WithoutCancel(ctx), b.id))
	}
	b.state.Close()
	errs = multierror.Append(errs, b.p.sandboxes.RemoveAll(b.id))
	return errs.ErrorOrNil()
}

// List returns the sandboxes whose labels include all of sel: those with a
// state directory, and cgroups whose state directory is gone.
func (p *Provider) List(ctx context.Context, sel map[string]string) ([]sandbox.Info, error) {
	f, err := p.sandboxes.Open(".")
	if err != nil {
		return nil, err
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	found := map[string]map[string]string{}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		b, err := p.sandboxes.ReadFile(filepath.Join(e.Name(), "labels.json"))
		if err != nil {
			continue
		}
		var labels map[string]string
		if json.Unmarshal(b, &labels) != nil {
			continue
		}
		found[e.Name()] = labels
	}
	if p.cg != nil {
		for name, labels := range p.cg.list() {
			if _, ok := found[name]; !ok {
				found[name] = labels
			}
		}
	}
	var out []sandbox.Info
	for name, labels := range found {
		match := true
		for k, v := range sel {
			if labels[k] != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, sandbox.Info{ID: name, Labels: labels})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Remove deletes a sandbox found by List: it kills its bwrap process (if
// one still runs) and removes its state and cgroups.
func (p *Provider) Remove(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	dir := filepath.Join(p.opts.StateRoot, "sandboxes", id)
	if b, err := p.sandboxes.ReadFile(filepath.Join(id, "pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), p.bwrap) {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	var errs *multierror.Error
	if p.cg != nil {
		errs = multierror.Append(errs, p.cg.remove(ctx, id))
	}
	if err := p.sandboxes.RemoveAll(id); err != nil {
		errs = multierror.Append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errs.ErrorOrNil()
}

// Leftovers lists, besides sandboxes, the agent binary copies of runs whose
// owner process is gone (a backends.Sweeper). Copies belong to processes,
// not runs: they are listed only when all runs are swept.
func (p *Provider) Leftovers(ctx context.Context, runID string) ([]backends.Leftover, error) {
	if runID != "" {
		return nil, nil
	}
	f, err := p.bin.Open(".")
	if err != nil {
		return nil, err
	}
	entries, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return nil, err
	}
	var out []backends.Leftover
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, "agent-") {
			continue
		}
		parts := strings.SplitN(strings.TrimSuffix(strings.TrimPrefix(name, "agent-"), ".tmp"), "-", 2)
		if len(parts) != 2 || sandbox.OwnerAlive(map[string]string{sandbox.LabelOwnerPID: parts[0], sandbox.LabelOwnerStart: parts[1]}) {
			continue
		}
		out = append(out, backends.Leftover{
			What:   "agent copy " + filepath.Join(p.opts.StateRoot, "bin", name),
			Remove: func(context.Context) error { return p.bin.Remove(name) },
		})
	}
	return out, nil
}

// Factory is the provider's sandbox.Factory: bubblewrap takes no settings
// of its own.
func Factory(_ context.Context, opts sandbox.FactoryOptions) (sandbox.Provider, error) {
	return New(Options{AgentPath: opts.AgentPath})
}
