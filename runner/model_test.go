package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/rlmrun/rlmrun/internal/fakellm"
	"github.com/rlmrun/rlmrun/schema"
)

// modelSpec is a spec whose rollout the model plays.
func modelSpec(t *testing.T, url, lang, format, extra string) *schema.Spec {
	t.Helper()
	return loadSpec(t, fmt.Sprintf(`version: 1
name: model
repl: {language: %s, max_iterations: 4, code_execution_timeout: 20s}
model: {base_url: %q, name: test-model, format: %s, max_retries: 0}
sub_llm: {stagger_ms: 0, stagger_jitter_ms: 0}
%s
rollouts:
  - id: r
    prompt: Say hello.
`, lang, url, format, extra), nil)
}

// script is a model that answers the n-th root request with replies[n],
// and keeps what it was asked.
type script struct {
	mu      sync.Mutex
	replies []fakellm.Reply
	seen    []fakellm.Request
}

func (s *script) policy(req fakellm.Request) fakellm.Reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.seen)
	s.seen = append(s.seen, req)
	if n < len(s.replies) {
		return s.replies[n]
	}
	return fakellm.Reply{Content: "(script over)"}
}

func (s *script) requests() []fakellm.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fakellm.Request(nil), s.seen...)
}

func call(tool, code string) fakellm.Call {
	b, _ := json.Marshal(map[string]string{"code": code})
	return fakellm.Call{Name: tool, Arguments: string(b)}
}

func TestToolsFormat(t *testing.T) {
	s := &script{replies: []fakellm.Reply{
		{Null: true, ToolCalls: []fakellm.Call{
			call("call_bash_repl", "echo a; x=1"),
			{Name: "nope", Arguments: `{"code": "ls"}`},
			{Name: "call_bash_repl", Arguments: `{"cmd": "ls"}`},
			call("call_bash_repl", "echo b$x '{{ .rollout }}'"),
		}},
		{Content: "All done."},
	}}
	srv := fakellm.Start(fakellm.Options{Policy: s.policy})
	defer srv.Close()
	r := runSpec(t, modelSpec(t, srv.URL, "bash", "tools", "")).Results[0]
	if r.Status != StatusCompleted || r.StopReason != StopNoToolCalls || r.Model != "test-model" {
		t.Fatalf("status %s stop %s model %q error %q", r.Status, r.StopReason, r.Model, r.Error)
	}
	// The model's code is not a template: braces run as written.
	checkOutputs(t, r, []string{"a\n", "b1 {{ .rollout }}\n"})
	reqs := s.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests", len(reqs))
	}
	first := reqs[0]
	if len(first.Messages) != 1 || first.Messages[0].Role != "user" || !strings.HasPrefix(first.Messages[0].Text(), "<SCAFFOLDING>\n") ||
		!strings.HasSuffix(first.Messages[0].Text(), "</SCAFFOLDING>\n\nSay hello.") {
		t.Errorf("first request: %+v", first.Messages)
	}
	if names := first.ToolNames(); len(names) != 1 || names[0] != "call_bash_repl" || first.Header.Get(DepthHeader) != "0" || first.Model != "test-model" {
		t.Errorf("tools %v, depth %q, model %q", names, first.Header.Get(DepthHeader), first.Model)
	}
	for _, want := range []string{"call_bash_repl", "RLM_CONTENT", "llm_batch", "4 turns"} {
		if !strings.Contains(first.Messages[0].Text(), want) {
			t.Errorf("the scaffolding does not mention %s", want)
		}
	}
	var tools []string
	for _, m := range reqs[1].Messages[2:] {
		if m.Role != "tool" {
			t.Fatalf("message %+v", m)
		}
		tools = append(tools, m.Text())
	}
	want := []string{"a\n", `Error: there is no tool "nope"; call call_bash_repl.`, "Error: the arguments need code, a string", "b1 {{ .rollout }}\n"}
	if strings.Join(tools, "|") != strings.Join(want, "|") {
		t.Errorf("tool messages %q, want %q", tools, want)
	}
	// The trajectory is the conversation as sent and received.
	if len(r.Messages) != 7 || r.Messages[6].Role != "assistant" || r.Messages[6].Content != "All done." {
		t.Errorf("messages: %d %+v", len(r.Messages), r.Messages)
	}
	models := 0
	for _, c := range r.Calls {
		if c.Kind == CallModel {
			models++
			if c.RequestFacts.Usage.PromptTokens == 0 || c.RequestFacts.Model != "test-model" {
				t.Errorf("model call %+v", c.RequestFacts)
			}
		}
	}
	if models != 2 || r.Metrics["root_llm_turns"] != 2 || r.Metrics["root_llm_prompt_tokens"].(int) == 0 {
		t.Errorf("%d model calls, metrics %v", models, r.Metrics)
	}
}

func TestIPythonFormat(t *testing.T) {
	s := &script{replies: []fakellm.Reply{
		{Null: true, ToolCalls: []fakellm.Call{call("ipython", "print(1)"), call("ipython", "print(2)")}},
		{Null: true, ToolCalls: []fakellm.Call{{Name: "ipython", Arguments: `{"code": "import time; time.sleep(10)", "timeout": 1}`}}},
		{Null: true, ToolCalls: []fakellm.Call{call("ipython", "x = 6 * 7\nx")}},
		{Content: " 42 \n"},
	}}
	srv := fakellm.Start(fakellm.Options{Policy: s.policy})
	defer srv.Close()
	r := runSpec(t, modelSpec(t, srv.URL, "python", "ipython", "")).Results[0]
	if r.Status != StatusCompleted || r.StopReason != StopFinalAnswer || r.Answer != "42" || !r.FinalAnswer || !r.AnswerReady {
		t.Fatalf("status %s stop %s answer %q final %v error %q", r.Status, r.StopReason, r.Answer, r.FinalAnswer, r.Error)
	}
	reqs := s.requests()
	if reqs[0].ParallelToolCalls == nil || *reqs[0].ParallelToolCalls || reqs[0].Messages[0].Role != "system" {
		t.Errorf("first request: parallel %v, messages %+v", reqs[0].ParallelToolCalls, reqs[0].Messages)
	}
	for _, m := range reqs[1].Messages[3:] {
		if m.Text() != "Error: only one tool call per turn allowed" {
			t.Errorf("two calls got %q", m.Text())
		}
	}
	if len(r.Turns) != 2 || r.Turns[0].Event != "timeout" || r.Turns[0].Timeout != "1s" || !strings.HasPrefix(r.Turns[0].Output, "Code execution timed out after 1 seconds.") {
		t.Fatalf("turns %+v", r.Turns)
	}
	// The model saw the execution-time line the transcript keeps apart.
	last := reqs[3].Messages[len(reqs[3].Messages)-1]
	if last.Role != "tool" || !strings.HasPrefix(last.Text(), "Out[1]: 42\n[Execution time: ") {
		t.Errorf("the model saw %q", last.Text())
	}
}

func TestFencedFormat(t *testing.T) {
	s := &script{replies: []fakellm.Reply{
		{Content: "I will think first."},
		{Content: "```repl\necho one\n```\ntext\n```repl\necho two\n```"},
		{Content: "```repl\nexport RLM_CONTENT=partial\n```"},
		{Content: "```repl\necho four\n```"},
		{Content: "The answer is 7."},
	}}
	srv := fakellm.Start(fakellm.Options{Policy: s.policy, Keep: true})
	defer srv.Close()
	r := runSpec(t, modelSpec(t, srv.URL, "bash", "fenced", "filesystem: {context: hello}")).Results[0]
	if r.Status != StatusMaxIterations || r.StopReason != StopMaxIterations || r.Answer != "The answer is 7." || !r.FinalAnswer {
		t.Fatalf("status %s stop %s answer %q error %q", r.Status, r.StopReason, r.Answer, r.Error)
	}
	checkOutputs(t, r, []string{"one\n", "two\n", "(no output)", "four\n"})
	reqs := s.requests()
	if len(reqs) != 5 {
		t.Fatalf("%d requests", len(reqs))
	}
	text := func(i int) string { m := reqs[i].Messages; return m[len(m)-1].Text() }
	if m := reqs[0].Messages; m[0].Role != "system" || !strings.Contains(m[0].Text(), "```repl") || !strings.Contains(m[1].Text(), "1 file(s), 5 bytes") || !strings.HasSuffix(m[1].Text(), "Turn 1/4: "+fencedFirstTurn) {
		t.Errorf("opening: %+v", m)
	}
	if got := text(1); got != fencedNoBlock+"\n\nTurn 2/4:" {
		t.Errorf("after no block: %q", got)
	}
	if got := text(2); got != "REPL output (block 1):\none\n\n\nREPL output (block 2):\ntwo\n\n\nTurn 3/4:" {
		t.Errorf("after two blocks: %q", got)
	}
	if got := text(4); got != "REPL output:\nfour\n\n\n"+fencedFinal {
		t.Errorf("final question: %q", got)
	}
	for i, req := range reqs {
		for j := 1; j < len(req.Messages); j++ {
			if req.Messages[j].Role == req.Messages[j-1].Role {
				t.Errorf("request %d: two %s messages in a row", i, req.Messages[j].Role)
			}
		}
	}
}

func TestModelStops(t *testing.T) {
	cases := []struct {
		name    string
		budget  int // max_tokens_per_rollout
		replies []fakellm.Reply
		faults  []fakellm.Fault
		status  string
		stop    string
		turns   int
	}{
		{"budget", 500, []fakellm.Reply{
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "echo hi")}, Usage: &fakellm.Usage{PromptTokens: 100, CompletionTokens: 50}},
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "echo never")}, Usage: &fakellm.Usage{PromptTokens: 400, CompletionTokens: 50}},
		}, nil, StatusBudget, StopBudget, 1},
		{"context length error", 0, []fakellm.Reply{
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "echo hi")}},
		}, []fakellm.Fault{0, fakellm.ContextLength}, StatusContextLength, StopContextLength, 1},
		{"length without output", 0, []fakellm.Reply{{Content: "", FinishReason: "length"}}, nil, StatusContextLength, StopContextLength, 0},
		{"answer ready", 0, []fakellm.Reply{
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "export RLM_CONTENT=done RLM_READY=1"), call("call_bash_repl", "echo never")}},
		}, nil, StatusCompleted, StopAnswerReady, 1},
		{"max iterations", 0, []fakellm.Reply{
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "echo 1")}},
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "echo 2")}},
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "echo 3")}},
			{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "echo 4")}},
			{Content: "never asked"},
		}, nil, StatusMaxIterations, StopMaxIterations, 4},
		{"too many calls in a reply", 0, []fakellm.Reply{{Null: true, ToolCalls: []fakellm.Call{
			call("call_bash_repl", "echo 1"), call("call_bash_repl", "echo 2"), call("call_bash_repl", "echo 3"),
			call("call_bash_repl", "echo 4"), call("call_bash_repl", "echo 5"), call("call_bash_repl", "echo 6"),
		}}}, nil, StatusCompleted, StopNoToolCalls, 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &script{replies: tc.replies}
			srv := fakellm.Start(fakellm.Options{Policy: s.policy})
			defer srv.Close()
			srv.Inject(tc.faults...)
			spec := modelSpec(t, srv.URL, "bash", "tools", "")
			spec.Model.MaxTokensPerRollout = tc.budget
			r := runSpec(t, spec).Results[0]
			if r.Status != tc.status || r.StopReason != tc.stop || len(r.Turns) != tc.turns {
				t.Fatalf("status %s stop %s, %d turns (error %q); want %s %s %d", r.Status, r.StopReason, len(r.Turns), r.Error, tc.status, tc.stop, tc.turns)
			}
			if tc.status == StatusContextLength || tc.status == StatusBudget {
				if r.Error != "" || r.Volatile.InfraError {
					t.Errorf("a stop of the model is not an error: %q", r.Error)
				}
			}
		})
	}
}

// TestUnreachableModelIsRetriedFromScratch: a model server that fails past
// its retries is the infrastructure's fault: the rollout says so, and
// --retries runs it again.
func TestUnreachableModelIsRetriedFromScratch(t *testing.T) {
	s := &script{replies: []fakellm.Reply{{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "touch mark; export RLM_CONTENT=ok RLM_READY=1")}}}}
	srv := fakellm.Start(fakellm.Options{Policy: s.policy})
	defer srv.Close()
	srv.Inject(fakellm.ServerError)
	spec := modelSpec(t, srv.URL, "bash", "tools", "")
	r := runSpec(t, spec).Results[0]
	if r.Status != StatusError || !r.Volatile.InfraError || r.Volatile.Attempts != 1 || !strings.Contains(r.Error, "model server unreachable") {
		t.Fatalf("status %s infra %v attempts %d error %q", r.Status, r.Volatile.InfraError, r.Volatile.Attempts, r.Error)
	}
	srv.Inject(fakellm.ServerError)
	s.seen = nil
	r = runSpec(t, spec, func(o *Options) { o.Retries = 2 }).Results[0]
	if r.Status != StatusCompleted || r.Answer != "ok" || r.Volatile.Attempts != 2 || r.Volatile.InfraError {
		t.Fatalf("status %s answer %q attempts %d error %q", r.Status, r.Answer, r.Volatile.Attempts, r.Error)
	}
	// A model's mistake is not retried.
	s.replies = []fakellm.Reply{{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", "exit 3")}}, {Content: "bye"}}
	s.seen = nil
	srv.Inject(fakellm.BadRequest)
	r = runSpec(t, spec, func(o *Options) { o.Retries = 2 }).Results[0]
	if r.Status != StatusError || r.Volatile.InfraError || r.Volatile.Attempts != 1 {
		t.Fatalf("a refused request: status %s infra %v attempts %d error %q", r.Status, r.Volatile.InfraError, r.Volatile.Attempts, r.Error)
	}
}

// TestRealSubLLM: with sub_llm.model: root, llm_batch and the REPL's own
// chat calls reach the server, each prompt a conversation with the sub
// tools; the REPL does not choose the model.
func TestRealSubLLM(t *testing.T) {
	var mu sync.Mutex
	var subs []fakellm.Request
	root := 0
	policy := func(req fakellm.Request) fakellm.Reply {
		mu.Lock()
		defer mu.Unlock()
		if req.Header.Get(DepthHeader) == "1" {
			subs = append(subs, req)
			last := req.Messages[len(req.Messages)-1]
			if last.Role == "tool" {
				return fakellm.Reply{Content: `\boxed{` + last.Text() + `}`}
			}
			if len(req.Tools) > 0 {
				b, _ := json.Marshal(map[string]string{"text": last.Text()})
				return fakellm.Reply{Null: true, ToolCalls: []fakellm.Call{{Name: "upper", Arguments: string(b)}}}
			}
			return fakellm.Reply{Content: "plain " + last.Text(), Usage: &fakellm.Usage{PromptTokens: 11, CompletionTokens: 3}}
		}
		root++
		switch root {
		case 1:
			return fakellm.Reply{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", `llm_batch "one" "two"`)}}
		case 2:
			return fakellm.Reply{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", `curl -s -H "Authorization: Bearer $RLM_SECRET" -d '{"model": "gpt-expensive", "messages": [{"role": "user", "content": "direct"}]}' "$RLM_INTERCEPTION_URL"`)}}
		}
		return fakellm.Reply{Content: "done"}
	}
	srv := fakellm.Start(fakellm.Options{Policy: policy})
	defer srv.Close()
	spec := modelSpec(t, srv.URL, "bash", "tools", `sub_tools:
  - name: upper
    parameters: {type: object, properties: {text: {type: string}}}
    run: ["/usr/bin/python3", "-S", "-c", "import json,sys; print(json.load(sys.stdin)['arguments']['text'].upper())"]`)
	spec.SubLLM.Model = schema.SubModel{Kind: "root"}
	r := runSpec(t, spec).Results[0]
	if r.Status != StatusCompleted || len(r.Turns) != 2 {
		t.Fatalf("status %s error %q turns %+v", r.Status, r.Error, r.Turns)
	}
	if !strings.Contains(r.Turns[0].Output, "ONE") || !strings.Contains(r.Turns[0].Output, "TWO") {
		t.Errorf("batch output %q", r.Turns[0].Output)
	}
	var direct map[string]any
	if err := json.Unmarshal([]byte(r.Turns[1].Output), &direct); err != nil || !strings.Contains(r.Turns[1].Output, "plain direct") {
		t.Errorf("direct call output %q (%v)", r.Turns[1].Output, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(subs) != 5 {
		t.Fatalf("%d sub requests, want 5 (2 items × 2 steps, 1 direct)", len(subs))
	}
	for _, s := range subs {
		if s.Model != "test-model" {
			t.Errorf("a sub request asked for model %q", s.Model)
		}
	}
	kinds := map[string]int{}
	for _, c := range r.Calls {
		kinds[c.Kind]++
		if c.Kind == CallSubLLM && (len(c.Requests) != 2 || c.ToolCalls != 1 || c.Reply == "" || c.Batch == nil) {
			t.Errorf("sub-LLM call %+v", c)
		}
	}
	if kinds[CallModel] != 3 || kinds[CallSubLLM] != 2 || kinds[CallChat] != 1 {
		t.Errorf("calls by kind %v", kinds)
	}
	if r.Metrics["sub_llm_call_count"] != 3 || r.Metrics["sub_llm_total_turns"] != 5 || r.Metrics["sub_llm_prompt_tokens"].(int) < 11 {
		t.Errorf("metrics %v", r.Metrics)
	}
}

// TestAPIKeyStaysOnTheHost: the key goes to the model server and nowhere
// else: not into the REPL's environment, not into a sandbox's processes,
// not into the results.
func TestAPIKeyStaysOnTheHost(t *testing.T) {
	const key = "sk-rlmrun-test-very-secret"
	t.Setenv("RLMRUN_TEST_API_KEY", key)
	probe := `env | grep -c very-secret; cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c very-secret; true`
	var mu sync.Mutex
	var auth []string
	s := &script{replies: []fakellm.Reply{{Null: true, ToolCalls: []fakellm.Call{call("call_bash_repl", probe)}}, {Content: "done"}}}
	srv := fakellm.Start(fakellm.Options{Policy: func(req fakellm.Request) fakellm.Reply {
		mu.Lock()
		auth = append(auth, req.Header.Get("Authorization"))
		mu.Unlock()
		return s.policy(req)
	}})
	defer srv.Close()
	for _, be := range []string{"local", "bwrap"} {
		t.Run(be, func(t *testing.T) {
			s.seen = nil
			spec := modelSpec(t, srv.URL, "bash", "tools", "")
			spec.Model.APIKeyEnv = "RLMRUN_TEST_API_KEY"
			mod := func(*Options) {}
			if be == "bwrap" {
				spec.Backend.Type = "sandbox"
				b, _, _ := newBwrap(t, spec)
				mod = func(o *Options) { o.Backend = b }
			}
			rep := runSpec(t, spec, mod)
			r := rep.Results[0]
			lines := strings.Fields(r.Turns[0].Output)
			if len(lines) != 2 || lines[0] != "0" {
				t.Fatalf("the REPL's environment holds the key: %q", r.Turns[0].Output)
			}
			// A sandbox's processes cannot read the host's; the local
			// backend's can read rlmrun's own (until it is confined).
			if be == "bwrap" && lines[1] != "0" {
				t.Errorf("a process in the sandbox holds the key: %q", r.Turns[0].Output)
			}
			b, err := os.ReadFile(rep.ResultsPath)
			if err != nil || strings.Contains(string(b), key) {
				t.Errorf("the results hold the key (%v)", err)
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range auth {
		if a != "Bearer "+key {
			t.Errorf("Authorization %q", a)
		}
	}
}

// TestSystemPrompt: system_prompt follows the scaffolding, or replaces it
// with scaffolding: false; where it goes depends on the format.
func TestSystemPrompt(t *testing.T) {
	cases := []struct {
		format, extra string
		check         func(first []fakellm.Message) bool
	}{
		{"tools", "system_prompt: Be terse.", func(m []fakellm.Message) bool {
			return len(m) == 1 && strings.Contains(m[0].Text(), "## The REPL") && strings.HasSuffix(m[0].Text(), "Be terse.\n</SCAFFOLDING>\n\nSay hello.")
		}},
		{"tools", "system_prompt: Be terse.\n  scaffolding: false", func(m []fakellm.Message) bool {
			return len(m) == 1 && m[0].Text() == "<SCAFFOLDING>\nBe terse.\n</SCAFFOLDING>\n\nSay hello."
		}},
		{"tools", "scaffolding: false", func(m []fakellm.Message) bool {
			return len(m) == 1 && m[0].Text() == "Say hello."
		}},
		{"ipython", "system_prompt: Be terse.\n  scaffolding: false", func(m []fakellm.Message) bool {
			return len(m) == 2 && m[0].Role == "system" && m[0].Text() == "Be terse." && m[1].Text() == "Say hello."
		}},
	}
	for _, tc := range cases {
		t.Run(tc.format+"/"+strings.ReplaceAll(tc.extra, "\n", " "), func(t *testing.T) {
			s := &script{replies: []fakellm.Reply{{Content: "bye"}}}
			srv := fakellm.Start(fakellm.Options{Policy: s.policy})
			defer srv.Close()
			spec := loadSpec(t, fmt.Sprintf("version: 1\nname: sp\nmodel:\n  base_url: %s\n  name: m\n  format: %s\n  %s\nrollouts: [{id: r, prompt: Say hello.}]\n", srv.URL, tc.format, tc.extra), nil)
			runSpec(t, spec)
			if reqs := s.requests(); len(reqs) == 0 || !tc.check(reqs[0].Messages) {
				t.Errorf("first request: %+v", reqs)
			}
		})
	}
}
