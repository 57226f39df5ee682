package subllm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestExtractBoxed(t *testing.T) {
	cases := []struct{ in, want string }{
		{`the answer is \boxed{42}`, "42"},
		{`\boxed{a} then \boxed{b}`, "b"},
		{`\boxed{f(x) = {x^2}}`, "f(x) = {x^2}"},
		{`no box here`, "no box here"},
		{`\boxed{unbalanced`, `\boxed{unbalanced`},
		{`\boxed{ok} and \boxed{broken`, "ok"},
		{`\boxed{}`, ""},
	}
	for _, c := range cases {
		if got := ExtractBoxed(c.in); got != c.want {
			t.Errorf("ExtractBoxed(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func scripted(t testing.TB, replies ...Reply) *Scripted {
	t.Helper()
	for i := range replies {
		replies[i].Where = fmt.Sprintf("replies[%d]", i)
	}
	s, err := NewScripted(replies, map[string]any{"vars": map[string]string{"who": "world"}, "rollout": "r", "repeat": 1})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestScriptedStepsAndTemplates(t *testing.T) {
	m := scripted(t,
		Reply{Match: `count (?P<word>\w+)`, Steps: []Step{
			{ToolCalls: []StepCall{{Name: "len", Arguments: map[string]any{"s": "{{ .groups.word }}", "n": 3}}}},
			{Content: `{{ .vars.who }}: \boxed{ {{- .tool_result -}} }`, HasContent: true},
		}},
		Reply{Match: ".*", Steps: []Step{{Content: "fallback {{ .prompt }}", HasContent: true}}},
	)
	ctx := context.Background()
	user := []Message{{Role: "system", Content: "sys"}, {Role: "user", Content: "please count apples"}}
	r1, err := m.Complete(ctx, Request{Messages: user})
	if err != nil {
		t.Fatal(err)
	}
	if len(r1.Message.ToolCalls) != 1 || r1.Message.ToolCalls[0].Function.Arguments != `{"n":3,"s":"apples"}` {
		t.Fatalf("step 1: %+v", r1.Message)
	}
	conv := append(user, r1.Message, Message{Role: "tool", ToolCallID: "call_0_0", Content: "6"})
	r2, err := m.Complete(ctx, Request{Messages: conv})
	if err != nil || r2.Message.Content != `world: \boxed{6}` {
		t.Fatalf("step 2: %+v %v", r2, err)
	}
	if _, err := m.Complete(ctx, Request{Messages: append(conv, r2.Message)}); err == nil || !strings.Contains(err.Error(), "has no step 3") {
		t.Fatalf("step 3: %v", err)
	}
	r3, err := m.Complete(ctx, Request{Messages: []Message{{Role: "user", Content: "hello"}}})
	if err != nil || r3.Message.Content != "fallback hello" {
		t.Fatalf("shorthand reply: %+v %v", r3, err)
	}
}

func TestScriptedUnmatchedPromptIsAnError(t *testing.T) {
	m := scripted(t, Reply{Match: "^only this$", Steps: []Step{{Content: "x", HasContent: true}}})
	_, err := m.Complete(context.Background(), Request{Messages: []Message{{Role: "user", Content: "something else"}}})
	if err == nil || !strings.Contains(err.Error(), `no scripted sub-LLM reply matches the prompt "something else"`) {
		t.Fatalf("err = %v", err)
	}
}

// countingModel answers after a short wait and records how many calls run
// at once.
type countingModel struct {
	now, peak atomic.Int32
	delay     time.Duration
	fail      func(prompt string) error
}

func (m *countingModel) Complete(ctx context.Context, req Request) (*Response, error) {
	n := m.now.Add(1)
	defer m.now.Add(-1)
	for {
		p := m.peak.Load()
		if n <= p || m.peak.CompareAndSwap(p, n) {
			break
		}
	}
	select {
	case <-time.After(m.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	prompt := req.Messages[len(req.Messages)-1].Content
	if m.fail != nil {
		if err := m.fail(prompt); err != nil {
			return nil, err
		}
	}
	return &Response{Message: Message{Role: "assistant", Content: `\boxed{` + strings.ToUpper(prompt) + `}`}}, nil
}

func TestBatchParallelismAndOrder(t *testing.T) {
	m := &countingModel{delay: 5 * time.Millisecond, fail: func(p string) error {
		if p == "p13" {
			return errors.New("model down")
		}
		return nil
	}}
	prompts := make([]string, 100)
	for i := range prompts {
		prompts[i] = fmt.Sprintf("p%d", i)
	}
	var mu sync.Mutex
	running, peak := 0, 0
	res := RunBatch(context.Background(), BatchOptions{
		Model:          m,
		MaxParallelism: 5,
		OnStart: func(int) {
			mu.Lock()
			running++
			peak = max(peak, running)
			mu.Unlock()
		},
		OnEnd: func(int) {
			mu.Lock()
			running--
			mu.Unlock()
		},
	}, prompts)
	if peak != 5 || m.peak.Load() > 5 {
		t.Fatalf("peak concurrency %d (model saw %d), want exactly 5", peak, m.peak.Load())
	}
	for i, r := range res {
		want := strings.ToUpper(prompts[i])
		if i == 13 {
			if !r.Err || r.Content != "Error in sub-LLM call: model down" {
				t.Errorf("item 13: %+v", r)
			}
			continue
		}
		if r.Content != want || r.Err {
			t.Fatalf("item %d = %+v, want %s (order lost?)", i, r, want)
		}
	}
}

func TestBatchStagger(t *testing.T) {
	m := &countingModel{}
	start := time.Now()
	RunBatch(context.Background(), BatchOptions{Model: m, MaxParallelism: 10, Stagger: 20 * time.Millisecond}, []string{"a", "b", "c", "d"})
	if d := time.Since(start); d < 60*time.Millisecond {
		t.Fatalf("4 items staggered by 20ms finished in %v", d)
	}
}

func TestToolLoopAndMaxTurns(t *testing.T) {
	m := scripted(t, Reply{Match: "loop", Steps: []Step{
		{ToolCalls: []StepCall{{Name: "t"}}},
		{ToolCalls: []StepCall{{Name: "t"}}},
		{Content: `\boxed{ {{- .tool_result -}} }`, HasContent: true},
	}})
	calls := 0
	call := func(_ context.Context, name string, _ map[string]any) (string, error) {
		calls++
		if calls == 2 {
			return "", errors.New("second call fails")
		}
		return "r" + fmt.Sprint(calls), nil
	}
	tools := []ToolDef{{Type: "function", Function: FunctionDef{Name: "t"}}}
	// Enough rounds: the answer follows the tool results.
	res := RunBatch(context.Background(), BatchOptions{Model: m, Tools: tools, CallTool: call, MaxParallelism: 1, ToolMaxTurns: 5}, []string{"loop"})
	if r := res[0]; r.Content != "Error: second call fails" || r.ToolCalls != 2 || r.Turns != 3 || r.MaxTurns {
		t.Fatalf("tool loop: %+v", r)
	}
	// One round only: after it the model is asked once more, without tools.
	calls = 0
	var seen []Request
	spy := modelFunc(func(ctx context.Context, req Request) (*Response, error) {
		seen = append(seen, req)
		return m.Complete(ctx, req)
	})
	res = RunBatch(context.Background(), BatchOptions{Model: spy, Tools: tools, CallTool: call, MaxParallelism: 1, ToolMaxTurns: 1}, []string{"loop"})
	if r := res[0]; !r.MaxTurns || r.Turns != 2 {
		t.Fatalf("max turns: %+v", r)
	}
	last := seen[len(seen)-1]
	if len(last.Tools) != 0 || last.Messages[len(last.Messages)-1].Content != MaxTurnsMessage {
		t.Fatalf("final request: %+v", last)
	}
}

type modelFunc func(context.Context, Request) (*Response, error)

func (f modelFunc) Complete(ctx context.Context, r Request) (*Response, error) { return f(ctx, r) }

func TestCallTimeout(t *testing.T) {
	m := &countingModel{delay: time.Second}
	res := RunBatch(context.Background(), BatchOptions{Model: m, MaxParallelism: 1, CallTimeout: 30 * time.Millisecond}, []string{"slow"})
	if r := res[0]; !r.Err || r.Content != "Error: Sub-LLM API call timed out after 0.03s" {
		t.Fatalf("timeout: %+v", r)
	}
}

func TestSummaryLines(t *testing.T) {
	l := SummaryLines([]ItemResult{
		{PromptTokens: 10, CompletionTokens: 2, ToolCalls: 1, Duration: 1234 * time.Millisecond},
		{Err: true},
		{MaxTurns: true, ToolCalls: 5},
	}, 2500*time.Millisecond)
	want := []string{
		"llm_batch: 3 call(s) in 2.50s",
		"  [0]: 12 tokens, 1 tool calls, 1.23s ✓",
		"  [1]: 0 tokens, 0 tool calls, 0.00s error",
		"  [2]: 0 tokens, 5 tool calls, 0.00s ⚠ max turns",
	}
	if got := l.PrintLines(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if l.SummaryMasked != "llm_batch: 3 call(s) in X.XXs" || l.ItemsMasked[0] != "12 tokens, 1 tool calls, X.XXs ✓" {
		t.Fatalf("masked: %+v", l)
	}
}

// BenchmarkBatch100 runs llm_batch with 100 scripted prompts, stagger 0
// (target: <= 20 ms).
func BenchmarkBatch100(b *testing.B) {
	m := scripted(b, Reply{Match: `item (?P<n>\d+)`, Steps: []Step{{Content: `\boxed{ {{- .groups.n -}} }`, HasContent: true}}})
	prompts := make([]string, 100)
	for i := range prompts {
		prompts[i] = fmt.Sprintf("item %d", i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res := RunBatch(context.Background(), BatchOptions{Model: m, MaxParallelism: 5}, prompts)
		if res[99].Content != "99" {
			b.Fatal(res[99])
		}
	}
}

// An item keeps its whole conversation and the facts of its model calls.
func TestItemKeepsItsConversation(t *testing.T) {
	m := scripted(t, Reply{Match: "count", Steps: []Step{
		{ToolCalls: []StepCall{{Name: "len", Arguments: map[string]any{"s": "abc"}}}},
		{Content: `\boxed{3}`, HasContent: true},
	}})
	res := RunBatch(context.Background(), BatchOptions{
		Model: m, Tools: []ToolDef{{Type: "function", Function: FunctionDef{Name: "len"}}}, MaxParallelism: 1, ToolMaxTurns: 3,
		CallTool: func(context.Context, string, map[string]any) (string, error) { return "3", nil },
	}, []string{"count abc"})
	r := res[0]
	roles := make([]string, len(r.Messages))
	for i, msg := range r.Messages {
		roles[i] = msg.Role
	}
	if r.Content != "3" || r.Prompt != "count abc" || strings.Join(roles, " ") != "system user assistant tool assistant" || len(r.Requests) != 2 {
		t.Fatalf("item: %+v roles %v", r, roles)
	}
}
