// Package procs owns child processes: it waits for them exactly once, stops
// them politely then by force, and keeps the tail of what they print.
package procs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a started command whose end is observed by one goroutine.
type Proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// Watch takes ownership of a started command.
func Watch(cmd *exec.Cmd) *Proc {
	p := &Proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p
}

// Exited is closed when the process has ended.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error, valid after Exited.
func (p *Proc) Err() error { return p.err }

// State is the process's exit state (resource usage included), valid after Exited.
func (p *Proc) State() *os.ProcessState { return p.cmd.ProcessState }

// Stop waits up to grace for the process to exit by itself, then kills its
// process group and waits.
func (p *Proc) Stop(ctx context.Context, grace time.Duration) error {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	p.Kill()
	<-p.exited
	return nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Kill sends SIGKILL to the process group (or the process).
func (p *Proc) Kill() {
	if p.cmd.Process == nil {
		return
	}
	pid := p.cmd.Process.Pid
	if p.cmd.SysProcAttr != nil && p.cmd.SysProcAttr.Setpgid {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	_ = p.cmd.Process.Kill()
}

// Tail keeps the last n bytes written to it.
type Tail struct {
	mu  sync.Mutex
	n   int
	buf []byte
}

// NewTail returns a Tail keeping n bytes.
func NewTail(n int) *Tail { return &Tail{n: n} }

// Write keeps the end of p.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.n {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.n:]...)
	}
	return len(p), nil
}

// String returns what was kept, trimmed.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// StartTime is a process's start time in clock ticks since boot (field 22
// of /proc/PID/stat): with the pid, it tells a process from a later one that
// reuses its pid.
func StartTime(pid int) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", err
	}
	s := string(b)
	// The command name may contain spaces and parentheses: fields start after
	// the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return f[19], nil
}

// Alive reports whether pid is still the process that started at start (as
// StartTime gave it).
func Alive(pid int, start string) bool {
	if pid <= 0 {
		return false
	}
	s, err := StartTime(pid)
	return err == nil && s == start
}

// ReserveThreads makes the Go runtime start n OS threads now and keep them
// idle for later. In a sandbox the pids limit counts threads, and a cell can
// use up all of it; a Go process that then needs a new thread (when a
// goroutine blocks in a system call) dies with "failed to create new OS
// thread". The runtime reuses idle threads and never ends them, so a
// process that has its threads early survives a cell's fork bomb.
func ReserveThreads(n int) {
	var started sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < n; i++ {
		started.Add(1)
		go func() {
			// A locked goroutine owns its thread: n of them need n threads.
			runtime.LockOSThread()
			started.Done()
			<-release
			runtime.UnlockOSThread() // back to the idle list, not ended
		}()
	}
	started.Wait()
	close(release)
}
