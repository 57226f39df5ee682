// Package local runs the agent as a child process on this machine.
package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/confine"
	"github.com/rlmrun/rlmrun/backends/procs"
)

// Options configure the local executor.
type Options struct {
	// AgentPath is the rlmrun binary to run as `AGENT agent`.
	AgentPath string
	// NoNamespaces runs agents without a PID namespace of their own, as
	// where the kernel refuses one (tests of that fallback).
	NoNamespaces bool
	// Confinement is confine.BestEffort (the default), confine.Required
	// or confine.Off: how each agent confines itself and its REPL with
	// Landlock.
	Confinement string
	// Network leaves the REPL's TCP alone (the spec's network: host);
	// otherwise it may connect only to its agent's ports.
	Network bool
}

// Executor starts one local agent process per rollout.
type Executor struct {
	opts  Options
	owner string // this runner: PID-START
	// noNamespaces remembers that the kernel refused a PID namespace.
	noNamespaces atomic.Bool
}

// New returns a local executor.
func New(opts Options) (*Executor, error) {
	if opts.AgentPath == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find the rlmrun binary: %w", err)
		}
		opts.AgentPath = self
	}
	start, err := procs.StartTime(os.Getpid())
	if err != nil {
		return nil, err
	}
	switch opts.Confinement {
	case "":
		opts.Confinement = confine.BestEffort
	case confine.BestEffort, confine.Required, confine.Off:
	default:
		return nil, fmt.Errorf("confinement %q: want %s, %s or %s", opts.Confinement, confine.BestEffort, confine.Required, confine.Off)
	}
	if opts.Confinement == confine.Required {
		if err := confine.Unavailable(); err != nil {
			return nil, err
		}
	}
	e := &Executor{opts: opts, owner: fmt.Sprintf("%d-%s", os.Getpid(), start)}
	e.noNamespaces.Store(opts.NoNamespaces)
	return e, nil
}

// OwnerEnv marks the processes of a rollout run without a PID namespace with
// their runner ("PID-START"): the agent passes it on to its worker.
const OwnerEnv = "RLMRUN_OWNER"

// Root is where a rollout's directory lives: in the run's directory.
func (e *Executor) Root(runDir, rolloutID string) string { return filepath.Join(runDir, rolloutID) }

// Leftovers lists what local rollouts of killed runs left running: the
// processes of cells that left their session when no PID namespace could
// end them (a backends.Sweeper). They are known by OwnerEnv in their
// environment; a process that cleared its environment is not found, and
// processes are not told apart by run.
func (e *Executor) Leftovers(ctx context.Context, runID string) ([]backends.Leftover, error) {
	if runID != "" {
		return nil, nil
	}
	var out []backends.Leftover
	for _, pid := range staleProcesses() {
		pid := pid
		out = append(out, backends.Leftover{
			What:   fmt.Sprintf("process %d left by a killed local run", pid),
			Remove: func(context.Context) error { return syscall.Kill(pid, syscall.SIGKILL) },
		})
	}
	return out, nil
}

// staleProcesses lists processes marked with OwnerEnv whose runner is gone.
func staleProcesses() []int {
	var out []int
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			owner, ok := strings.CutPrefix(kv, OwnerEnv+"=")
			if !ok {
				continue
			}
			opid, start, _ := strings.Cut(owner, "-")
			if n, err := strconv.Atoi(opid); err == nil && !procs.Alive(n, start) {
				out = append(out, pid)
			}
			break
		}
	}
	return out
}

// Name is "local".
func (e *Executor) Name() string { return "local" }

// Start runs `rlmrun agent` with a scrubbed environment and connects to it.
// The agent is the first process of a PID namespace of its own, so when it
// ends — even killed, even with the runner — the kernel ends everything its
// cells started, however they left its process group. It is in its own
// process group (Ctrl-C reaches the runner, which ends it in order) and is
// killed if the runner dies.
func (e *Executor) Start(ctx context.Context, req backends.StartRequest) (*client.Session, *backends.Facts, error) {
	proc, stdio, contained, err := e.startAgent(req)
	if err != nil {
		return nil, nil, err
	}
	sess, err := client.New(client.Options{
		Conn: stdio,
		Close: func(ctx context.Context) error {
			err := proc.Stop(ctx, 3*time.Second)
			if e.opts.Confinement != confine.Off {
				// A confined agent empties the rollout's directories but
				// may not remove them.
				for _, d := range []string{filepath.Join(req.Root, "work"), filepath.Join(req.Root, "agent")} {
					_ = os.RemoveAll(d)
				}
				_ = os.Remove(req.Root)
			}
			return err
		},
		Diagnostics: stdio.Diagnostics,
	})
	if err != nil {
		_ = proc.Stop(ctx, 0)
		return nil, nil, err
	}
	hctx := ctx
	if req.StartupTimeout > 0 {
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, req.StartupTimeout)
		defer cancel()
	}
	hello, err := sess.Hello(hctx)
	if err != nil {
		_ = sess.Close(context.Background())
		if errors.Is(hctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			return nil, nil, fmt.Errorf("agent did not answer within %s: %w", req.StartupTimeout, err)
		}
		return nil, nil, err
	}
	containment := procs.ContainProcessGroup
	if contained {
		containment = procs.ContainPIDNamespace
	}
	// The pid as this machine sees it: inside its namespace the agent is 1.
	confinement := hello.Confinement
	if confinement == "" {
		confinement = confine.None
	}
	return sess, &backends.Facts{Backend: "local", AgentPID: proc.Pid(), AgentUID: hello.UID, Hostname: hello.Hostname, Containment: containment, Confinement: confinement}, nil
}

// startAgent starts the agent process, in a PID namespace unless the
// kernel refuses one.
func (e *Executor) startAgent(req backends.StartRequest) (*procs.Proc, procs.Stream, bool, error) {
	for {
		contain := !e.noNamespaces.Load()
		// The agent's private files go next to the rollout's directory,
		// inside the run's directory: they go with it even if the agent is
		// killed.
		args := []string{"agent", "--tmp", filepath.Dir(req.Root)}
		if req.Language != "" {
			args = append(args, "--language", req.Language, "--python", req.Python)
		}
		attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if contain {
			args = append(args, "--init")
			procs.NewPIDNamespace(attr)
		}
		if e.opts.Confinement != confine.Off {
			args = append(args, "--confine", req.Root, "--confinement", e.opts.Confinement)
			if e.opts.Network {
				args = append(args, "--network")
			}
		}
		cmd := exec.Command(e.opts.AgentPath, args...)
		cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"}
		if !contain {
			// Without a namespace, what a killed run's cells left can only be
			// found by this mark in their environment (Leftovers).
			cmd.Env = append(cmd.Env, OwnerEnv+"="+e.owner)
		}
		stderr := procs.NewTail(8 << 10)
		cmd.Stderr = stderr
		cmd.SysProcAttr = attr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, procs.Stream{}, false, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, procs.Stream{}, false, err
		}
		if err := cmd.Start(); err != nil {
			if contain && procs.NamespaceRefused(err) {
				e.noNamespaces.Store(true)
				continue
			}
			return nil, procs.Stream{}, false, fmt.Errorf("start agent %s: %w", e.opts.AgentPath, err)
		}
		return procs.Watch(cmd), procs.Stream{R: stdout, W: stdin, Stderr: stderr}, contain, nil
	}
}
