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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/protocol"
)

//go:embed python_worker.py
var pythonWorker []byte

// pythonBoot starts the Python worker from RLM_WORKER_SCRIPT.
const pythonBoot = "import os;exec(compile(os.environ.pop('RLM_WORKER_SCRIPT'),'<rlmrun-worker>','exec'))"

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
}

// Config is what Configure gives a spawned worker.
type Config struct {
	Workdir string   // the REPL's working directory
	Env     []string // the worker's whole environment
	// FSMetadata is exposed to Python as fs_metadata.
	FSMetadata FSMetadata
	// ToolNames are the root tools the Python worker defines as functions.
	ToolNames []string
	// Prelude is shell code the Bash worker runs before its first cell
	// (the tool functions).
	Prelude string
}

// FSMetadata summarises the working directory when the worker starts.
type FSMetadata struct {
	FileCount int
	TotalSize int64
}

// Worker is one running REPL process.
type Worker struct {
	spawn    SpawnConfig
	cmd      *exec.Cmd
	marker   []byte
	stdout   *splitter
	stderr   *splitter
	control  io.WriteCloser // bash: its stdin; python: the request pipe
	cellFile *os.File       // bash: the file cells are written to
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
	var err error
	switch sc.Language {
	case "bash":
		err = w.spawnBash()
	case "python":
		err = w.spawnPython()
	default:
		err = fmt.Errorf("unknown REPL language %q", sc.Language)
	}
	if err != nil {
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
	var err error
	if w.spawn.Language == "bash" {
		err = w.configureBash(cfg)
	} else {
		err = w.configurePython(cfg)
	}
	if err != nil {
		select {
		case <-w.exited:
		case <-time.After(200 * time.Millisecond):
			return fmt.Errorf("configure %s worker: %w", w.spawn.Language, err)
		}
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

func (w *Worker) spawnBash() error {
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return err
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return err
	}
	out, errp, err := w.launch([]string{"bash", "--noprofile", "--norc"}, stdinR, []*os.File{statusW})
	stdinR.Close()
	statusW.Close()
	if err != nil {
		stdinW.Close()
		statusR.Close()
		return err
	}
	w.control = stdinW
	w.stdout = newSplitter(out, w.marker)
	w.stderr = newSplitter(errp, w.marker)
	w.closers = append(w.closers, out, errp, statusR)
	go w.readBashStatus(statusR)
	cell := filepath.Join(w.spawn.StateDir, "cell")
	cf, err := os.OpenFile(cell, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create cell file: %w", err)
	}
	w.cellFile = cf
	w.closers = append(w.closers, cf)
	// The shell keeps private copies of its output pipes (91, 92) and the
	// status pipe (93), so a cell that redirects or closes 1, 2 or 3 cannot
	// lose the end markers. Fd 90 is /dev/null, the cells' stdin; fd 95 stays
	// open on the cell file, which the agent rewrites before every cell.
	//
	// `source` parses the whole cell before running it, so an unclosed quote
	// or heredoc is an error, not a hang, and reading it through /dev/fd/95
	// keeps line numbers in bash's messages relative to the cell. The driver
	// sits in a variable and is eval'ed at top level (a function would make
	// the cell's `declare`s local), because bash reads its stdin a byte at a
	// time: the line sent per cell must stay short.
	driver := "builtin source /dev/fd/95 <&90; " + bashEndOfCell()
	// When a sandbox runs out of memory, the kernel must kill the cell's
	// processes, not the agent: the rollout then goes on with a fresh
	// worker. The worker raises its own score (no privilege needed; children
	// inherit it) through /proc/self, which names it in any PID namespace.
	init := fmt.Sprintf("builtin echo 1000 2>/dev/null >/proc/self/oom_score_adj\n__rlm_mark=%s\n__rlm_d=%s\nexec 90</dev/null 91>&1 92>&2 93>&3 3>&- 95<%s\n",
		bashQuoteBytes(w.marker), shellQuote(driver), shellQuote(cell))
	_, err = io.WriteString(stdinW, init)
	return err
}

// configureBash exports the environment (nothing else was exported: the
// shell started with only PATH and LANG, both of which the environment
// sets), moves to the working directory and reports ready.
func (w *Worker) configureBash(cfg Config) error {
	var b strings.Builder
	for _, kv := range cfg.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validName(k) {
			continue
		}
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
	}
	b.WriteString(cfg.Prelude)
	fmt.Fprintf(&b, "cd -- %s || exit 97\n", shellQuote(cfg.Workdir))
	// Sourced from a file: bash reads its stdin a byte at a time.
	setup := filepath.Join(w.spawn.StateDir, "setup.sh")
	if err := os.WriteFile(setup, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write worker setup: %w", err)
	}
	_, err := io.WriteString(w.control, "builtin source "+shellQuote(setup)+"; __rlm_n=0; "+bashEndOfCell()+"\n")
	return err
}

func validName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// bashEndOfCell writes the markers and the status record of cell $__rlm_n.
func bashEndOfCell() string {
	return "__rlm_s=$?; builtin printf '%s' \"$__rlm_mark\" >&91; builtin printf '%s' \"$__rlm_mark\" >&92; " +
		"builtin printf '%s\\0%s\\0%s\\0%s\\0' \"$__rlm_n\" \"$__rlm_s\" \"${RLM_READY-}\" \"${RLM_CONTENT-}\" >&93"
}

func (w *Worker) readBashStatus(r io.Reader) {
	defer close(w.statusEnd)
	br := bufio.NewReader(r)
	for {
		// seq, status, RLM_READY, RLM_CONTENT: each NUL-terminated. The
		// content is the model's and may be anything: only its first
		// protocol.MaxAnswerBytes are kept.
		var f [4]string
		var cut bool
		for i := range f {
			limit := 64
			if i == 3 {
				limit = protocol.MaxAnswerBytes
			}
			s, over, err := readField(br, limit)
			if err != nil {
				return
			}
			f[i], cut = s, cut || (i == 3 && over)
		}
		seq, _ := strconv.Atoi(f[0])
		code, _ := strconv.Atoi(f[1])
		ans := protocol.Answer{Ready: bashTruthy(f[2]), Content: wholeRunes(f[3], cut), Truncated: cut}
		w.status <- statusMsg{Seq: seq, Status: protocol.StatusOK, ExitCode: code, Answer: &ans, Ready: seq == 0}
	}
}

// readField reads up to a NUL, keeping at most limit bytes of it (over
// reports the rest was dropped).
func readField(br *bufio.Reader, limit int) (string, bool, error) {
	var b []byte
	over := false
	for {
		chunk, err := br.ReadSlice(0)
		if room := limit - len(b); room > 0 {
			keep := chunk
			if err == nil {
				keep = chunk[:len(chunk)-1]
			}
			if len(keep) > room {
				keep, over = keep[:room], true
			}
			b = append(b, keep...)
		} else if len(chunk) > 1 || (err != nil && len(chunk) > 0) {
			over = true
		}
		switch {
		case err == nil:
			return string(b), over, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return "", false, err
		}
	}
}

// bashTruthy follows the reference: RLM_READY set to 1/true/yes/y/on.
func bashTruthy(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "y", "on":
		return true
	}
	return false
}

func (w *Worker) spawnPython() error {
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		reqR.Close()
		reqW.Close()
		return err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	// The worker travels in the environment (removed at once) and is
	// compiled under a name of its own, so its frames can be left out of
	// tracebacks; with -c, sys.path[0] is the working directory and the
	// model can import its own modules.
	w.extraEnv = []string{"RLM_WORKER_SCRIPT=" + string(pythonWorker)}
	out, errp, err := w.launch([]string{w.spawn.Python, "-u", "-B", "-c", pythonBoot}, devnull, []*os.File{reqR, repW})
	devnull.Close()
	reqR.Close()
	repW.Close()
	if err != nil {
		reqW.Close()
		repR.Close()
		return err
	}
	w.control = reqW
	w.stdout = newSplitter(out, w.marker)
	w.stderr = newSplitter(errp, w.marker)
	w.closers = append(w.closers, out, errp, repR)
	go w.readPythonStatus(repR)
	return nil
}

// configurePython sends the configuration request: NUL-separated fields
// (marker, working directory, file count, total size, tool names joined by
// spaces, then the environment's KEY=VALUE entries).
func (w *Worker) configurePython(cfg Config) error {
	fields := []string{string(w.marker), cfg.Workdir, strconv.Itoa(cfg.FSMetadata.FileCount), strconv.FormatInt(cfg.FSMetadata.TotalSize, 10), strings.Join(cfg.ToolNames, " ")}
	fields = append(fields, cfg.Env...)
	payload := strings.Join(fields, "\x00")
	_, err := io.WriteString(w.control, fmt.Sprintf("c 0 %d\n%s", len(payload), payload))
	return err
}

// readPythonStatus parses the Python worker's replies: "R PID" once it is
// ready, then per request a header line of numbers followed by the error,
// result and answer-content fields, whose lengths the header gives.
func (w *Worker) readPythonStatus(r io.Reader) {
	defer close(w.statusEnd)
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if err != nil || len(line) > 256 {
			return
		}
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "R" {
			w.status <- statusMsg{Ready: true}
			continue
		}
		if len(f) != 8 {
			return // not the worker speaking: treat as a dead channel
		}
		n := make([]int64, 8)
		for i, x := range f {
			if i == 1 {
				continue
			}
			if n[i], err = strconv.ParseInt(x, 10, 64); err != nil || (i > 0 && n[i] < 0) {
				return // the sequence number (field 0) may be -1; nothing else
			}
		}
		// A cell can write to this channel too: sizes are read, not
		// trusted. Each field keeps at most its limit; the rest is dropped.
		fields := make([]string, 3)
		cut := make([]bool, 3)
		for i, size := range []int64{n[4], n[5], n[7]} {
			limit := int64(maxStatusField)
			if i == 2 {
				limit = protocol.MaxAnswerBytes
			}
			buf := make([]byte, min(size, limit))
			if _, err := io.ReadFull(br, buf); err != nil {
				return
			}
			if size > limit {
				if _, err := io.CopyN(io.Discard, br, size-limit); err != nil {
					return
				}
				cut[i] = true
			}
			fields[i] = string(buf)
		}
		m := statusMsg{Seq: int(n[0]), Status: f[1], ExecutionCount: int(n[2]), Answer: &protocol.Answer{Ready: n[3] == 1, Content: wholeRunes(fields[2], cut[2]), Truncated: cut[2]}}
		if n[4] > 0 {
			m.Error = &fields[0]
		}
		if n[6] == 1 {
			m.Result = &fields[1]
		}
		w.status <- m
	}
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
		select {
		case <-w.exited:
			return st, out, errs, w.crashed(haveOut, haveE, &out, &errs)
		case <-time.After(50 * time.Millisecond):
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
	if err := w.send(o); err != nil {
		// A dead worker shows as a broken pipe; report it as a crash.
		select {
		case <-w.exited:
		case <-time.After(200 * time.Millisecond):
			return rep, fmt.Errorf("send cell to worker: %w", err)
		}
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

func (w *Worker) send(o ExecOptions) error {
	switch w.spawn.Language {
	case "bash":
		// Rewritten in place: bash reopens it through /dev/fd/95.
		if err := w.cellFile.Truncate(0); err != nil {
			return fmt.Errorf("write cell: %w", err)
		}
		if _, err := w.cellFile.WriteAt([]byte(o.Code), 0); err != nil {
			return fmt.Errorf("write cell: %w", err)
		}
		_, err := io.WriteString(w.control, "__rlm_n="+strconv.Itoa(o.Seq)+"; builtin eval \"$__rlm_d\"\n")
		return err
	default:
		op, code := "x", o.Code
		if o.answerOnly {
			op, code = "a", ""
		}
		_, err := io.WriteString(w.control, fmt.Sprintf("%s %d %d\n%s", op, o.Seq, len(code), code))
		return err
	}
}

// Answer asks the REPL for its answer.
func (w *Worker) Answer(ctx context.Context) (protocol.Answer, error) {
	// Bash reports RLM_READY/RLM_CONTENT after every cell, so an empty cell
	// (":") reads them; Python answers a request of its own, which does not
	// count as a cell.
	rep, err := w.Exec(ctx, ExecOptions{Seq: -1, Code: ":", Timeout: 10 * time.Second, MaxOutputBytes: 1, answerOnly: w.spawn.Language == "python"})
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

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// bashQuoteBytes writes b as a $'...' string.
func bashQuoteBytes(b []byte) string {
	var sb strings.Builder
	sb.WriteString("$'")
	for _, c := range b {
		fmt.Fprintf(&sb, "\\x%02x", c)
	}
	sb.WriteString("'")
	return sb.String()
}
