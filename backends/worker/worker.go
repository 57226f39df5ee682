// Package worker runs the persistent REPL processes the agent owns: one real
// `bash --noprofile --norc` without a PTY, or the embedded Python worker. Each
// cell's stdout and stderr are read from their own pipes, cut at end markers
// and capped while reading; a side channel carries the cell's status and the
// REPL's answer.
package worker

import (
	"bufio"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/protocol"
	rlmfs "github.com/rlmrun/rlmrun/fs"
)

// SpawnConfig says which worker process to start. The process starts before
// the rollout's working directory is known (the agent spawns it as soon as it
// runs, so the interpreter's start-up overlaps the agent's), with a minimal
// environment; Configure then gives it its real directory and environment.
type SpawnConfig struct {
	Language string // bash | python
	Python   string // interpreter for the Python worker
	// StateDir holds the worker's own files (the Bash cell file).
	StateDir string
	// Reaper, when set, starts the process: the agent's reaper then leaves
	// its exit status to the worker.
	Reaper *procs.Reaper
	// Launch, when set, runs the process's start and keeps what it ran on
	// until the worker has exited (the agent confines the worker there).
	Launch func(start func() error, exited <-chan struct{}) error
}

// Config is what Configure gives a spawned worker.
type Config struct {
	Workdir string   // the REPL's working directory
	Env     []string // the worker's whole environment
	// FSMetadata is exposed to Python as fs_metadata.
	FSMetadata rlmfs.Metadata
	// ToolNames are the root tools the Python worker defines as functions.
	ToolNames []string
	// Prelude is shell code the Bash worker runs before its first cell
	// (the tool functions).
	Prelude string
}

// repl is what differs between the REPL languages.
type repl interface {
	// spawn starts the process, its pipes and its status reader.
	spawn(w *Worker) error
	// configure gives a spawned process its directory and environment.
	configure(w *Worker, cfg Config) error
	// send hands the worker one cell.
	send(w *Worker, o ExecOptions) error
	// answerRequest is the request that reads the answer without a cell
	// of the model's.
	answerRequest() ExecOptions
}

// Worker is one running REPL process.
type Worker struct {
	repl     repl
	spawn    SpawnConfig
	cmd      *exec.Cmd
	marker   []byte
	stdout   *splitter
	stderr   *splitter
	control  io.WriteCloser // bash: its stdin; python: the request pipe
	extraEnv []string       // added to the spawn environment
	status   chan statusMsg
	// statusEnd is closed when the side channel ends: the worker died, or
	// a cell closed the worker's own end of it.
	statusEnd chan struct{}
	exited    chan struct{}
	waitErr   error
	killed    sync.Once
	closers   []io.Closer
}

// statusMsg is what the side channel says after a cell.
type statusMsg struct {
	Seq            int
	Status         string
	ExitCode       int
	Error          *string
	Result         *string
	ExecutionCount int
	Answer         *protocol.Answer
	Ready          bool
}

// ErrExited is returned when the worker is gone.
var ErrExited = errors.New("worker exited")

// spawnEnv is the worker's environment until Configure replaces it.
var spawnEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"}

// Start spawns and configures a worker and waits until it answers.
func Start(ctx context.Context, sc SpawnConfig, cfg Config) (*Worker, error) {
	w, err := Spawn(sc)
	if err != nil {
		return nil, err
	}
	if err := w.Configure(ctx, cfg); err != nil {
		w.Kill()
		return nil, err
	}
	return w, nil
}

// Spawn starts the worker process without waiting for it.
func Spawn(sc SpawnConfig) (*Worker, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	w := &Worker{spawn: sc, marker: []byte("\x1erlm-end-" + hex.EncodeToString(nonce) + "\x1e"), status: make(chan statusMsg, 4), statusEnd: make(chan struct{}), exited: make(chan struct{})}
	if err := os.MkdirAll(sc.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("worker state dir: %w", err)
	}
	switch sc.Language {
	case "bash":
		w.repl = &bashREPL{}
	case "python":
		w.repl = &pythonREPL{}
	default:
		return nil, fmt.Errorf("unknown REPL language %q", sc.Language)
	}
	if err := w.repl.spawn(w); err != nil {
		w.Kill()
		return nil, err
	}
	return w, nil
}

// Spawned is how the worker was spawned.
func (w *Worker) Spawned() SpawnConfig { return w.spawn }

// Configure gives the worker its working directory and environment and waits
// until it is ready for cells.
func (w *Worker) Configure(ctx context.Context, cfg Config) error {
	if err := w.repl.configure(w, cfg); err != nil {
		// A worker that cannot take its configuration is exiting: waitReady
		// reports how it ended (or the ctx's deadline does).
		w.signalGroup()
		return fmt.Errorf("configure %s worker: %w; %v", w.spawn.Language, err, w.waitReady(ctx))
	}
	return w.waitReady(ctx)
}

func (w *Worker) launch(argv []string, stdin *os.File, extra []*os.File) (stdout, stderr *os.File, err error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = append(append([]string{}, spawnEnv...), w.extraEnv...)
	cmd.Stdin = stdin
	cmd.Stdout = outW
	cmd.Stderr = errW
	cmd.ExtraFiles = extra
	// Its own process group, so everything a cell starts dies with it; and it
	// dies if the agent does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := cmd.Start
	if r := w.spawn.Reaper; r != nil {
		start = func() error { return r.Start(cmd) }
	}
	if l := w.spawn.Launch; l != nil {
		inner := start
		start = func() error { return l(inner, w.exited) }
	}
	if err := start(); err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, nil, fmt.Errorf("start %s worker (%s): %w", w.spawn.Language, argv[0], err)
	}
	outW.Close()
	errW.Close()
	w.cmd = cmd
	go func() {
		w.waitErr = cmd.Wait()
		if r := w.spawn.Reaper; r != nil {
			r.Release(cmd.Process.Pid)
		}
		close(w.exited)
	}()
	return outR, errR, nil
}

// wholeRunes drops the incomplete character a cut may have left at the end.
func wholeRunes(s string, cut bool) string {
	if !cut {
		return s
	}
	for i := 0; i < utf8.UTFMax && len(s) > 0; i++ {
		r, size := utf8.DecodeLastRuneInString(s)
		if r != utf8.RuneError || size > 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return s
}

// errNotWorker is a status channel that does not speak the worker's
// protocol: treated as a dead channel.
var errNotWorker = errors.New("the status channel does not speak the worker protocol")

// attach takes a launched worker's pipes: control takes its requests, out
// and errp are its output, status is where read finds its reports.
func (w *Worker) attach(control io.WriteCloser, out, errp, status *os.File, read func(*bufio.Reader) (statusMsg, error)) {
	w.control = control
	w.stdout = newSplitter(out, w.marker)
	w.stderr = newSplitter(errp, w.marker)
	w.closers = append(w.closers, out, errp, status)
	go w.readStatus(status, read)
}

// readStatus feeds the records that read gives to w.status until the
// channel ends.
func (w *Worker) readStatus(r io.Reader, read func(*bufio.Reader) (statusMsg, error)) {
	defer close(w.statusEnd)
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		m, err := read(br)
		if err != nil {
			return
		}
		w.status <- m
	}
}

// maxStatusField bounds a traceback or a result's repr as the agent keeps
// it (the runner shows at most max_output_length characters of them).
const maxStatusField = 4 << 20

// waitReady waits for the worker's first status record and end markers.
func (w *Worker) waitReady(ctx context.Context) error {
	st, _, errOut, err := w.collect(ctx, nil)
	if err != nil {
		if errors.Is(err, ErrExited) {
			return fmt.Errorf("%s worker exited while starting (%s)%s", w.spawn.Language, w.exitDescription(), quoteTail(errOut.data))
		}
		return err
	}
	if !st.Ready {
		return fmt.Errorf("%s worker sent %+v instead of its ready signal", w.spawn.Language, st)
	}
	return nil
}

func quoteTail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return ": " + s
}

// exitGrace bounds the wait for an exit that closed descriptors announce.
const exitGrace = 100 * time.Millisecond

// errBroken is a worker whose private channels a cell closed: it cannot
// report its cells any more.
var errBroken = errors.New("the cell closed the REPL's own output or status channel")

// collect waits for one status record and both output segments. A nil timer
// waits without a deadline.
func (w *Worker) collect(ctx context.Context, timer <-chan time.Time) (statusMsg, segment, segment, error) {
	var (
		st             statusMsg
		out, errs      segment
		haveSt         bool
		haveOut, haveE bool
	)
	// The ends of the channels: a worker that lives on without them is
	// broken, and would otherwise hold the cell until its timeout.
	outEnd, errEnd, statusEnd := w.stdout.done, w.stderr.done, w.statusEnd
	broken := func() (statusMsg, segment, segment, error) {
		// An exiting process closes its descriptors before its exit can be
		// waited for: a channel's end may come a moment before w.exited.
		// Only a worker still alive after that moment is broken.
		select {
		case <-w.exited:
			return st, out, errs, w.crashed(haveOut, haveE, &out, &errs)
		case <-time.After(exitGrace):
		}
		w.Kill()
		if !haveOut {
			out = w.stdout.partial()
		}
		if !haveE {
			errs = w.stderr.partial()
		}
		return st, out, errs, errBroken
	}
	for !(haveSt && haveOut && haveE) {
		select {
		case st = <-w.status:
			haveSt = true
		case out = <-w.stdout.segs:
			haveOut = true
		case errs = <-w.stderr.segs:
			haveE = true
		case <-outEnd:
			outEnd = nil
			if !haveOut {
				select {
				case out = <-w.stdout.segs:
					haveOut = true
				default:
					return broken()
				}
			}
		case <-errEnd:
			errEnd = nil
			if !haveE {
				select {
				case errs = <-w.stderr.segs:
					haveE = true
				default:
					return broken()
				}
			}
		case <-statusEnd:
			statusEnd = nil
			if !haveSt {
				select {
				case st = <-w.status:
					haveSt = true
				default:
					return broken()
				}
			}
		case <-w.exited:
			return st, out, errs, w.crashed(haveOut, haveE, &out, &errs)
		case <-timer:
			return st, out, errs, context.DeadlineExceeded
		case <-ctx.Done():
			return st, out, errs, ctx.Err()
		}
	}
	return st, out, errs, nil
}

// crashed collects what a dead worker's pipes still hold.
func (w *Worker) crashed(haveOut, haveE bool, out, errs *segment) error {
	// Background jobs of the dead shell could hold the pipes open.
	w.signalGroup()
	// Give the pipes a moment to deliver what the process wrote.
	w.settle()
	if !haveOut {
		*out = w.stdout.partial()
	}
	if !haveE {
		*errs = w.stderr.partial()
	}
	return ErrExited
}

// settle waits briefly for the output readers to reach end of file.
func (w *Worker) settle() {
	t := time.NewTimer(200 * time.Millisecond)
	defer t.Stop()
	for _, s := range []*splitter{w.stdout, w.stderr} {
		if s == nil {
			continue
		}
		select {
		case <-s.done:
		case <-t.C:
			return
		}
	}
}

// ExecOptions describe one cell.
type ExecOptions struct {
	Seq            int
	Code           string
	Timeout        time.Duration
	MaxOutputBytes int
	answerOnly     bool // Python: report the answer without running a cell
}

// Exec runs one cell. A timeout or a crash kills the worker (and everything
// the cell started) and is reported in the reply's Status; the caller then
// starts a new worker. An error means the context ended or the worker could
// not be talked to.
func (w *Worker) Exec(ctx context.Context, o ExecOptions) (protocol.ExecReply, error) {
	var rep protocol.ExecReply
	select {
	case <-w.exited:
		return rep, ErrExited
	default:
	}
	limit := o.MaxOutputBytes
	if limit <= 0 {
		limit = 1 << 20
	}
	w.stdout.setLimit(limit)
	w.stderr.setLimit(limit)
	start := time.Now()
	if err := w.repl.send(w, o); err != nil {
		// A worker that cannot take a cell is dead or dying (a broken pipe):
		// collect reports it as a crash; anything else stays an error.
		if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, os.ErrClosed) {
			return rep, fmt.Errorf("send cell to worker: %w", err)
		}
		w.signalGroup()
	}
	var timer <-chan time.Time
	if o.Timeout > 0 {
		t := time.NewTimer(o.Timeout)
		defer t.Stop()
		timer = t.C
	}
	st, out, errs, err := w.collect(ctx, timer)
	rep.DurationMS = float64(time.Since(start).Microseconds()) / 1000
	rep.Stdout, rep.StdoutBytes = string(out.data), out.total
	rep.Stderr, rep.StderrBytes = string(errs.data), errs.total
	switch {
	case errors.Is(err, ErrExited):
		rep.Status = protocol.StatusCrashed
		rep.ExitCode, rep.Signal = w.exitStatus()
		return rep, nil
	case errors.Is(err, errBroken):
		rep.Status = protocol.StatusCrashed
		rep.Reason = errBroken.Error()
		return rep, nil
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		w.Kill()
		rep.Status = protocol.StatusTimeout
		rep.Stdout, rep.Stderr = "", ""
		return rep, nil
	case err != nil:
		w.Kill()
		return rep, err
	}
	rep.Seq = st.Seq
	rep.Status = st.Status
	if rep.Status == "" {
		rep.Status = protocol.StatusOK
	}
	rep.ExitCode = st.ExitCode
	if st.Error != nil {
		rep.Error = *st.Error
	}
	rep.Result = st.Result
	rep.ExecutionCount = st.ExecutionCount
	if st.Answer != nil {
		rep.Answer = *st.Answer
	}
	return rep, nil
}

// Answer asks the REPL for its answer.
func (w *Worker) Answer(ctx context.Context) (protocol.Answer, error) {
	rep, err := w.Exec(ctx, w.repl.answerRequest())
	if err != nil {
		return protocol.Answer{}, err
	}
	if rep.Status == protocol.StatusTimeout || rep.Status == protocol.StatusCrashed {
		return protocol.Answer{}, fmt.Errorf("read answer: worker %s", rep.Status)
	}
	return rep.Answer, nil
}

func (w *Worker) signalGroup() {
	if w.cmd != nil && w.cmd.Process != nil {
		_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Kill ends the worker and its whole process group, and closes its pipes.
func (w *Worker) Kill() {
	w.killed.Do(func() {
		if w.cmd != nil && w.cmd.Process != nil {
			w.signalGroup()
			<-w.exited
		}
		if w.control != nil {
			w.control.Close()
		}
		for _, c := range w.closers {
			c.Close()
		}
	})
}

// Exited is closed when the worker process has ended.
func (w *Worker) Exited() <-chan struct{} { return w.exited }

func (w *Worker) exitStatus() (int, string) {
	var ee *exec.ExitError
	if errors.As(w.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -1, ws.Signal().String()
		}
		return ee.ExitCode(), ""
	}
	return 0, ""
}

func (w *Worker) exitDescription() string {
	code, sig := w.exitStatus()
	if sig != "" {
		return "killed by signal: " + sig
	}
	return "exit status " + strconv.Itoa(code)
}
