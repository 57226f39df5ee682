// Package tunnel is the host end of the REPL's way out: the interception
// HTTP server that answers root-tool calls and sub-LLM requests for every
// rollout of a run, each behind its own secret. It serves any net.Listener:
// the yamux sessions of the agents (each a listener of tunnelled
// connections), and a TCP address when the spec sets interception_url.
package tunnel

import (
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
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// MaxBody is the largest request body the server reads.
const MaxBody = 16 << 20

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
}

// ToolError is a tool that failed (HTTP 500); a BadRequest is the caller's
// fault (HTTP 400).
type ToolError struct{ Msg string }

func (e *ToolError) Error() string { return e.Msg }

// BadRequest reports arguments a tool cannot take.
type BadRequest struct{ Msg string }

func (e *BadRequest) Error() string { return e.Msg }

// Server is the interception server of one run.
type Server struct {
	mu       sync.RWMutex
	rollouts map[string]*Rollout
	http     *http.Server
}

// NewServer returns a server with no rollouts.
func NewServer() *Server {
	s := &Server{rollouts: map[string]*Rollout{}}
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	return s
}

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

// Serve answers connections from l until l closes. Call it once per agent
// session (a *yamux.Session is a net.Listener).
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(l)
	// A yamux session ending reads as EOF: the agent is gone, not an error.
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, yamux.ErrSessionShutdown) {
		return nil
	}
	return err
}

// Close stops every Serve.
func (s *Server) Close() error { return s.http.Close() }

type errorBody struct {
	Error string `json:"error"`
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
	writeJSON(w, status, errorBody{Error: fmt.Sprintf(format, args...)})
}

// ServeHTTP routes POST /rollout/{key}/v1/rlm/tools and
// POST /rollout/{key}/v1/chat/completions.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/rollout/")
	if !ok {
		fail(w, http.StatusNotFound, "not found: %s", r.URL.Path)
		return
	}
	key, route, _ := strings.Cut(rest, "/")
	if route != "v1/rlm/tools" && route != "v1/chat/completions" {
		fail(w, http.StatusNotFound, "not found: %s", r.URL.Path)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		fail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	s.mu.RLock()
	ro := s.rollouts[key]
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
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			fail(w, http.StatusRequestEntityTooLarge, "request body over %d bytes", MaxBody)
			return
		}
		fail(w, http.StatusBadRequest, "read body: %v", err)
		return
	}
	if route == "v1/chat/completions" {
		s.chat(w, r.Context(), ro, body)
		return
	}
	s.tool(w, r.Context(), ro, body)
}

type toolRequest struct {
	ToolName      string         `json:"tool_name"`
	Args          []any          `json:"args"`
	Kwargs        map[string]any `json:"kwargs"`
	Serialization string         `json:"serialization"`
}

type toolResponse struct {
	Result     any      `json:"result"`
	PrintLines []string `json:"print_lines,omitempty"`
}

func (s *Server) tool(w http.ResponseWriter, ctx context.Context, ro *Rollout, body []byte) {
	var req toolRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
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
	writeJSON(w, http.StatusOK, toolResponse{Result: res, PrintLines: lines})
}

// failWith answers a tool's or the sub-LLM's error: 400 for a bad request
// (a *BadRequest), 500 for anything else.
func failWith(w http.ResponseWriter, err error) {
	var bad *BadRequest
	if errors.As(err, &bad) {
		fail(w, http.StatusBadRequest, "%s", bad.Msg)
		return
	}
	fail(w, http.StatusInternalServerError, "%s", err.Error())
}

func (s *Server) chat(w http.ResponseWriter, ctx context.Context, ro *Rollout, body []byte) {
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

// ListenURL listens where an interception_url points (host:port; port 0
// picks a free one) and returns the listener.
func ListenURL(rawURL string) (net.Listener, error) {
	host := rawURL
	if i := strings.Index(host, "://"); i >= 0 {
		host = host[i+3:]
	}
	if i := strings.IndexAny(host, "/?#"); i >= 0 {
		host = host[:i]
	}
	if !strings.Contains(host, ":") {
		if strings.HasPrefix(rawURL, "https://") {
			host += ":443"
		} else {
			host += ":80"
		}
	}
	l, err := net.Listen("tcp", host)
	if err != nil {
		return nil, fmt.Errorf("listen for interception_url %s: %w", rawURL, err)
	}
	return l, nil
}
