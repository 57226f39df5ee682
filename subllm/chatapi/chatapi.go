// Package chatapi is a client of OpenAI-compatible chat completion servers
// (vLLM, llama.cpp's llama-server, Ollama, OpenAI, ...): one POST
// {base_url}/chat/completions per call, plain or streamed (SSE), with the
// retries, back-off and limits a long run needs. It is a subllm.Model.
//
// rlmrun speaks the wire format itself rather than through openai-go:
// linking that client adds ~5 ms of package initialisation and ~8 ms of
// start-up to every rlmrun process (each rollout's agent and each tool
// command run from PATH are the same binary) and 28 MB to the binary
// (measured: `rlmrun version`, median of 80 runs, 16.6 ms without, 24.7 ms
// with). A chat completion is one JSON request and a JSON or SSE reply.
package chatapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/rlmrun/rlmrun/subllm"
)

// Sampling are the generation settings sent with every request; nil
// fields are left to the server.
type Sampling struct {
	Temperature *float64 `json:"temperature,omitempty"`
	TopP        *float64 `json:"top_p,omitempty"`
	MaxTokens   *int     `json:"max_tokens,omitempty"`
	Seed        *int64   `json:"seed,omitempty"`
	Stop        []string `json:"stop,omitempty"`
	// Extra is merged into the request body (a server's own parameters,
	// e.g. vLLM's top_k).
	Extra map[string]any `json:"-"`
}

// Stats count a run's model requests, across all its clients.
type Stats struct {
	InFlight         atomic.Int64
	Requests         atomic.Int64
	PromptTokens     atomic.Int64
	CompletionTokens atomic.Int64
}

// Config configures a client.
type Config struct {
	// BaseURL is the API root, e.g. http://127.0.0.1:8000/v1.
	BaseURL string
	// Model is the model's name on the server.
	Model string
	// APIKey, when set, is sent as a bearer token.
	APIKey   string
	Sampling Sampling
	// Stream asks for SSE replies.
	Stream bool
	// Timeout bounds one attempt (the whole reply, streamed or not).
	Timeout time.Duration
	// MaxRetries is how often a failed attempt is retried: connection
	// errors, timeouts, truncated streams, 429 and 5xx.
	MaxRetries int
	// Limit, when set, is the run's concurrency limit on model requests:
	// every attempt holds one of its slots.
	Limit *semaphore.Weighted
	// Stats, when set, counts requests and tokens.
	Stats *Stats
	// Headers are added to every request (X-RLM-Depth, ...).
	Headers map[string]string
	// HTTP is the HTTP client (default: a client of its own).
	HTTP *http.Client
	// OnRetry, when set, hears of every failed attempt that will be
	// retried: the attempt (from 1), the wait before the next, the error.
	OnRetry func(attempt int, wait time.Duration, err error)
	// Sleep waits between attempts (tests shorten it).
	Sleep func(ctx context.Context, d time.Duration) error
}

// Client calls one model on one server.
type Client struct{ cfg Config }

// New returns a client.
func New(cfg Config) *Client {
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleep
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	return &Client{cfg: cfg}
}

var _ subllm.Model = (*Client)(nil)

// APIError is an error reply of the server.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("model server: HTTP %d: %s", e.Status, e.Message)
}

// ErrContextLength is a request the model cannot take: its context is too
// long (a 400 that says so).
var ErrContextLength = errors.New("the conversation is longer than the model's context")

// ErrTransport is a failure to talk to the server at all (after retries):
// the infrastructure's fault, not the model's.
var ErrTransport = errors.New("model server unreachable")

// Complete sends one chat completion request, retrying what is worth
// retrying, and returns the model's reply.
func (c *Client) Complete(ctx context.Context, req subllm.Request) (*subllm.Response, error) {
	body, err := c.body(req)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	for attempt := 0; ; attempt++ {
		resp, v, err := c.attempt(ctx, body)
		if err == nil {
			resp.Retries, resp.Latency = attempt, time.Since(start)
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !v.retry || attempt >= c.cfg.MaxRetries {
			if v.retry {
				err = fmt.Errorf("%w: %v (after %d attempt(s))", ErrTransport, err, attempt+1)
			}
			return nil, err
		}
		wait := v.after
		if !v.told {
			wait = Backoff(attempt + 1)
		}
		if c.cfg.OnRetry != nil {
			c.cfg.OnRetry(attempt+1, wait, err)
		}
		if err := c.cfg.Sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// body is the request's JSON: the model, the sampling settings and the
// server's extra parameters.
func (c *Client) body(req subllm.Request) ([]byte, error) {
	m := map[string]any{"model": c.cfg.Model, "messages": req.Messages}
	if req.Model != "" {
		m["model"] = req.Model
	}
	if len(req.Tools) > 0 {
		m["tools"] = req.Tools
	}
	if req.ParallelToolCalls != nil {
		m["parallel_tool_calls"] = *req.ParallelToolCalls
	}
	s := c.cfg.Sampling
	set := func(k string, v any, ok bool) {
		if ok {
			m[k] = v
		}
	}
	set("temperature", deref(s.Temperature), s.Temperature != nil)
	set("top_p", deref(s.TopP), s.TopP != nil)
	set("max_tokens", deref(s.MaxTokens), s.MaxTokens != nil)
	set("seed", deref(s.Seed), s.Seed != nil)
	set("stop", s.Stop, len(s.Stop) > 0)
	if c.cfg.Stream {
		m["stream"] = true
		m["stream_options"] = map[string]any{"include_usage": true}
	}
	for k, v := range s.Extra {
		m[k] = v
	}
	return json.Marshal(m)
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// verdict says what to do after a failed attempt: retry or not, and when
// (after the back-off, or when the server said: its Retry-After).
type verdict struct {
	retry bool
	told  bool
	after time.Duration
}

var (
	giveUp  = verdict{}
	backOff = verdict{retry: true}
)

// attempt makes one request.
func (c *Client) attempt(ctx context.Context, body []byte) (*subllm.Response, verdict, error) {
	if c.cfg.Limit != nil {
		if err := c.cfg.Limit.Acquire(ctx, 1); err != nil {
			return nil, giveUp, err
		}
		defer c.cfg.Limit.Release(1)
	}
	if st := c.cfg.Stats; st != nil {
		st.InFlight.Add(1)
		st.Requests.Add(1)
		defer st.InFlight.Add(-1)
	}
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(actx, http.MethodPost, c.cfg.BaseURL+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return nil, giveUp, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if c.cfg.Stream {
		hreq.Header.Set("Accept", "text/event-stream")
	}
	if c.cfg.APIKey != "" {
		hreq.Header.Set("Authorization", "Bearer "+c.cfg.APIKey)
	}
	for k, v := range c.cfg.Headers {
		hreq.Header.Set(k, v)
	}
	hresp, err := c.cfg.HTTP.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return nil, giveUp, ctx.Err()
		}
		if actx.Err() != nil {
			return nil, backOff, fmt.Errorf("no answer within %s", c.cfg.Timeout)
		}
		return nil, backOff, err // a connection error: retried
	}
	defer hresp.Body.Close()
	if hresp.StatusCode != http.StatusOK {
		return nil, retryAfter(hresp), apiError(hresp)
	}
	var resp *subllm.Response
	if strings.HasPrefix(hresp.Header.Get("Content-Type"), "text/event-stream") {
		resp, err = readStream(hresp.Body)
	} else {
		resp, err = readCompletion(hresp.Body)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, giveUp, ctx.Err()
		}
		if actx.Err() != nil {
			return nil, backOff, fmt.Errorf("no complete answer within %s", c.cfg.Timeout)
		}
		// A reply cut short or garbled is the server's (or a proxy's)
		// failure, not the model's: retried.
		return nil, backOff, err
	}
	if st := c.cfg.Stats; st != nil {
		st.PromptTokens.Add(int64(resp.Usage.PromptTokens))
		st.CompletionTokens.Add(int64(resp.Usage.CompletionTokens))
	}
	return resp, verdict{}, nil
}

// retryAfter decides whether a failed status is retried: 429 and 5xx are,
// after the server's Retry-After if it gave one; the rest is not.
func retryAfter(resp *http.Response) verdict {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
		return giveUp
	}
	h := resp.Header.Get("Retry-After")
	if secs, err := strconv.ParseFloat(h, 64); err == nil && secs >= 0 {
		return verdict{retry: true, told: true, after: min(time.Duration(secs*float64(time.Second)), maxRetryAfter)}
	}
	if t, err := http.ParseTime(h); err == nil {
		return verdict{retry: true, told: true, after: min(max(time.Until(t), 0), maxRetryAfter)}
	}
	return backOff
}

// maxRetryAfter bounds how long a server may make a call wait.
const maxRetryAfter = 5 * time.Minute

// apiError reads an error reply: OpenAI's {"error": {"message"}} or a
// string, or the text.
func apiError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var m struct {
		Error json.RawMessage `json:"error"`
	}
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &m) == nil && len(m.Error) > 0 {
		var inner struct {
			Message string `json:"message"`
			Code    any    `json:"code"`
		}
		var s string
		if json.Unmarshal(m.Error, &inner) == nil && inner.Message != "" {
			msg = inner.Message
			if code, ok := inner.Code.(string); ok && code == "context_length_exceeded" {
				msg += " (context_length_exceeded)"
			}
		} else if json.Unmarshal(m.Error, &s) == nil {
			msg = s
		}
	}
	if len(msg) > 2000 {
		msg = msg[:2000] + "..."
	}
	err := &APIError{Status: resp.StatusCode, Message: msg}
	if resp.StatusCode == http.StatusBadRequest && contextLength(msg) {
		return fmt.Errorf("%w: %w", ErrContextLength, err)
	}
	return err
}

// contextLength recognises how servers say a prompt is too long.
func contextLength(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"context length", "context_length", "maximum context", "context window", "too many tokens", "prompt is too long", "exceeds the context"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// maxReply bounds a reply the client reads: millions of tokens, more than
// any model writes in one reply, and what a broken or hostile server may
// make a run keep.
const maxReply = 16 << 20

// completion is a non-streamed reply.
type completion struct {
	Model   string `json:"model"`
	Choices []struct {
		Message      json.RawMessage `json:"message"`
		FinishReason string          `json:"finish_reason"`
	} `json:"choices"`
	Usage subllm.Usage `json:"usage"`
}

func readCompletion(r io.Reader) (*subllm.Response, error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxReply+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxReply {
		return nil, fmt.Errorf("model server: a reply over %d bytes", maxReply)
	}
	var c completion
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("model server: the reply is not a chat completion: %w", err)
	}
	if len(c.Choices) == 0 {
		return nil, errors.New("model server: the reply has no choices")
	}
	msg, err := parseMessage(c.Choices[0].Message)
	if err != nil {
		return nil, err
	}
	return &subllm.Response{Message: msg, Usage: c.Usage, FinishReason: c.Choices[0].FinishReason, Model: c.Model}, nil
}

// parseMessage reads an assistant message, keeping its JSON as received.
func parseMessage(raw json.RawMessage) (subllm.Message, error) {
	var m struct {
		Role      string            `json:"role"`
		Content   json.RawMessage   `json:"content"`
		ToolCalls []subllm.ToolCall `json:"tool_calls"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return subllm.Message{}, fmt.Errorf("model server: a malformed message: %w", err)
	}
	if m.Role == "" {
		m.Role = "assistant"
	}
	return subllm.Message{Role: m.Role, Content: contentText(m.Content), ToolCalls: m.ToolCalls, Raw: raw}, nil
}

// contentText reads a message's content: a string, null, or a list of
// parts whose text is joined.
func contentText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) == nil {
		var b strings.Builder
		for _, p := range parts {
			b.WriteString(p.Text)
		}
		return b.String()
	}
	return ""
}

// errTruncated is a stream that ended before "data: [DONE]".
var errTruncated = errors.New("model server: the stream ended before [DONE]")

// chunk is one SSE event of a streamed reply.
type chunk struct {
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Role      string          `json:"role"`
			Content   *string         `json:"content"`
			ToolCalls []toolCallDelta `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *subllm.Usage `json:"usage"`
}

type toolCallDelta struct {
	Index    int    `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// readStream assembles a streamed reply: content and tool-call arguments
// arrive in pieces (tool calls keyed by index), usage in a last chunk with
// no choices, and the stream ends with "data: [DONE]".
func readStream(r io.Reader) (*subllm.Response, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxReply)
	resp := &subllm.Response{}
	var content strings.Builder
	calls := map[int]*subllm.ToolCall{}
	var order []int
	role := "assistant"
	size := 0
	for sc.Scan() {
		line := sc.Text()
		size += len(line)
		if size > maxReply {
			return nil, fmt.Errorf("model server: a reply over %d bytes", maxReply)
		}
		data, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue // comments, event names, blank lines between events
		}
		data = strings.TrimSpace(data)
		if data == "[DONE]" {
			resp.Message = assembled(role, content.String(), calls, order)
			return resp, nil
		}
		var ch chunk
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			return nil, fmt.Errorf("model server: a malformed stream chunk: %w", err)
		}
		if ch.Model != "" {
			resp.Model = ch.Model
		}
		if ch.Usage != nil {
			resp.Usage = *ch.Usage
		}
		for _, c := range ch.Choices {
			if c.Index != 0 {
				continue
			}
			if c.Delta.Role != "" {
				role = c.Delta.Role
			}
			if c.Delta.Content != nil {
				content.WriteString(*c.Delta.Content)
			}
			for _, d := range c.Delta.ToolCalls {
				tc, ok := calls[d.Index]
				if !ok {
					tc = &subllm.ToolCall{Type: "function"}
					calls[d.Index] = tc
					order = append(order, d.Index)
				}
				if d.ID != "" {
					tc.ID = d.ID
				}
				if d.Type != "" {
					tc.Type = d.Type
				}
				tc.Function.Name += d.Function.Name
				tc.Function.Arguments += d.Function.Arguments
			}
			if c.FinishReason != nil {
				resp.FinishReason = *c.FinishReason
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, errTruncated
}

// assembled is a streamed reply's message, in the shape a non-streamed
// reply would have had.
func assembled(role, content string, calls map[int]*subllm.ToolCall, order []int) subllm.Message {
	m := subllm.Message{Role: role, Content: content}
	for _, i := range order {
		m.ToolCalls = append(m.ToolCalls, *calls[i])
	}
	raw := map[string]any{"role": role, "content": content}
	if len(m.ToolCalls) > 0 {
		raw["tool_calls"] = m.ToolCalls
		if content == "" {
			raw["content"] = nil
		}
	}
	m.Raw, _ = json.Marshal(raw)
	return m
}

// Backoff is the wait before retry n (n >= 1): 1 s doubling up to 60 s,
// with up to 25% random jitter.
func Backoff(n int) time.Duration {
	d := time.Second
	for i := 1; i < n && d < time.Minute; i++ {
		d *= 2
	}
	d = min(d, time.Minute)
	return d + time.Duration(rand.Int64N(int64(d)/4+1))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
