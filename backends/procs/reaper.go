package procs

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// Reaper makes a process the owner of everything it starts, however far it
// runs: `setsid`, a double fork or a new session leave the process group,
// but not the reaper. As a child subreaper (PR_SET_CHILD_SUBREAPER) — or as
// the first process of its own PID namespace — orphaned descendants are
// re-parented to it; it reaps them as they die and can kill all of them.
//
// Children that an exec.Cmd waits for must be started through the reaper
// (Start), so it leaves their exit status to that Wait.
type Reaper struct {
	init bool // pid 1 of a PID namespace of its own

	mu      sync.Mutex
	managed map[int]bool

	sigs chan os.Signal
	stop chan struct{}
	done chan struct{}
}

// NewReaper starts reaping. init says this process is the first of a PID
// namespace made for it: "every other process" is then exactly what it
// started. Otherwise it becomes a child subreaper.
func NewReaper(init bool) (*Reaper, error) {
	if init && os.Getpid() != 1 {
		return nil, errors.New("reaper: not the first process of a PID namespace")
	}
	if !init {
		if err := setChildSubreaper(); err != nil {
			return nil, err
		}
	}
	r := &Reaper{init: init, managed: map[int]bool{}, sigs: make(chan os.Signal, 8), stop: make(chan struct{}), done: make(chan struct{})}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	go r.loop()
	return r, nil
}

func setChildSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return errno
	}
	return nil
}

// Start starts cmd as a child whose exit status its own Wait collects: the
// reaper knows its pid before it can die.
func (r *Reaper) Start(cmd *exec.Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.managed[cmd.Process.Pid] = true
	return nil
}

// Release forgets a child started with Start once its Wait has returned.
func (r *Reaper) Release(pid int) {
	r.mu.Lock()
	delete(r.managed, pid)
	r.mu.Unlock()
}

func (r *Reaper) loop() {
	defer close(r.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigs:
		case <-tick.C: // a SIGCHLD may be coalesced with one already handled
		}
		r.reap()
	}
}

// reap collects every exited child nobody else waits for. It reports
// whether the process has no children left.
func (r *Reaper) reap() (none bool) {
	for {
		pid, err := peekExited()
		if errors.Is(err, syscall.ECHILD) {
			return true
		}
		if err != nil || pid == 0 {
			return false
		}
		r.mu.Lock()
		mine := r.managed[pid]
		r.mu.Unlock()
		if mine {
			// Its exec.Cmd collects it (and its status) in a moment.
			return false
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	}
}

// siginfo is the start of Linux's siginfo_t as waitid fills it for a child
// (64-bit layout: the union starts at offset 16).
type siginfo struct {
	signo, errno, code int32
	_                  int32
	pid                int32
	_                  [108]byte
}

// peekExited returns an exited child's pid without reaping it (0: none yet).
func peekExited() (int, error) {
	const pAll = 0
	var info siginfo
	_, _, errno := syscall.Syscall6(syscall.SYS_WAITID, pAll, 0, uintptr(unsafe.Pointer(&info)),
		uintptr(syscall.WEXITED|syscall.WNOHANG|0x01000000 /* WNOWAIT */), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(info.pid), nil
}

// KillDescendants kills everything this process started that still runs
// (registered children included) and reaps it, until nothing is left or ctx
// ends.
func (r *Reaper) KillDescendants(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var left []int
		if r.init {
			// From the first process of a namespace, -1 is everyone else in it.
			_ = syscall.Kill(-1, syscall.SIGKILL)
		} else {
			left = Descendants(os.Getpid())
			for _, pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		none := r.reap()
		if none || (!r.init && len(left) == 0) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close stops reaping.
func (r *Reaper) Close() {
	signal.Stop(r.sigs)
	close(r.stop)
	<-r.done
}

// Descendants lists the live (not zombie) descendants of pid, read from
// /proc: valid when /proc belongs to this process's PID namespace.
func Descendants(pid int) []int {
	children := map[int][]int{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		p, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		ppid, state, ok := statOf(p)
		if !ok || state == "Z" || state == "X" {
			continue
		}
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	todo := []int{pid}
	for len(todo) > 0 {
		cur := todo[0]
		todo = todo[1:]
		for _, c := range children[cur] {
			out = append(out, c)
			todo = append(todo, c)
		}
	}
	return out
}

// statOf reads a process's parent and state from /proc/PID/stat.
func statOf(pid int) (ppid int, state string, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, "", false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0], err == nil
}
