// Package tunnel is the host end of the REPL's way out: the interception
// HTTP server that answers root-tool calls and sub-LLM requests for every
// rollout of a run, each behind its own secret. It serves any net.Listener:
// the yamux sessions of the agents (each a listener of tunnelled
// connections), and a TCP address when the spec sets interception_url.
//
// Everything a sandbox sends is hostile, and the server shares the runner's
// memory with every other rollout: what it buffers for one rollout is
// bounded (connections per agent, requests and body bytes per rollout, body
// bytes in all), bodies larger than allowed are refused before they are
// read, and slow requests meet read deadlines.
package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sync/semaphore"

	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// MaxBody is the largest request body the server reads.
const MaxBody = 16 << 20

// Limits bound what the server holds for its clients. Zero values take the
// defaults.
type Limits struct {
	// MaxBody is the largest request body (16 MiB).
	MaxBody int64
	// RolloutRequests is how many requests of one rollout are served at
	// once (16); more wait, up to QueueWait.
	RolloutRequests int64
	// RolloutBytes bounds the request bodies of one rollout held at once
	// (32 MiB).
	RolloutBytes int64
	// TotalBytes bounds the request bodies of all rollouts held at once
	// (256 MiB).
	TotalBytes int64
	// ConnsPerAgent is how many connections of one agent session are
	// served at once (16); the agent's further connections wait in its
	// own sandbox.
	ConnsPerAgent int
	// QueueWait is how long a request waits for room before it is
	// refused with 503 (30 s).
	QueueWait time.Duration
	// ReadTimeout bounds reading one request, body included (2 min).
	ReadTimeout time.Duration
}

func (l Limits) withDefaults() Limits {
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxBody, MaxBody)
	def(&l.RolloutRequests, 16)
	def(&l.RolloutBytes, 32<<20)
	def(&l.TotalBytes, 256<<20)
	if l.ConnsPerAgent <= 0 {
		l.ConnsPerAgent = 16
	}
	if l.QueueWait <= 0 {
		l.QueueWait = 30 * time.Second
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = 2 * time.Minute
	}
	l.RolloutBytes = max(l.RolloutBytes, l.MaxBody)
	l.TotalBytes = max(l.TotalBytes, l.RolloutBytes)
	return l
}

// ToolFunc runs one root tool call.
type ToolFunc func(ctx context.Context, args []any, kwargs map[string]any) (result any, printLines []string, err error)

// ChatFunc answers an OpenAI-style chat completion request.
type ChatFunc func(ctx context.Context, body []byte) (response any, err error)

// Rollout is one rollout's routes.
type Rollout struct {
	Key    string // the path segment: /rollout/KEY/...
	Secret string // Authorization: Bearer SECRET
	Tools  map[string]ToolFunc
	Chat   ChatFunc

	requests *semaphore.Weighted
	bytes    *semaphore.Weighted
}

// Server is the interception server of one run.
type Server struct {
	limits Limits
	total  *semaphore.Weighted

	mu       sync.RWMutex
	rollouts map[string]*Rollout
	servers  []*http.Server
	closed   bool
	handler  http.Handler
}

// NewServer returns a server with no rollouts.
func NewServer(limits Limits) *Server {
	limits = limits.withDefaults()
	s := &Server{limits: limits, total: semaphore.NewWeighted(limits.TotalBytes), rollouts: map[string]*Rollout{}}
	mux := http.NewServeMux()
	tools := s.route(s.tool)
	chat := s.route(s.chat)
	mux.Handle("POST /rollout/{key}"+wire.ToolsRoute, tools)
	mux.Handle("POST /rollout/{key}"+wire.ChatRoute, chat)
	// The same paths with another method: a JSON 405, not the mux's text.
	notPost := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "POST")
		fail(w, http.StatusMethodNotAllowed, "use POST")
	})
	mux.Handle("/rollout/{key}"+wire.ToolsRoute, notPost)
	mux.Handle("/rollout/{key}"+wire.ChatRoute, notPost)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, "not found: %s", r.URL.Path)
	})
	s.handler = mux
	return s
}

// ServeHTTP answers one request (for tests and embedding).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// NewSecret returns a fresh random bearer secret.
func NewSecret() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

// Register adds a rollout's routes.
func (s *Server) Register(r *Rollout) {
	r.requests = semaphore.NewWeighted(s.limits.RolloutRequests)
	r.bytes = semaphore.NewWeighted(s.limits.RolloutBytes)
	s.mu.Lock()
	s.rollouts[r.Key] = r
	s.mu.Unlock()
}

// Unregister removes a rollout's routes.
func (s *Server) Unregister(key string) {
	s.mu.Lock()
	delete(s.rollouts, key)
	s.mu.Unlock()
}

func (s *Server) newHTTP(h http.Handler) (*http.Server, error) {
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		ReadTimeout:       s.limits.ReadTimeout,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, http.ErrServerClosed
	}
	s.servers = append(s.servers, hs)
	return hs, nil
}

// Serve answers connections from one agent's session until it ends (a
// *yamux.Session is a net.Listener), at most Limits.ConnsPerAgent at once.
func (s *Server) Serve(l net.Listener) error {
	hs, err := s.newHTTP(s.handler)
	if err != nil {
		return nil
	}
	return quiet(hs.Serve(newLimitListener(l, s.limits.ConnsPerAgent)))
}

// ServeURL answers the connections of interception_url's listener; prefix
// is the URL's path, under which the routes are served.
func (s *Server) ServeURL(l net.Listener, prefix string) error {
	h := s.handler
	if prefix = strings.TrimSuffix(prefix, "/"); prefix != "" {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rest, ok := strings.CutPrefix(r.URL.Path, prefix)
			if !ok || !strings.HasPrefix(rest, "/") {
				fail(w, http.StatusNotFound, "not found: %s", r.URL.Path)
				return
			}
			r2 := r.Clone(r.Context())
			r2.URL.Path, r2.URL.RawPath = rest, ""
			s.handler.ServeHTTP(w, r2)
		})
	}
	hs, err := s.newHTTP(h)
	if err != nil {
		return nil
	}
	// Every rollout shares this listener: its own limits bound each.
	return quiet(hs.Serve(newLimitListener(l, 16*s.limits.ConnsPerAgent)))
}

// quiet drops the errors that mean the listener ended as expected (a yamux
// session ending reads as EOF: the agent is gone).
func quiet(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) || errors.Is(err, yamux.ErrSessionShutdown) {
		return nil
	}
	return err
}

// Close stops every Serve.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	for _, hs := range servers {
		_ = hs.Close()
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"result is not JSON-serializable"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func fail(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, wire.ErrorResponse{Error: fmt.Sprintf(format, args...)})
}

// handlerFunc answers one authenticated request with its body.
type handlerFunc func(ctx context.Context, w http.ResponseWriter, ro *Rollout, body []byte)

// route authenticates a request, waits for room in the rollout's and the
// server's limits, reads the body and passes it on.
func (s *Server) route(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		ro := s.rollouts[r.PathValue("key")]
		s.mu.RUnlock()
		if ro == nil {
			fail(w, http.StatusNotFound, "Rollout not found")
			return
		}
		token, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !hasBearer || subtle.ConstantTimeCompare([]byte(token), []byte(ro.Secret)) != 1 {
			fail(w, http.StatusUnauthorized, "missing or wrong rollout secret")
			return
		}
		if r.ContentLength > s.limits.MaxBody {
			// Refused before a byte of it is read.
			w.Header().Set("Connection", "close")
			fail(w, http.StatusRequestEntityTooLarge, "request body over %d bytes", s.limits.MaxBody)
			return
		}
		// Room for the body, as declared (or the largest allowed when the
		// body is chunked), is reserved before it is read.
		size := r.ContentLength
		if size < 0 {
			size = s.limits.MaxBody
		}
		wait, cancel := context.WithTimeout(r.Context(), s.limits.QueueWait)
		defer cancel()
		release, err := s.reserve(wait, ro, size)
		if err != nil {
			w.Header().Set("Connection", "close")
			fail(w, http.StatusServiceUnavailable, "too many requests of this rollout in flight: %v", err)
			return
		}
		defer release()
		body, err := readBody(r.Body, r.ContentLength, size)
		if errors.Is(err, errTooLarge) {
			fail(w, http.StatusRequestEntityTooLarge, "request body over %d bytes", s.limits.MaxBody)
			return
		}
		if err != nil {
			fail(w, http.StatusBadRequest, "read body: %v", err)
			return
		}
		h(r.Context(), w, ro, body)
	})
}

var errTooLarge = errors.New("body too large")

// readBody reads a body of the declared length exactly, or a chunked one
// (declared < 0) of at most limit bytes.
func readBody(r io.Reader, declared, limit int64) ([]byte, error) {
	if declared >= 0 {
		body := make([]byte, declared)
		_, err := io.ReadFull(r, body)
		return body, err
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(r, limit)); err != nil {
		return nil, err
	}
	var one [1]byte
	if n, _ := r.Read(one[:]); n > 0 {
		return nil, errTooLarge
	}
	return buf.Bytes(), nil
}

// reserve takes one of the rollout's request slots and size bytes of its
// and the server's body budgets.
func (s *Server) reserve(ctx context.Context, ro *Rollout, size int64) (func(), error) {
	if err := ro.requests.Acquire(ctx, 1); err != nil {
		return nil, err
	}
	if err := ro.bytes.Acquire(ctx, size); err != nil {
		ro.requests.Release(1)
		return nil, err
	}
	if err := s.total.Acquire(ctx, size); err != nil {
		ro.bytes.Release(size)
		ro.requests.Release(1)
		return nil, err
	}
	return func() {
		s.total.Release(size)
		ro.bytes.Release(size)
		ro.requests.Release(1)
	}, nil
}

func (s *Server) tool(ctx context.Context, w http.ResponseWriter, ro *Rollout, body []byte) {
	var req wire.ToolRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, "Invalid JSON: %v", err)
		return
	}
	if req.ToolName == "" {
		fail(w, http.StatusBadRequest, "Tool name not provided")
		return
	}
	if req.Serialization != "" && req.Serialization != "json" {
		fail(w, http.StatusBadRequest, "Unsupported root tool serialization mode.")
		return
	}
	fn := ro.Tools[req.ToolName]
	if fn == nil {
		fail(w, http.StatusNotFound, "Tool '%s' not found", req.ToolName)
		return
	}
	if req.Kwargs == nil {
		req.Kwargs = map[string]any{}
	}
	res, lines, err := fn(ctx, req.Args, req.Kwargs)
	if err != nil {
		failWith(w, err)
		return
	}
	writeJSON(w, http.StatusOK, wire.ToolResponse{Result: res, PrintLines: lines})
}

// failWith answers a tool's or the sub-LLM's error: 400 for a bad request
// (a *wire.BadRequest), 500 for anything else.
func failWith(w http.ResponseWriter, err error) {
	var bad *wire.BadRequest
	if errors.As(err, &bad) {
		fail(w, http.StatusBadRequest, "%s", bad.Msg)
		return
	}
	fail(w, http.StatusInternalServerError, "%s", err.Error())
}

func (s *Server) chat(ctx context.Context, w http.ResponseWriter, ro *Rollout, body []byte) {
	if ro.Chat == nil {
		fail(w, http.StatusNotFound, "this rollout has no sub-LLM")
		return
	}
	if !json.Valid(body) {
		fail(w, http.StatusBadRequest, "Invalid JSON")
		return
	}
	resp, err := ro.Chat(ctx, body)
	if err != nil {
		failWith(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// ListenURL listens where an interception_url points (its host and port;
// port 0 picks a free one) and returns the listener and the URL's path,
// under which the routes are served.
func ListenURL(rawURL string) (net.Listener, string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", fmt.Errorf("interception_url %s: %w", rawURL, err)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"https": "443"}[u.Scheme]
		if port == "" {
			port = "80"
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, "", fmt.Errorf("listen for interception_url %s: %w", rawURL, err)
	}
	return l, u.Path, nil
}

// limitListener accepts at most n connections at once; Accept waits for
// one to close. Connections beyond wait where they come from.
type limitListener struct {
	net.Listener
	slots chan struct{}
	done  chan struct{}
	once  sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
