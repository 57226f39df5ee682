package chatapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/rlmrun/rlmrun/internal/fakellm"
	"github.com/rlmrun/rlmrun/subllm"
)

// echo answers with the last user message and, when tools are offered, a
// call of the first with arguments long enough to arrive in pieces.
func echo(req fakellm.Request) fakellm.Reply {
	last := req.Messages[len(req.Messages)-1].Text()
	if len(req.Tools) > 0 && req.Messages[len(req.Messages)-1].Role == "user" {
		args, _ := json.Marshal(map[string]string{"code": "print('" + last + "')", "note": "ünïcödé"})
		return fakellm.Reply{Content: "calling", ToolCalls: []fakellm.Call{{Name: req.Tools[0].Function.Name, Arguments: string(args)}, {Name: "second", Arguments: "{}"}}}
	}
	return fakellm.Reply{Content: "echo: " + last}
}

// noWait makes retries immediate and counts the waits asked for.
func noWait(waits *[]time.Duration, mu *sync.Mutex) func(context.Context, time.Duration) error {
	return func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		*waits = append(*waits, d)
		mu.Unlock()
		return ctx.Err()
	}
}

func request(text string, tools bool) subllm.Request {
	req := subllm.Request{Messages: []subllm.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: text}}}
	if tools {
		req.Tools = []subllm.ToolDef{{Type: "function", Function: subllm.FunctionDef{Name: "run", Parameters: json.RawMessage(`{"type":"object"}`)}}}
	}
	return req
}

func TestPlainAndStreamedRepliesAreTheSame(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: echo, Keep: true, ChunkBytes: 3})
	defer srv.Close()
	var got [2]*subllm.Response
	for i, stream := range []bool{false, true} {
		c := New(Config{BaseURL: srv.URL + "/", Model: "m", Stream: stream})
		resp, err := c.Complete(context.Background(), request("hi", true))
		if err != nil {
			t.Fatalf("stream %v: %v", stream, err)
		}
		got[i] = resp
		if resp.FinishReason != "tool_calls" || resp.Model != "m" || resp.Usage.PromptTokens == 0 || resp.Usage.CompletionTokens == 0 {
			t.Errorf("stream %v: facts %+v", stream, resp)
		}
		if len(resp.Message.ToolCalls) != 2 || resp.Message.ToolCalls[0].ID == "" || resp.Message.ToolCalls[0].Type != "function" {
			t.Fatalf("stream %v: tool calls %+v", stream, resp.Message.ToolCalls)
		}
		var args map[string]string
		if err := json.Unmarshal([]byte(resp.Message.ToolCalls[0].Function.Arguments), &args); err != nil || args["code"] != "print('hi')" || args["note"] != "ünïcödé" {
			t.Errorf("stream %v: arguments %q (%v)", stream, resp.Message.ToolCalls[0].Function.Arguments, err)
		}
		// What goes back to the server is what came from it.
		var raw map[string]any
		if err := json.Unmarshal(resp.Message.Raw, &raw); err != nil || raw["role"] != "assistant" {
			t.Errorf("stream %v: raw message %s", stream, resp.Message.Raw)
		}
	}
	if got[0].Message.Content != got[1].Message.Content || got[0].Usage != got[1].Usage {
		t.Errorf("plain %+v\nstreamed %+v", got[0], got[1])
	}
	reqs := srv.Requests()
	if reqs[1].StreamOptions == nil || !reqs[1].StreamOptions.IncludeUsage || !reqs[1].Stream {
		t.Errorf("a streamed request must ask for usage: %+v", reqs[1].Body)
	}
	if reqs[0].Header.Get("Authorization") != "" {
		t.Errorf("no key, yet an Authorization header: %q", reqs[0].Header.Get("Authorization"))
	}
}

func TestRequestCarriesSettings(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: echo, Keep: true})
	defer srv.Close()
	temp, top, maxTok, seed := 0.5, 0.9, 128, int64(7)
	f := false
	c := New(Config{
		BaseURL: srv.URL, Model: "m", APIKey: "sk-test",
		Sampling: Sampling{Temperature: &temp, TopP: &top, MaxTokens: &maxTok, Seed: &seed, Stop: []string{"END"}, Extra: map[string]any{"top_k": 20}},
		Headers:  map[string]string{"X-RLM-Depth": "1"},
	})
	req := request("hi", true)
	req.ParallelToolCalls = &f
	if _, err := c.Complete(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	r := srv.Requests()[0]
	b := r.Body
	if b["temperature"] != 0.5 || b["top_p"] != 0.9 || b["max_tokens"] != 128.0 || b["seed"] != 7.0 || b["top_k"] != 20.0 || b["parallel_tool_calls"] != false || b["model"] != "m" {
		t.Errorf("body %v", b)
	}
	if stop, _ := b["stop"].([]any); len(stop) != 1 || stop[0] != "END" {
		t.Errorf("stop %v", b["stop"])
	}
	if r.Header.Get("Authorization") != "Bearer sk-test" || r.Header.Get("X-RLM-Depth") != "1" {
		t.Errorf("headers %v", r.Header)
	}
}

// TestRetries: what a server or the network gets wrong is retried (429
// after its Retry-After, 5xx, a stalled, malformed or truncated reply);
// what the request gets wrong is not; context-length errors say so.
func TestRetries(t *testing.T) {
	cases := []struct {
		name     string
		faults   []fakellm.Fault
		stream   bool
		retries  int
		wantErr  error // nil: success
		attempts int
		waits    []time.Duration
	}{
		{"rate limited", []fakellm.Fault{fakellm.RateLimited, fakellm.RateLimited}, false, 5, nil, 3, []time.Duration{1500 * time.Millisecond, 1500 * time.Millisecond}},
		{"server errors", []fakellm.Fault{fakellm.ServerError}, true, 5, nil, 2, []time.Duration{0}},
		{"malformed", []fakellm.Fault{fakellm.Malformed}, false, 5, nil, 2, nil},
		{"malformed stream", []fakellm.Fault{fakellm.Malformed}, true, 5, nil, 2, nil},
		{"truncated", []fakellm.Fault{fakellm.Truncated}, false, 5, nil, 2, nil},
		{"truncated stream", []fakellm.Fault{fakellm.Truncated}, true, 5, nil, 2, nil},
		{"stalled", []fakellm.Fault{fakellm.Stall}, true, 5, nil, 2, nil},
		{"out of retries", []fakellm.Fault{fakellm.ServerError, fakellm.ServerError, fakellm.ServerError}, false, 2, ErrTransport, 3, nil},
		{"context length", []fakellm.Fault{fakellm.ContextLength}, false, 5, ErrContextLength, 1, nil},
		{"bad request", []fakellm.Fault{fakellm.BadRequest}, false, 5, &APIError{}, 1, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := fakellm.Start(fakellm.Options{Policy: echo, RetryAfter: "1.5"})
			defer srv.Close()
			srv.Inject(tc.faults...)
			var waits []time.Duration
			var mu sync.Mutex
			c := New(Config{BaseURL: srv.URL, Model: "m", Stream: tc.stream, MaxRetries: tc.retries, Timeout: 300 * time.Millisecond, Sleep: noWait(&waits, &mu)})
			resp, err := c.Complete(context.Background(), request("hi", false))
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("error %v", err)
			case tc.wantErr == nil && resp.Retries != tc.attempts-1:
				t.Errorf("retries %d, want %d", resp.Retries, tc.attempts-1)
			case tc.wantErr != nil:
				var apiErr *APIError
				if _, isAPI := tc.wantErr.(*APIError); isAPI && !errors.As(err, &apiErr) || !isAPI && !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
			}
			if n := srv.Count(); n != tc.attempts {
				t.Errorf("%d attempts, want %d", n, tc.attempts)
			}
			if tc.waits != nil && (len(waits) != len(tc.waits) || waits[0] != tc.waits[0]) {
				t.Errorf("waits %v, want %v (Retry-After honoured)", waits, tc.waits)
			}
		})
	}
}

func TestBackoffGrowsWithJitter(t *testing.T) {
	prev := time.Duration(0)
	for n := 1; n <= 8; n++ {
		d := Backoff(n)
		base := time.Second << (n - 1)
		if base > time.Minute {
			base = time.Minute
		}
		if d < base || d > base+base/4 || d < prev/2 {
			t.Errorf("Backoff(%d) = %s (base %s)", n, d, base)
		}
		prev = d
	}
}

// TestConcurrencyLimit: the run's limit holds across clients.
func TestConcurrencyLimit(t *testing.T) {
	var inFlight, peak atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		inFlight.Add(-1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`))
	}))
	defer srv.Close()
	limit := semaphore.NewWeighted(3)
	stats := &Stats{}
	a := New(Config{BaseURL: srv.URL, Model: "a", Limit: limit, Stats: stats})
	b := New(Config{BaseURL: srv.URL, Model: "b", Limit: limit, Stats: stats})
	var wg sync.WaitGroup
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func(c *Client) {
			defer wg.Done()
			if _, err := c.Complete(context.Background(), request("x", false)); err != nil {
				t.Error(err)
			}
		}(map[bool]*Client{true: a, false: b}[i%2 == 0])
	}
	wg.Wait()
	if p := peak.Load(); p > 3 || p < 2 {
		t.Errorf("peak in flight %d, want at most 3 (and some parallelism)", p)
	}
	if stats.Requests.Load() != 24 || stats.PromptTokens.Load() != 24 || stats.InFlight.Load() != 0 {
		t.Errorf("stats: %d requests, %d prompt tokens, %d in flight", stats.Requests.Load(), stats.PromptTokens.Load(), stats.InFlight.Load())
	}
}

func TestCancelStopsAStalledRequest(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: echo})
	defer srv.Close()
	srv.Inject(fakellm.Stall)
	c := New(Config{BaseURL: srv.URL, Model: "m", MaxRetries: 5})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Complete(ctx, request("hi", false))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %s", d)
	}
}

// TestHostileReplies: a server's reply is bounded and its error text cut;
// nothing it sends panics the client.
func TestHostileReplies(t *testing.T) {
	bodies := map[string]string{
		"no choices":      `{"choices":[]}`,
		"content parts":   `{"choices":[{"message":{"role":"assistant","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},"finish_reason":"stop"}]}`,
		"null content":    `{"choices":[{"message":{"role":"assistant","content":null},"finish_reason":"stop"}]}`,
		"huge error":      strings.Repeat("x", 1<<20),
		"message not obj": `{"choices":[{"message":"hello"}]}`,
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if name == "huge error" {
					w.WriteHeader(http.StatusBadRequest)
				}
				_, _ = w.Write([]byte(body))
			}))
			defer srv.Close()
			c := New(Config{BaseURL: srv.URL, Model: "m", Sleep: func(context.Context, time.Duration) error { return nil }})
			resp, err := c.Complete(context.Background(), request("hi", false))
			switch name {
			case "content parts":
				if err != nil || resp.Message.Content != "ab" {
					t.Errorf("%v %+v", err, resp)
				}
			case "null content":
				if err != nil || resp.Message.Content != "" {
					t.Errorf("%v %+v", err, resp)
				}
			case "huge error":
				if err == nil || len(err.Error()) > 2100 {
					t.Errorf("error of %d bytes", len(err.Error()))
				}
			default:
				if err == nil {
					t.Errorf("no error for %s", name)
				}
			}
		})
	}
}

// TestSlowReplyIsWaitedFor: a slow server within the timeout is no
// failure; past it, the attempt is retried.
func TestSlowReplyIsWaitedFor(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: echo, Latency: 150 * time.Millisecond})
	defer srv.Close()
	c := New(Config{BaseURL: srv.URL, Model: "m", Timeout: 2 * time.Second, MaxRetries: 0})
	resp, err := c.Complete(context.Background(), request("hi", false))
	if err != nil || resp.Retries != 0 || resp.Latency < 150*time.Millisecond {
		t.Fatalf("%v %+v", err, resp)
	}
	var waits []time.Duration
	var mu sync.Mutex
	c = New(Config{BaseURL: srv.URL, Model: "m", Timeout: 50 * time.Millisecond, MaxRetries: 1, Sleep: noWait(&waits, &mu)})
	if _, err := c.Complete(context.Background(), request("hi", false)); !errors.Is(err, ErrTransport) || !strings.Contains(err.Error(), "no answer within 50ms") {
		t.Fatalf("error %v", err)
	}
	if len(waits) != 1 {
		t.Errorf("%d retries, want 1", len(waits))
	}
}
