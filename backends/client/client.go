// Package client is the runner's end of the agent protocol: one yamux
// session to an `rlmrun agent`, wherever that agent runs.
package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/rlmrun/rlmrun/backends/protocol"
	rlmfs "github.com/rlmrun/rlmrun/fs"
)

// ErrAgentGone is returned when the session to the agent has ended.
var ErrAgentGone = errors.New("agent connection lost")

// Session talks to one agent. Close ends the agent and whatever runs it (a
// process, a sandbox): the owner passes that as Options.Close.
type Session struct {
	sess      *yamux.Session
	closeFn   func(context.Context) error
	closeOnce sync.Once
	closeErr  error
	diag      func() string

	ctlMu  sync.Mutex // one control request at a time
	ctl    *control
	nextID uint64

	endMu  sync.Mutex
	ending string // why the agent's end was decided here, for messages
}

// Ending records why whatever runs the agent is about to end it (a
// sandbox's lifetime): errors of the lost session then say so.
func (s *Session) Ending(why string) {
	s.endMu.Lock()
	s.ending = why
	s.endMu.Unlock()
}

// Options configure a session.
type Options struct {
	// Conn is the agent's stdin/stdout.
	Conn io.ReadWriteCloser
	// Close ends the agent's process or sandbox after the session closes.
	Close func(context.Context) error
	// Diagnostics returns what the agent printed on stderr, for error messages.
	Diagnostics func() string
	// Log receives yamux diagnostics.
	Log io.Writer
}

// New starts the runner's side of the session.
func New(opts Options) (*Session, error) {
	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	s, err := yamux.Client(opts.Conn, protocol.YamuxConfig(logw))
	if err != nil {
		return nil, fmt.Errorf("agent session: %w", err)
	}
	diag := opts.Diagnostics
	if diag == nil {
		diag = func() string { return "" }
	}
	return &Session{sess: s, closeFn: opts.Close, diag: diag}, nil
}

// Listener is the session seen as a net.Listener: it accepts the streams the
// agent opens for tunnelled connections.
func (s *Session) Listener() net.Listener { return s.sess }

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.sess.CloseChan() }

// control is the long-lived stream small requests share.
type control struct {
	stream *yamux.Stream
	br     *bufio.Reader
	wmu    sync.Mutex // a cancel line may be written while a call waits
}

// cancelGrace is how long a cancelled request may take to be acknowledged
// before its control stream is dropped.
const cancelGrace = 10 * time.Second

// ctlCall sends a request on the control stream and waits for its reply. If
// ctx ends first, the agent is told to cancel the request.
func (s *Session) ctlCall(ctx context.Context, req protocol.Request) (*protocol.Reply, error) {
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	if s.ctl == nil {
		st, err := s.sess.OpenStream()
		if err != nil {
			return nil, s.gone(err)
		}
		s.ctl = &control{stream: st, br: bufio.NewReaderSize(st, 64<<10)}
	}
	ctl := s.ctl
	s.nextID++
	req.ID = s.nextID
	ctl.wmu.Lock()
	err := protocol.WriteJSON(ctl.stream, req)
	ctl.wmu.Unlock()
	if err != nil {
		s.dropControl()
		return nil, s.failed(ctx, req.Op, err)
	}
	cancelled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		close(cancelled)
		ctl.wmu.Lock()
		_ = protocol.WriteJSON(ctl.stream, protocol.Request{Op: protocol.OpCancel, ID: req.ID})
		ctl.wmu.Unlock()
		// A wedged agent must not hold the caller: drop the stream if the
		// cancellation is not answered in time.
		_ = ctl.stream.SetReadDeadline(time.Now().Add(cancelGrace))
	})
	defer stop()
	for {
		var rep protocol.Reply
		if err := protocol.ReadJSON(ctl.br, &rep); err != nil {
			s.dropControl()
			return nil, s.failed(ctx, req.Op, err)
		}
		if rep.ID != req.ID {
			continue // the late answer to a request given up on earlier
		}
		select {
		case <-cancelled:
			_ = ctl.stream.SetReadDeadline(time.Time{})
			return nil, ctx.Err()
		default:
		}
		if !rep.OK {
			return &rep, fmt.Errorf("agent %s: %s", req.Op, rep.Error)
		}
		return &rep, nil
	}
}

func (s *Session) dropControl() {
	if s.ctl != nil {
		_ = s.ctl.stream.Close()
		s.ctl = nil
	}
}

// call sends one request on a stream of its own: put and get, whose tar
// streams end with the stream. body, when set, is written after the header;
// onReply, when set, reads what follows the reply.
func (s *Session) call(ctx context.Context, req protocol.Request, body func(io.Writer) error, onReply func(*bufio.Reader) error) (*protocol.Reply, error) {
	stream, err := s.sess.OpenStream()
	if err != nil {
		return nil, s.gone(err)
	}
	defer stream.Close()
	stop := context.AfterFunc(ctx, func() { _ = stream.Close() })
	defer stop()
	if err := protocol.WriteJSON(stream, req); err != nil {
		return nil, s.failed(ctx, req.Op, err)
	}
	if body != nil {
		// Buffered: a tar stream is many small writes, and every write to a
		// yamux stream is a frame and a wait for the session's writer.
		bw := bufio.NewWriterSize(stream, 256<<10)
		if err := body(bw); err != nil {
			return nil, s.failed(ctx, req.Op, err)
		}
		if err := bw.Flush(); err != nil {
			return nil, s.failed(ctx, req.Op, err)
		}
	}
	// The request (and its body) ends where the stream's write half ends.
	if err := stream.Close(); err != nil {
		return nil, s.failed(ctx, req.Op, err)
	}
	br := bufio.NewReaderSize(stream, 64<<10)
	var rep protocol.Reply
	if err := protocol.ReadJSON(br, &rep); err != nil {
		return nil, s.failed(ctx, req.Op, err)
	}
	if !rep.OK {
		return &rep, fmt.Errorf("agent %s: %s", req.Op, rep.Error)
	}
	if onReply != nil {
		if err := onReply(br); err != nil {
			return &rep, s.failed(ctx, req.Op, err)
		}
	}
	return &rep, nil
}

func (s *Session) failed(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("agent %s: %w", op, s.gone(err))
}

func (s *Session) gone(err error) error {
	s.endMu.Lock()
	why := s.ending
	s.endMu.Unlock()
	if why != "" {
		return fmt.Errorf("%w: %s", ErrAgentGone, why)
	}
	if s.sess.IsClosed() || errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if d := s.diag(); d != "" {
			return fmt.Errorf("%w: %v; the agent said: %s", ErrAgentGone, err, d)
		}
		return fmt.Errorf("%w: %v", ErrAgentGone, err)
	}
	return err
}

// Hello checks the agent answers and speaks this protocol version.
func (s *Session) Hello(ctx context.Context) (*protocol.HelloReply, error) {
	rep, err := s.ctlCall(ctx, protocol.Request{Op: protocol.OpHello})
	if err != nil {
		return nil, err
	}
	if rep.Hello == nil || rep.Hello.Version != protocol.Version {
		return nil, fmt.Errorf("agent speaks protocol %+v, this runner speaks %d: use the same rlmrun binary for both", rep.Hello, protocol.Version)
	}
	return rep.Hello, nil
}

// Init configures the agent for the rollout.
func (s *Session) Init(ctx context.Context, args protocol.InitArgs) error {
	_, err := s.ctlCall(ctx, protocol.Request{Op: protocol.OpInit, Init: &args})
	return err
}

// Put uploads dir into the agent's working directory.
func (s *Session) Put(ctx context.Context, dir string, lim protocol.PutArgs) (*rlmfs.Stats, error) {
	rep, err := s.call(ctx, protocol.Request{Op: protocol.OpPut, Put: &lim}, func(w io.Writer) error {
		_, err := rlmfs.Pack(ctx, dir, w)
		return err
	}, nil)
	if err != nil {
		return nil, err
	}
	return rep.Stats, nil
}

// Start starts the REPL worker and returns how long it took.
func (s *Session) Start(ctx context.Context) (time.Duration, error) {
	rep, err := s.ctlCall(ctx, protocol.Request{Op: protocol.OpStart})
	if err != nil {
		return 0, err
	}
	return time.Duration(rep.StartMS * float64(time.Millisecond)), nil
}

// Restart replaces the worker with a fresh one.
func (s *Session) Restart(ctx context.Context) error {
	_, err := s.ctlCall(ctx, protocol.Request{Op: protocol.OpRestart})
	return err
}

// Exec runs one cell.
func (s *Session) Exec(ctx context.Context, seq int, args protocol.ExecArgs) (*protocol.ExecReply, error) {
	rep, err := s.ctlCall(ctx, protocol.Request{Op: protocol.OpExec, Seq: seq, Exec: &args})
	if err != nil {
		return nil, err
	}
	if rep.Exec == nil {
		return nil, errors.New("agent exec: empty reply")
	}
	return rep.Exec, nil
}

// Answer reads the REPL's answer.
func (s *Session) Answer(ctx context.Context) (protocol.Answer, error) {
	rep, err := s.ctlCall(ctx, protocol.Request{Op: protocol.OpAnswer})
	if err != nil {
		return protocol.Answer{}, err
	}
	if rep.Answer == nil {
		return protocol.Answer{}, errors.New("agent answer: empty reply")
	}
	return *rep.Answer, nil
}

// ErrStalled is returned by Get when the download stops moving.
var ErrStalled = errors.New("no data arrived")

// GetOptions bound a download.
type GetOptions struct {
	Limits rlmfs.Limits
	// Stall fails the download when no data arrives for this long (0:
	// never); ctx bounds the whole of it.
	Stall time.Duration
}

// Get downloads the agent's working directory and makes it dir, with the
// safe extractor and its limits. The download goes to a new directory next
// to dir, which replaces dir only when the archive is complete and its
// trailer says so: a failed download never leaves a partial tree as dir.
// The stats list what was skipped, on either end.
func (s *Session) Get(ctx context.Context, dir string, opts GetOptions) (rlmfs.Stats, error) {
	var st rlmfs.Stats
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".sync-")
	if err != nil {
		return st, err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var packErr error // what the agent reports about its end of the archive
	_, err = s.call(ctx, protocol.Request{Op: protocol.OpGet}, nil, func(r *bufio.Reader) error {
		body := io.Reader(r)
		if opts.Stall > 0 {
			w := newWatchdog(opts.Stall, func() { cancel(fmt.Errorf("%w for %s", ErrStalled, opts.Stall)) })
			defer w.stop()
			body = w.reader(r)
		}
		var err error
		if st, err = rlmfs.Unpack(ctx, body, tmp, opts.Limits); err != nil {
			return err
		}
		var trailer protocol.Reply
		if err := protocol.ReadJSON(r, &trailer); err != nil {
			return fmt.Errorf("archive ended without its trailer: %w", err)
		}
		if trailer.Stats != nil {
			st.Skipped = append(trailer.Stats.Skipped, st.Skipped...)
		}
		if !trailer.OK {
			packErr = errors.New(trailer.Error)
		}
		return nil
	})
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return st, cause
	}
	if err != nil {
		return st, err
	}
	if packErr != nil {
		return st, packErr
	}
	return st, swapDir(tmp, dir)
}

// swapDir makes the complete download fresh take the place of dir.
func swapDir(fresh, dir string) error {
	old := fresh + ".old"
	if err := os.Rename(dir, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(fresh, dir); err != nil {
		_ = os.Rename(old, dir)
		return err
	}
	return os.RemoveAll(old)
}

// watchdog calls fire when its reader sees no data for d.
type watchdog struct {
	d     time.Duration
	timer *time.Timer
}

func newWatchdog(d time.Duration, fire func()) *watchdog {
	return &watchdog{d: d, timer: time.AfterFunc(d, fire)}
}

func (w *watchdog) reader(r io.Reader) io.Reader { return watchedReader{r: r, w: w} }

func (w *watchdog) stop() { w.timer.Stop() }

type watchedReader struct {
	r io.Reader
	w *watchdog
}

func (wr watchedReader) Read(p []byte) (int, error) {
	n, err := wr.r.Read(p)
	if n > 0 {
		wr.w.timer.Reset(wr.w.d)
	}
	return n, err
}

// Shutdown asks the agent to stop its worker, remove its files and exit.
func (s *Session) Shutdown(ctx context.Context) error {
	_, err := s.ctlCall(ctx, protocol.Request{Op: protocol.OpShutdown})
	return err
}

// Close shuts the agent down (politely first, within ctx) and ends whatever
// runs it. It is safe to call more than once.
func (s *Session) Close(ctx context.Context) error {
	return s.end(ctx, true)
}

// Abort ends the agent and whatever runs it at once, without asking: for an
// agent that cannot be trusted to answer (a failed download leaves it
// blocked on a stream nobody reads).
func (s *Session) Abort(ctx context.Context) error {
	return s.end(ctx, false)
}

func (s *Session) end(ctx context.Context, polite bool) error {
	s.closeOnce.Do(func() {
		if polite && !s.sess.IsClosed() {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_ = s.Shutdown(sctx)
			cancel()
		}
		_ = s.sess.Close()
		if s.closeFn != nil {
			s.closeErr = s.closeFn(ctx)
		}
	})
	return s.closeErr
}
