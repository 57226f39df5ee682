// Package agent is `rlmrun agent`: the process that runs next to the REPL,
// locally or inside a sandbox. It serves the runner over one yamux session on
// its stdin/stdout, owns the REPL worker, moves the working directory in and
// out as tar streams, and (with the tunnel) carries the worker's HTTP calls
// back to the runner.
package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/rlmrun/rlmrun/backends/confine"
	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/backends/worker"
	rlmfs "github.com/rlmrun/rlmrun/fs"
	"github.com/rlmrun/rlmrun/tunnel"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// Options configure an agent.
type Options struct {
	// Conn is the byte stream to the runner (stdin/stdout).
	Conn io.ReadWriteCloser
	// Log receives diagnostics (the agent's stderr).
	Log io.Writer
	// Self is the path of this binary, linked into the worker's PATH under
	// each root tool's name.
	Self string
	// Language and Python, when set, make the agent spawn its worker process
	// at once, so the interpreter starts while the runner sets the rollout up.
	Language string
	Python   string
	// TempDir holds the agent's private directory (default: the system's).
	// The local backend puts it in the run's directory, which goes away even
	// if the agent is killed.
	TempDir string
	// Init says the agent is the first process of a PID namespace made for
	// it (the local backend's): when it ends, the kernel ends everything
	// in it. Otherwise the agent becomes a child subreaper.
	Init bool
	// Confine, when set, confines the agent and everything it starts with
	// Landlock before its worker starts (the local backend's sandbox).
	Confine *Confine
}

// Confine is the local backend's confinement of one rollout.
type Confine struct {
	// Root is the rollout's directory (the working directory and the
	// agent's state): with the agent's private directory, all it may write.
	Root string
	// Mode is confine.BestEffort or confine.Required.
	Mode string
	// Network leaves TCP alone; otherwise the REPL may connect only to the
	// agent's own ports (the tunnel, the Bash tools').
	Network bool
}

// Agent serves one rollout.
type Agent struct {
	opts    Options
	session *yamux.Session
	logger  *log.Logger

	mu       sync.Mutex // guards everything below; held while a cell runs
	init     *protocol.InitArgs
	workdir  string
	state    string // Root/agent: tool links and HOME
	private  string // the agent's own temp directory (worker files)
	env      []string
	worker   *worker.Worker
	spawned  chan *worker.Worker // the worker spawned at start, until start takes it
	tunnel   *tunnel.Loopback
	base     string       // where the worker's routes live: the tunnel, or interception_url
	toolPort net.Listener // the Bash tool functions' way in
	// Listeners bound before confinement (which forbids binding), taken
	// by init when it needs them.
	preTunnel, preTool net.Listener
	confinement        string
	done               bool
	// reaper adopts what cells start, however it escapes the worker's
	// process group, and kills it with the worker.
	reaper *procs.Reaper
}

// Run serves until the runner shuts the agent down, the stream ends or ctx
// is done. The worker is killed and the agent's directories removed in every
// case.
func Run(ctx context.Context, opts Options) error {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	sess, err := yamux.Server(opts.Conn, protocol.YamuxConfig(opts.Log))
	if err != nil {
		return fmt.Errorf("agent session: %w", err)
	}
	a := &Agent{opts: opts, session: sess, logger: log.New(opts.Log, "rlmrun agent: ", 0)}
	if a.reaper, err = procs.NewReaper(opts.Init); err != nil {
		// Not fatal: the worker's process group is still killed.
		a.logger.Printf("reaper: %v", err)
	}
	defer a.cleanup()
	if opts.Confine != nil {
		// Confined, the agent may write only beneath the rollout's
		// directories: its private one goes into its state.
		opts.TempDir = filepath.Join(opts.Confine.Root, "agent")
		if err := os.MkdirAll(opts.TempDir, 0o755); err != nil {
			return fmt.Errorf("agent temp dir: %w", err)
		}
		a.opts.TempDir = opts.TempDir
	}
	if a.private, err = os.MkdirTemp(opts.TempDir, "rlmrun-agent-"); err != nil {
		return fmt.Errorf("agent temp dir: %w", err)
	}
	if opts.Confine != nil {
		// Before the worker is spawned: it inherits the confinement.
		if err := a.confine(); err != nil {
			return err
		}
	}
	if opts.Language != "" {
		// Spawned in the background: the runner's first requests are served
		// meanwhile.
		ch := make(chan *worker.Worker, 1)
		a.spawned = ch
		go func() {
			w, err := worker.Spawn(a.spawnConfig(opts.Language, opts.Python))
			if err != nil {
				// Not fatal: start spawns again and reports what fails then.
				a.logger.Printf("spawn %s worker: %v", opts.Language, err)
			}
			ch <- w
		}()
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-sess.CloseChan():
		}
		sess.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		stream, err := sess.AcceptStream()
		if err != nil {
			if a.isDone() || errors.Is(err, io.EOF) || sess.IsClosed() {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer stream.Close()
			if a.serve(ctx, stream) {
				// Shut down: stop accepting, end the session.
				sess.Close()
			}
		}()
	}
}

func (a *Agent) isDone() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.done
}

// serve answers the requests of one stream; it reports whether the agent
// should exit. Small requests share one long-lived control stream: they run
// one at a time, and a "cancel" line with a request's id cancels it while it
// runs. put and get carry a tar stream and end their stream.
func (a *Agent) serve(ctx context.Context, stream *yamux.Stream) (shutdown bool) {
	br := bufio.NewReaderSize(stream, 64<<10)
	var wmu sync.Mutex
	reply := func(id uint64, r protocol.Reply, err error) {
		r.ID = id
		if err != nil {
			r.OK, r.Error = false, err.Error()
		} else {
			r.OK = true
		}
		wmu.Lock()
		_ = protocol.WriteJSON(stream, r)
		wmu.Unlock()
	}
	var (
		wg      sync.WaitGroup
		curMu   sync.Mutex
		curID   uint64
		curStop context.CancelFunc
		exit    atomic.Bool
	)
	defer func() {
		curMu.Lock()
		if curStop != nil {
			curStop() // the runner went away: whatever runs is moot
		}
		curMu.Unlock()
		wg.Wait()
	}()
	for {
		var req protocol.Request
		if err := protocol.ReadJSON(br, &req); err != nil {
			if !errors.Is(err, io.EOF) {
				reply(0, protocol.Reply{}, fmt.Errorf("read request: %w", err))
			}
			return exit.Load()
		}
		switch req.Op {
		case protocol.OpCancel:
			curMu.Lock()
			if curID == req.ID && curStop != nil {
				curStop()
			}
			curMu.Unlock()
			continue
		case protocol.OpPut:
			st, err := a.doPut(ctx, br, req.Put)
			reply(req.ID, protocol.Reply{Stats: st}, err)
			return false
		case protocol.OpGet:
			a.doGet(ctx, stream)
			return false
		}
		// The previous request has been answered (the runner waits for each
		// reply), so at most one runs at a time.
		wg.Wait()
		rctx, stop := context.WithCancel(ctx)
		curMu.Lock()
		curID, curStop = req.ID, stop
		curMu.Unlock()
		wg.Add(1)
		go func(req protocol.Request) {
			defer wg.Done()
			defer stop()
			r, bye, err := a.handle(rctx, req)
			reply(req.ID, r, err)
			if bye {
				exit.Store(true)
				_ = stream.Close()
			}
		}(req)
	}
}

// handle runs one control request; bye says the agent should exit.
func (a *Agent) handle(ctx context.Context, req protocol.Request) (r protocol.Reply, bye bool, err error) {
	switch req.Op {
	case protocol.OpHello:
		host, _ := os.Hostname()
		return protocol.Reply{Hello: &protocol.HelloReply{Version: protocol.Version, PID: os.Getpid(), UID: os.Getuid(), Hostname: host, Confinement: a.confinement}}, false, nil
	case protocol.OpInit:
		return protocol.Reply{}, false, a.doInit(req.Init)
	case protocol.OpStart:
		d, err := a.startWorker(ctx, false)
		return protocol.Reply{StartMS: ms(d)}, false, err
	case protocol.OpRestart:
		d, err := a.startWorker(ctx, true)
		return protocol.Reply{StartMS: ms(d)}, false, err
	case protocol.OpExec:
		rep, err := a.doExec(ctx, req)
		return protocol.Reply{Exec: rep}, false, err
	case protocol.OpAnswer:
		ans, err := a.doAnswer(ctx)
		return protocol.Reply{Answer: ans}, false, err
	case protocol.OpShutdown:
		a.mu.Lock()
		a.done = true
		a.mu.Unlock()
		a.cleanup()
		return protocol.Reply{}, true, nil
	}
	return protocol.Reply{}, false, fmt.Errorf("unknown operation %q", req.Op)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// confine confines the agent, and so its worker and everything the cells
// start, with Landlock: it may write only the rollout's directory and its
// own private one, read and run the system's programs and its
// interpreter, connect only to its own two ports (bound here, before
// binding is refused), and neither signal nor ptrace anything outside —
// so neither the runner's environment nor another rollout's secrets are
// readable through /proc.
func (a *Agent) confine() error {
	c := a.opts.Confine
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("confine: root %q is not absolute", c.Root)
	}
	// The working directory and the agent's state in the rollout's
	// directory (as init makes them), not the directory itself: the
	// working directory's parent is out of reach, as in the reference's
	// jail. What Landlock grants must exist.
	work, state := filepath.Join(c.Root, "work"), filepath.Join(c.Root, "agent")
	for _, d := range []string{work, state, filepath.Join(a.private, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("confine: %w", err)
		}
	}
	p := confine.System()
	if py := a.opts.Python; py != "" {
		if !filepath.IsAbs(py) {
			py, _ = exec.LookPath(py)
		}
		p = p.WithInterpreter(py)
	}
	p.RW = append(p.RW, work, state, a.private)
	if a.opts.Self != "" {
		p.ROFiles = append(p.ROFiles, a.opts.Self)
	}
	p.Network = c.Network
	if !c.Network {
		var err error
		for _, ln := range []*net.Listener{&a.preTunnel, &a.preTool} {
			if *ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				return fmt.Errorf("confine: listen on loopback: %w", err)
			}
			p.ConnectTCP = append(p.ConnectTCP, uint16((*ln).Addr().(*net.TCPAddr).Port))
		}
	}
	got, err := confine.Apply(p, c.Mode)
	if err != nil {
		return fmt.Errorf("confine: %w", err)
	}
	a.confinement = got
	return nil
}

func (a *Agent) doInit(args *protocol.InitArgs) error {
	if args == nil {
		return errors.New("init: no arguments")
	}
	if !filepath.IsAbs(args.Root) {
		return fmt.Errorf("init: root %q is not absolute", args.Root)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.init != nil {
		return errors.New("init: already initialised")
	}
	workdir := filepath.Join(args.Root, "work")
	state := filepath.Join(args.Root, "agent")
	for _, d := range []string{workdir, state, filepath.Join(state, "home"), filepath.Join(state, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	a.init, a.workdir, a.state = args, workdir, state
	if err := a.linkTools(); err != nil {
		return err
	}
	a.base = args.BaseURL
	if args.Tunnel {
		open := func() (net.Conn, error) { return a.session.OpenStream() }
		var lb *tunnel.Loopback
		if a.preTunnel != nil {
			lb, a.preTunnel = tunnel.ServeLoopback(a.preTunnel, open, a.logger.Printf), nil
		} else {
			var err error
			if lb, err = tunnel.ListenLoopback(open, a.logger.Printf); err != nil {
				return err
			}
		}
		a.tunnel, a.base = lb, lb.URL()
	}
	if args.Language == "bash" && len(args.Tools) > 0 {
		if err := a.startToolPort(); err != nil {
			return err
		}
	}
	a.env = a.workerEnv()
	return nil
}

// linkTools makes every root tool a command on the worker's PATH: a link to
// this binary, which answers under the tool's name.
func (a *Agent) linkTools() error {
	if a.opts.Self == "" {
		return nil
	}
	bin := filepath.Join(a.state, "bin")
	for _, t := range a.init.Tools {
		if err := os.Symlink(a.opts.Self, filepath.Join(bin, t.Name)); err != nil {
			return fmt.Errorf("init: link tool %s: %w", t.Name, err)
		}
	}
	return nil
}

// workerEnv is exactly what the spec grants, plus what rlmrun itself owns.
func (a *Agent) workerEnv() []string {
	env := map[string]string{}
	for k, v := range a.init.Env {
		env[k] = v
	}
	bin := filepath.Join(a.state, "bin")
	if p, ok := env["PATH"]; ok && p != "" {
		env["PATH"] = bin + ":" + p
	} else {
		env["PATH"] = bin + ":/usr/local/bin:/usr/bin:/bin"
	}
	if _, ok := env["HOME"]; !ok {
		env["HOME"] = filepath.Join(a.state, "home")
	}
	if _, ok := env["LANG"]; !ok {
		env["LANG"] = "C.UTF-8"
	}
	env[wire.EnvWorkdir] = a.workdir
	if a.opts.Confine != nil {
		if _, ok := env["TMPDIR"]; !ok {
			// /tmp is out of reach: temporary files go to the agent's own.
			env["TMPDIR"] = filepath.Join(a.private, "tmp")
		}
	}
	if owner := os.Getenv("RLMRUN_OWNER"); owner != "" {
		env["RLMRUN_OWNER"] = owner // see local.OwnerEnv
	}
	if a.base != "" {
		for k, v := range wire.Env(a.base, a.init.RolloutKey, a.init.Secret, a.toolTimeout()) {
			env[k] = v
		}
	}
	names := make([]string, 0, len(a.init.Tools))
	for _, t := range a.init.Tools {
		names = append(names, t.Name)
	}
	if b, err := json.Marshal(names); err == nil {
		env[wire.EnvRootToolNames] = string(b)
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func (a *Agent) doPut(ctx context.Context, body io.Reader, args *protocol.PutArgs) (*rlmfs.Stats, error) {
	// The upload runs while the worker starts: it needs no lock beyond
	// reading the working directory's path.
	a.mu.Lock()
	inited := a.init != nil
	a.mu.Unlock()
	if !inited {
		return nil, errors.New("put before init")
	}
	var lim rlmfs.Limits
	if args != nil {
		lim = rlmfs.Limits{MaxBytes: args.MaxBytes, MaxFiles: args.MaxFiles}
	}
	st, err := rlmfs.Unpack(ctx, body, a.workdir, lim)
	if err != nil {
		return nil, fmt.Errorf("put: %w", err)
	}
	return &st, nil
}

func (a *Agent) doGet(ctx context.Context, w io.Writer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.init == nil {
		_ = protocol.WriteJSON(w, protocol.Reply{Error: "get before init"})
		return
	}
	if err := protocol.WriteJSON(w, protocol.Reply{OK: true}); err != nil {
		return
	}
	// The archive is followed by a trailer line saying whether it is
	// complete: a file the agent could not read must fail the download, not
	// leave it silently short. Buffered: see client.call.
	bw := bufio.NewWriterSize(w, 256<<10)
	st, err := rlmfs.Pack(ctx, a.workdir, bw)
	trailer := protocol.Reply{OK: true, Stats: &st}
	var unreadable *rlmfs.UnreadableError
	switch {
	case errors.As(err, &unreadable):
		// The archive is whole, without what could not be read.
		trailer.OK, trailer.Error = false, err.Error()
	case err != nil:
		a.logger.Printf("get: %v", err)
		_, _ = bw.Write(make([]byte, 1024)) // end of archive
		trailer.OK, trailer.Error = false, err.Error()
	}
	_ = protocol.WriteJSON(bw, trailer)
	if err := bw.Flush(); err != nil {
		a.logger.Printf("get: %v", err)
	}
}

// startWorker (re)starts the REPL worker; the caller holds no lock.
func (a *Agent) startWorker(ctx context.Context, restart bool) (time.Duration, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.startWorkerLocked(ctx, restart)
}

func (a *Agent) startWorkerLocked(ctx context.Context, restart bool) (time.Duration, error) {
	if a.init == nil {
		return 0, errors.New("start before init")
	}
	if a.worker != nil {
		if !restart {
			return 0, errors.New("worker already started")
		}
		a.endWorker()
	}
	start := time.Now()
	names := make([]string, len(a.init.Tools))
	for i, t := range a.init.Tools {
		names[i] = t.Name
	}
	cfg := worker.Config{
		Workdir:    a.workdir,
		Env:        a.env,
		FSMetadata: a.init.FS,
		ToolNames:  names,
		Prelude:    a.bashToolFunctions(),
	}
	sc := a.spawnConfig(a.init.Language, a.init.Python)
	var w *worker.Worker
	if a.spawned != nil {
		w = <-a.spawned
		a.spawned = nil
	}
	if w != nil && (w.Spawned().Language != sc.Language || w.Spawned().Python != sc.Python) {
		w.Kill() // spawned for another language or interpreter
		w = nil
	}
	var err error
	if w != nil {
		if err = w.Configure(ctx, cfg); err != nil {
			w.Kill()
		}
	} else {
		w, err = worker.Start(ctx, sc, cfg)
	}
	if err != nil {
		return 0, err
	}
	a.worker = w
	return time.Since(start), nil
}

func (a *Agent) spawnConfig(lang, python string) worker.SpawnConfig {
	sc := worker.SpawnConfig{Language: lang, Python: python, StateDir: filepath.Join(a.private, "worker"), Reaper: a.reaper}
	if a.confinement != "" && a.confinement != confine.None {
		sc.Launch = confine.Scoped
	}
	return sc
}

// leftoverWait bounds killing what a worker left behind.
const leftoverWait = 5 * time.Second

// endWorker kills the worker, its process group, and everything its cells
// started that left the group; the caller holds a.mu.
func (a *Agent) endWorker() {
	if a.worker != nil {
		a.worker.Kill()
		a.worker = nil
	}
	a.killLeftovers()
}

func (a *Agent) killLeftovers() {
	if a.reaper == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leftoverWait)
	defer cancel()
	if err := a.reaper.KillDescendants(ctx); err != nil {
		a.logger.Printf("processes left by the worker survive: %v", err)
	}
}

func (a *Agent) doExec(cctx context.Context, req protocol.Request) (*protocol.ExecReply, error) {
	if req.Exec == nil {
		return nil, errors.New("exec: no arguments")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.worker == nil {
		return nil, errors.New("exec before start")
	}
	rep, err := a.worker.Exec(cctx, worker.ExecOptions{
		Seq:            req.Seq,
		Code:           req.Exec.Code,
		Timeout:        time.Duration(req.Exec.TimeoutMS) * time.Millisecond,
		MaxOutputBytes: req.Exec.MaxOutputBytes,
	})
	if err != nil {
		// The cell was interrupted: the worker is in an unknown state.
		a.endWorker()
		return nil, fmt.Errorf("exec: %w", err)
	}
	if rep.Status == protocol.StatusTimeout || rep.Status == protocol.StatusCrashed {
		a.endWorker()
		if req.Exec.RestartOnFailure {
			// The cell's context may be done; the restart gets its own.
			if _, err := a.startWorkerLocked(context.WithoutCancel(cctx), false); err != nil {
				rep.RestartError = err.Error()
			} else {
				rep.Restarted = true
			}
		}
	}
	return &rep, nil
}

func (a *Agent) doAnswer(ctx context.Context) (*protocol.Answer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.worker == nil {
		return nil, errors.New("no worker running")
	}
	ans, err := a.worker.Answer(ctx)
	if err != nil {
		return nil, err
	}
	return &ans, nil
}

// cleanup kills the worker and removes the agent's directories; it is safe
// to call more than once.
func (a *Agent) cleanup() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.spawned != nil {
		if w := <-a.spawned; w != nil {
			w.Kill()
		}
		a.spawned = nil
	}
	a.endWorker()
	if a.reaper != nil {
		a.reaper.Close()
		a.reaper = nil
	}
	if a.private != "" {
		_ = os.RemoveAll(a.private)
	}
	if a.tunnel != nil {
		a.tunnel.Close()
		a.tunnel = nil
	}
	for _, ln := range []net.Listener{a.preTunnel, a.preTool} {
		if ln != nil {
			_ = ln.Close()
		}
	}
	a.preTunnel, a.preTool = nil, nil
	if a.toolPort != nil {
		a.toolPort.Close()
		a.toolPort = nil
	}
	if a.init != nil {
		// Confined, the agent empties them but cannot remove them (their
		// parent is out of its reach): the local executor does.
		_ = os.RemoveAll(a.state)
		_ = os.RemoveAll(a.workdir)
		// The root is removed when nothing else lives there.
		_ = os.Remove(a.init.Root)
	}
}
