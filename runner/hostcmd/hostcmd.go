// Package hostcmd runs the spec's host commands — tools, `run` rewards and
// tool servers — the way every one of them must run: from a directory the
// spec's author controls (never one the model wrote), with a scrubbed
// environment, and contained, so that nothing a command starts outlives it.
//
// Containment: each command is the first process of a PID namespace of its
// own (CLONE_NEWPID; with an identity-mapped user namespace when rlmrun is
// not root). When that process exits or is killed, the kernel kills
// everything left in the namespace, whatever it did to escape: `setsid`, a
// double fork, a new session. Where the kernel refuses namespaces, the
// command runs in a process group of its own, which `setsid` escapes; the
// run's results record which containment applied.
package hostcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rlmrun/rlmrun/backends/procs"
)

// waitDelay bounds how long a command's end may be held up by a descendant
// that keeps its output pipes open (when no PID namespace ends it).
const waitDelay = time.Second

// Spawner starts host commands. One serves a whole run: it remembers when
// the kernel refused namespaces, so the refusal is paid once.
type Spawner struct {
	noNamespaces atomic.Bool
}

// NewSpawner returns a spawner. With contain false it never uses namespaces
// (tests of the fallback).
func NewSpawner(contain bool) *Spawner {
	s := &Spawner{}
	s.noNamespaces.Store(!contain)
	return s
}

// Containment reports what the spawner currently achieves.
func (s *Spawner) Containment() string {
	if s.noNamespaces.Load() {
		return procs.ContainProcessGroup
	}
	return procs.ContainPIDNamespace
}

// Cmd is one host command.
type Cmd struct {
	Argv []string
	// Dir is the working directory: the spec's folder.
	Dir string
	// Env is the whole environment (see Environ).
	Env    []string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Process is a started command.
type Process struct {
	cmd       *exec.Cmd
	contained bool
	exited    chan struct{}
	err       error
}

// Start starts c. The process dies with this one (SIGKILL on its death).
func (s *Spawner) Start(c Cmd) (*Process, error) {
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return nil, errors.New("empty command")
	}
	if !s.noNamespaces.Load() {
		p, err := start(c, true)
		if err == nil {
			return p, nil
		}
		if !procs.NamespaceRefused(err) {
			return nil, err
		}
		// The kernel (or its limits) refuse namespaces here: process groups
		// from now on.
		s.noNamespaces.Store(true)
	}
	return start(c, false)
}

func start(c Cmd, contain bool) (*Process, error) {
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.Dir = c.Dir
	cmd.Env = c.Env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.Stdin, c.Stdout, c.Stderr
	cmd.WaitDelay = waitDelay
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if contain {
		procs.NewPIDNamespace(attr)
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, contained: contain, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Pid is the process id (in this process's namespace).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Contained reports whether the process leads a PID namespace.
func (p *Process) Contained() bool { return p.contained }

// Exited is closed when the process has ended and its output is collected.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is the exit error, valid after Exited.
func (p *Process) Err() error { return p.err }

// State is the exit state, valid after Exited.
func (p *Process) State() *os.ProcessState { return p.cmd.ProcessState }

// Kill ends the process and everything it started: the namespace goes with
// its first process; without one, the process group is killed.
func (p *Process) Kill() {
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = p.cmd.Process.Kill()
}

// Call is one run of a command to completion.
type Call struct {
	Cmd
	Timeout time.Duration
	// MaxStdout caps what is kept of stdout; more marks Outcome.StdoutOver.
	MaxStdout int
	// StderrTail is how much of the end of stderr is kept.
	StderrTail int
}

// Outcome is what a Call did.
type Outcome struct {
	Stdout     []byte
	StdoutOver bool
	Stderr     string // the tail, trimmed
	// Err is the exit error (nil for status 0), or why it could not start.
	Err      error
	Started  bool
	TimedOut bool
	CPU      time.Duration // user + system time of the command
}

// Run starts c, waits for it within its timeout and ctx, and returns what it
// printed. A timeout or a cancelled ctx kills it and all it started.
func (s *Spawner) Run(ctx context.Context, c Call) Outcome {
	var out Outcome
	stdout := &Capped{Max: c.MaxStdout}
	tail := c.StderrTail
	if tail <= 0 {
		tail = 16 << 10
	}
	stderr := procs.NewTail(tail)
	c.Cmd.Stdout, c.Cmd.Stderr = stdout, stderr
	p, err := s.Start(c.Cmd)
	if err != nil {
		out.Err = err
		return out
	}
	out.Started = true
	var timer <-chan time.Time
	if c.Timeout > 0 {
		t := time.NewTimer(c.Timeout)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-p.Exited():
	case <-timer:
		out.TimedOut = true
		p.Kill()
		<-p.Exited()
	case <-ctx.Done():
		p.Kill()
		<-p.Exited()
		out.Err = ctx.Err()
	}
	if out.Err == nil {
		out.Err = p.Err()
		// A descendant that held the output open past the command's end is
		// not the command's failure.
		if errors.Is(out.Err, exec.ErrWaitDelay) {
			out.Err = nil
		}
	}
	if st := p.State(); st != nil {
		out.CPU = st.UserTime() + st.SystemTime()
	}
	out.Stdout, out.StdoutOver = stdout.Bytes(), stdout.Over()
	out.Stderr = stderr.String()
	return out
}

// Capped is a writer that keeps its first Max bytes (0: unlimited) and
// notes that more came.
type Capped struct {
	Max  int
	buf  bytes.Buffer
	over bool
}

func (c *Capped) Write(p []byte) (int, error) {
	if c.Max > 0 {
		if room := c.Max - c.buf.Len(); room < len(p) {
			c.over = true
			if room > 0 {
				c.buf.Write(p[:room])
			}
			return len(p), nil
		}
	}
	return c.buf.Write(p)
}

// Bytes is what was kept.
func (c *Capped) Bytes() []byte { return c.buf.Bytes() }

// Over reports whether anything was dropped.
func (c *Capped) Over() bool { return c.over }

// baseEnv are the variables of the runner's environment every host command
// gets, as the REPL's worker does: enough to find programs, the locale and
// the time zone. Nothing else passes unless the spec names it (pass_env) —
// the runner's environment holds API keys and tokens.
var baseEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "TZ", "TMPDIR"}

// Environ builds a host command's environment from the runner's (parent):
// the base variables, the ones pass names, then set, then extra (rlmrun's
// own), later entries winning.
func Environ(parent []string, pass []string, set map[string]string, extra ...string) []string {
	want := map[string]bool{}
	for _, k := range baseEnv {
		want[k] = true
	}
	for _, k := range pass {
		want[k] = true
	}
	vals := map[string]string{}
	var order []string
	put := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, kv := range parent {
		k, v, ok := strings.Cut(kv, "=")
		if ok && want[k] {
			put(k, v)
		}
	}
	if _, ok := vals["PATH"]; !ok {
		put("PATH", "/usr/local/bin:/usr/bin:/bin")
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		put(k, set[k])
	}
	for _, kv := range extra {
		if k, v, ok := strings.Cut(kv, "="); ok {
			put(k, v)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vals[k])
	}
	return out
}

// Describe is a command's exit for messages: "exit status 3", "signal: killed".
func Describe(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return fmt.Sprint(err)
}
