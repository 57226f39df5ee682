// Package fakellm is an OpenAI-compatible chat completions server for
// tests: no model can be downloaded here, so a Policy plays the model. It
// speaks the wire format as real servers do — JSON replies and SSE streams
// ("data: [DONE]", tool-call arguments split across chunks, usage in a last
// chunk with stream_options.include_usage), tool_calls with JSON-string
// arguments, usage and finish_reason — and fails as they fail when told to:
// 429 with Retry-After, 500, 400 context-length errors, slow and stalled
// replies, malformed JSON and truncated streams.
//
// It has its own wire types on purpose: sharing the client's would let a
// mistake in them pass unnoticed on both ends.
package fakellm

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Message is a chat message as the server reads it.
type Message struct {
	Role       string     `json:"role"`
	Content    *string    `json:"content"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// Text is the message's content ("" for null).
func (m Message) Text() string {
	if m.Content == nil {
		return ""
	}
	return *m.Content
}

// ToolCall is a call in an assistant message.
type ToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// Tool is a tool offered in a request.
type Tool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
	} `json:"function"`
}

// Request is what the server received.
type Request struct {
	Model             string    `json:"model"`
	Messages          []Message `json:"messages"`
	Tools             []Tool    `json:"tools"`
	Stream            bool      `json:"stream"`
	ParallelToolCalls *bool     `json:"parallel_tool_calls"`
	StreamOptions     *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	// Body is the whole request body, decoded.
	Body map[string]any `json:"-"`
	// Header is the request's HTTP header.
	Header http.Header `json:"-"`
}

// ToolNames are the names of the request's tools.
func (r Request) ToolNames() []string {
	var out []string
	for _, t := range r.Tools {
		out = append(out, t.Function.Name)
	}
	return out
}

// Reply is what the model says.
type Reply struct {
	Content string
	// Null sends content as null (a reply of tool calls only).
	Null      bool
	ToolCalls []Call
	// FinishReason defaults to tool_calls or stop.
	FinishReason string
	// Usage defaults to a count of four bytes per token.
	Usage *Usage
	// Fault, when set, is played instead of the reply (a policy deciding
	// which requests fail).
	Fault Fault
}

// Call is a tool call the model makes; Arguments is sent as given (JSON,
// or not, to test a client's handling of bad arguments).
type Call struct {
	Name      string
	Arguments string
}

// Usage counts tokens.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// A Policy plays the model: it answers one request.
type Policy func(Request) Reply

// Fault is a failure the server plays instead of (or while) answering.
type Fault int

// Faults.
const (
	// RateLimited is a 429 with Retry-After (Options.RetryAfter).
	RateLimited Fault = iota + 1
	// ServerError is a 500.
	ServerError
	// ContextLength is a 400 saying the prompt is longer than the context.
	ContextLength
	// Stall sends the headers, then nothing until the client gives up.
	Stall
	// Malformed sends a 200 whose body is not JSON (or, streamed, a chunk
	// that is not).
	Malformed
	// Truncated cuts the reply: half a JSON body, or a stream without its
	// end.
	Truncated
	// BadRequest is a 400 of another kind.
	BadRequest
)

// Options configure a server.
type Options struct {
	Policy Policy
	// Latency is added to every request before its reply.
	Latency time.Duration
	// ChunkBytes is the size of the pieces a streamed reply comes in
	// (default 7: tool-call arguments always arrive split).
	ChunkBytes int
	// RetryAfter is the Retry-After a 429 sends (default "0").
	RetryAfter string
	// Model is the model name replies carry (default: the request's).
	Model string
	// Keep, when false, keeps no copy of the requests (benchmarks).
	Keep bool
}

// Server is a running fake.
type Server struct {
	// URL is the API root: POST URL + "/chat/completions".
	URL string

	opts Options
	srv  *httptest.Server
	stop chan struct{}

	mu       sync.Mutex
	faults   []Fault
	requests []Request
	count    int
}

// Start starts a server; Close ends it.
func Start(opts Options) *Server {
	if opts.ChunkBytes <= 0 {
		opts.ChunkBytes = 7
	}
	if opts.RetryAfter == "" {
		opts.RetryAfter = "0"
	}
	s := &Server{opts: opts, stop: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(s.handle))
	s.URL = s.srv.URL + "/v1"
	return s
}

// Close stops the server; stalled replies end.
func (s *Server) Close() {
	close(s.stop)
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// Inject makes the next requests fail, one fault each, in order.
func (s *Server) Inject(faults ...Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, faults...)
	s.mu.Unlock()
}

// Requests are the requests received so far (with Options.Keep).
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Count is how many requests arrived.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/chat/completions") {
		writeError(w, http.StatusNotFound, "not found", "")
		return
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "unreadable body", "")
		return
	}
	var req Request
	if err := json.Unmarshal(raw, &req); err != nil {
		writeError(w, http.StatusBadRequest, "body is not a chat completion request: "+err.Error(), "")
		return
	}
	_ = json.Unmarshal(raw, &req.Body)
	req.Header = r.Header.Clone()
	if len(req.Messages) == 0 {
		writeError(w, http.StatusBadRequest, "messages must not be empty", "")
		return
	}
	if msg := checkConversation(req); msg != "" {
		writeError(w, http.StatusBadRequest, msg, "")
		return
	}
	s.mu.Lock()
	s.count++
	if s.opts.Keep {
		s.requests = append(s.requests, req)
	}
	var fault Fault
	if len(s.faults) > 0 {
		fault, s.faults = s.faults[0], s.faults[1:]
	}
	s.mu.Unlock()

	if !s.wait(r.Context(), s.opts.Latency) {
		return
	}
	var reply Reply
	if fault == 0 {
		reply = s.opts.Policy(req)
		fault = reply.Fault
	}
	switch fault {
	case RateLimited:
		w.Header().Set("Retry-After", s.opts.RetryAfter)
		writeError(w, http.StatusTooManyRequests, "Rate limit reached for requests", "rate_limit_exceeded")
		return
	case ServerError:
		w.Header().Set("Retry-After", "0")
		writeError(w, http.StatusInternalServerError, "The server had an error while processing your request.", "")
		return
	case ContextLength:
		writeError(w, http.StatusBadRequest, "This model's maximum context length is 4096 tokens. However, your messages resulted in 5000 tokens. Please reduce the length of the messages.", "context_length_exceeded")
		return
	case BadRequest:
		writeError(w, http.StatusBadRequest, "Invalid value for 'temperature'", "invalid_value")
		return
	case Stall:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		flush(w)
		select {
		case <-r.Context().Done():
		case <-s.stop:
		}
		return
	}
	if fault != 0 && reply.Fault == 0 {
		reply = s.opts.Policy(req)
	}
	model := s.opts.Model
	if model == "" {
		model = req.Model
	}
	if req.Stream {
		s.stream(w, r, req, reply, model, fault)
		return
	}
	body := completion(req, reply, model)
	w.Header().Set("Content-Type", "application/json")
	switch fault {
	case Malformed:
		body = []byte(`{"id": "chatcmpl-x", "choices": [{"message": {"role": "assistant", "content": "x"}}]<html>`)
	case Truncated:
		// A Content-Length promising the whole body, and half of it.
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:len(body)/2])
		flush(w)
		hijackClose(w)
		return
	}
	_, _ = w.Write(body)
}

// checkConversation refuses what real servers refuse: a tool message that
// answers no call of the assistant message before it, and an assistant's
// calls left unanswered before the next message of another kind.
func checkConversation(req Request) string {
	open := map[string]bool{}
	for i, m := range req.Messages {
		switch m.Role {
		case "system", "user":
			if len(open) > 0 {
				return fmt.Sprintf("messages[%d]: the tool calls of the assistant message before it have no tool messages", i)
			}
		case "assistant":
			if len(open) > 0 {
				return fmt.Sprintf("messages[%d]: the tool calls of the assistant message before it have no tool messages", i)
			}
			for _, tc := range m.ToolCalls {
				if tc.ID == "" || tc.Type != "function" {
					return fmt.Sprintf("messages[%d]: a tool call needs an id and type function", i)
				}
				open[tc.ID] = true
			}
		case "tool":
			if !open[m.ToolCallID] {
				return fmt.Sprintf("messages[%d]: tool message for %q, which is not an open tool call", i, m.ToolCallID)
			}
			delete(open, m.ToolCallID)
		default:
			return fmt.Sprintf("messages[%d]: unknown role %q", i, m.Role)
		}
	}
	return ""
}

func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.stop:
		return false
	}
}

func writeError(w http.ResponseWriter, status int, msg, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	e := map[string]any{"message": msg, "type": "invalid_request_error", "param": nil, "code": nil}
	if code != "" {
		e["code"] = code
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"error": e})
}

func flush(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// hijackClose drops the connection, as a server that died mid-reply.
func hijackClose(w http.ResponseWriter) {
	if h, ok := w.(http.Hijacker); ok {
		if conn, _, err := h.Hijack(); err == nil {
			conn.Close()
		}
	}
}

// usage is the reply's usage, counted when the policy did not.
func usage(req Request, reply Reply) Usage {
	if reply.Usage != nil {
		return *reply.Usage
	}
	u := Usage{}
	for _, m := range req.Messages {
		u.PromptTokens += tokens(m.Text()) + 4
		for _, tc := range m.ToolCalls {
			u.PromptTokens += tokens(tc.Function.Name) + tokens(tc.Function.Arguments)
		}
	}
	for _, t := range req.Tools {
		u.PromptTokens += tokens(t.Function.Description) + tokens(string(t.Function.Parameters))
	}
	u.CompletionTokens = tokens(reply.Content)
	for _, c := range reply.ToolCalls {
		u.CompletionTokens += tokens(c.Name) + tokens(c.Arguments)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

func tokens(s string) int { return (len(s) + 3) / 4 }

func finishReason(reply Reply) string {
	switch {
	case reply.FinishReason != "":
		return reply.FinishReason
	case len(reply.ToolCalls) > 0:
		return "tool_calls"
	}
	return "stop"
}

func callID(i int) string { return fmt.Sprintf("call_%d_%x", i, time.Now().UnixNano()&0xffffff) }

// completion is a non-streamed reply body.
func completion(req Request, reply Reply, model string) []byte {
	msg := map[string]any{"role": "assistant", "content": reply.Content}
	if reply.Null {
		msg["content"] = nil
	}
	if len(reply.ToolCalls) > 0 {
		var calls []map[string]any
		for i, c := range reply.ToolCalls {
			calls = append(calls, map[string]any{
				"id": callID(i), "type": "function",
				"function": map[string]any{"name": c.Name, "arguments": c.Arguments},
			})
		}
		msg["tool_calls"] = calls
	}
	b, _ := json.Marshal(map[string]any{
		"id": "chatcmpl-fake", "object": "chat.completion", "created": time.Now().Unix(), "model": model,
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finishReason(reply), "logprobs": nil}},
		"usage":   usage(req, reply),
	})
	return b
}

// stream sends the reply as SSE chunks: the role, the content in pieces,
// each tool call's name and then its arguments in pieces, the finish
// reason, the usage when asked for, and [DONE].
func (s *Server) stream(w http.ResponseWriter, r *http.Request, req Request, reply Reply, model string, fault Fault) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	created := time.Now().Unix()
	send := func(delta map[string]any, finish any, extra map[string]any) {
		ch := map[string]any{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
		for k, v := range extra {
			ch[k] = v
		}
		b, _ := json.Marshal(ch)
		fmt.Fprintf(w, "data: %s\n\n", b)
		flush(w)
	}
	pieces := func(text string) []string {
		var out []string
		for len(text) > s.opts.ChunkBytes {
			n := s.opts.ChunkBytes
			for n < len(text) && (text[n]&0xC0) == 0x80 {
				n++ // never split a UTF-8 sequence: real servers send text
			}
			out = append(out, text[:n])
			text = text[n:]
		}
		return append(out, text)
	}
	fmt.Fprint(w, ": keep-alive comment, ignored by clients\n\n")
	send(map[string]any{"role": "assistant", "content": ""}, nil, nil)
	if reply.Content != "" {
		for i, p := range pieces(reply.Content) {
			send(map[string]any{"content": p}, nil, nil)
			if fault == Truncated && i == 0 {
				hijackClose(w)
				return
			}
		}
	}
	if fault == Malformed {
		fmt.Fprint(w, "data: {\"choices\": [{\"delta\": {\"content\": \"x\"\n\n")
		flush(w)
		return
	}
	for i, c := range reply.ToolCalls {
		send(map[string]any{"tool_calls": []any{map[string]any{
			"index": i, "id": callID(i), "type": "function",
			"function": map[string]any{"name": c.Name, "arguments": ""},
		}}}, nil, nil)
		for _, p := range pieces(c.Arguments) {
			send(map[string]any{"tool_calls": []any{map[string]any{"index": i, "function": map[string]any{"arguments": p}}}}, nil, nil)
		}
	}
	if fault == Truncated {
		hijackClose(w)
		return
	}
	send(map[string]any{}, finishReason(reply), nil)
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		b, _ := json.Marshal(map[string]any{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
			"choices": []any{}, "usage": usage(req, reply)})
		fmt.Fprintf(w, "data: %s\n\n", b)
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	flush(w)
}
