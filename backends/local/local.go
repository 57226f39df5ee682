// Package local runs the agent as a child process on this machine.
package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/agent"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/procs"
)

// Options configure the local executor.
type Options struct {
	// AgentPath is the rlmrun binary to run as `AGENT agent`.
	AgentPath string
}

// Executor starts one local agent process per rollout.
type Executor struct{ opts Options }

// New returns a local executor.
func New(opts Options) (*Executor, error) {
	if opts.AgentPath == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find the rlmrun binary: %w", err)
		}
		opts.AgentPath = self
	}
	return &Executor{opts: opts}, nil
}

// Name is "local".
func (e *Executor) Name() string { return "local" }

// Start runs `rlmrun agent` with a scrubbed environment and connects to it.
// The process is in its own process group (Ctrl-C reaches the runner, which
// ends it in order) and is killed if the runner dies.
func (e *Executor) Start(ctx context.Context, req backends.StartRequest) (*client.Session, *backends.Facts, error) {
	// The agent's private files go next to the rollout's directory, inside
	// the run's directory: they go with it even if the agent is killed.
	args := []string{"agent", "--tmp", filepath.Dir(req.Root)}
	if req.Language != "" {
		args = append(args, "--language", req.Language, "--python", req.Python)
	}
	cmd := exec.Command(e.opts.AgentPath, args...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"}
	stderr := procs.NewTail(8 << 10)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start agent %s: %w", e.opts.AgentPath, err)
	}
	proc := procs.Watch(cmd)
	sess, err := client.New(client.Options{
		Conn:        agent.StdioConn{In: stdout, Out: stdin},
		Close:       func(ctx context.Context) error { return proc.Stop(ctx, 3*time.Second) },
		Diagnostics: stderr.String,
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
	return sess, &backends.Facts{Backend: "local", AgentPID: hello.PID, AgentUID: hello.UID, Hostname: hello.Hostname}, nil
}
