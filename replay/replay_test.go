package replay

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/internal/fakellm"
	"github.com/rlmrun/rlmrun/internal/testbin"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
)

var agentBin string

func TestMain(m *testing.M) { testbin.Main(m, &agentBin) }

// backend is a local executor, or a bubblewrap sandbox on a state root of
// its own.
func backend(t *testing.T, name string, spec *schema.Spec) runner.Backend {
	t.Helper()
	if name == "local" {
		b, err := local.New(local.Options{AgentPath: agentBin})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	_, err := exec.LookPath("bwrap")
	testbin.Need(t, err == nil, "bubblewrap")
	state, err := os.MkdirTemp("/tmp", "rlmrun-test-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: runner.SandboxSettings(spec.Backend.Sandbox)})
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func run(t *testing.T, spec *schema.Spec, be runner.Backend) *runner.Report {
	t.Helper()
	rep, err := runner.Run(context.Background(), runner.Options{Spec: spec, Backend: be, OutDir: t.TempDir(), TempDir: t.TempDir(), Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestModelPlaysSecretsAndReplayReproducesIt: the fake model solves
// rlm-secrets in every format, in Bash and Python, on the local backend and
// in bubblewrap, to reward 1.0; the recorded replay then gives the same
// cell outputs, answer, status and reward, with no model.
func TestModelPlaysSecretsAndReplayReproducesIt(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: fakellm.Secrets})
	t.Cleanup(srv.Close) // after the parallel subtests
	for _, be := range []string{"local", "bwrap"} {
		for _, lang := range []string{"bash", "python"} {
			for _, format := range []string{"tools", "ipython", "fenced"} {
				t.Run(be+"/"+lang+"/"+format, func(t *testing.T) {
					t.Parallel()
					spec := secretsSpec(t, lang, format)
					spec.Model.BaseURL = srv.URL
					spec.Model.Stream = format == "ipython" // both wire forms
					if be == "bwrap" {
						spec.Backend.Type = "sandbox"
						spec.Backend.Sandbox.Provider = "bwrap"
					}
					rep := run(t, spec, backend(t, be, spec))
					if len(rep.Results) != 1 {
						t.Fatalf("%d results", len(rep.Results))
					}
					got := rep.Results[0]
					if got.Status != runner.StatusCompleted || got.Reward == nil || *got.Reward != 1 || strings.TrimSpace(got.Answer) != "1" {
						t.Fatalf("the model did not solve it: status %s, stop %s, answer %q, reward %s, error %q\nturns: %+v", got.Status, got.StopReason, got.Answer, reward(got), got.Error, got.Turns)
					}
					wantStop := map[string]string{"tools": runner.StopAnswerReady, "ipython": runner.StopFinalAnswer, "fenced": runner.StopAnswerReady}[format]
					if got.StopReason != wantStop {
						t.Errorf("stop reason %s, want %s", got.StopReason, wantStop)
					}
					if got.Metrics["root_llm_turns"].(int) == 0 || got.Metrics["sub_llm_call_count"].(int) != 4 {
						t.Errorf("metrics: %v", got.Metrics)
					}

					path := filepath.Join(t.TempDir(), "sub", "replay.yaml")
					if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
						t.Fatal(err)
					}
					sum, err := Write(Options{Spec: spec, Results: rep.Results, RunID: rep.RunID, Path: path})
					if err != nil {
						t.Fatal(err)
					}
					if len(sum.Rollouts) != 1 || len(sum.Skipped) != 0 {
						t.Fatalf("summary %+v", sum)
					}
					rspec, err := schema.Load(path)
					if err != nil {
						b, _ := os.ReadFile(path)
						t.Fatalf("the replay does not load: %v\n%s", err, b)
					}
					if rspec.Model != nil || !rspec.Rollouts[0].Scripted {
						t.Fatalf("the replay still needs a model")
					}
					rspec.Backend = spec.Backend
					rep2 := run(t, rspec, backend(t, be, rspec))
					again := rep2.Results[0]
					if !again.Passed {
						b, _ := os.ReadFile(path)
						t.Errorf("the replay did not meet its expectations: %+v %s\n%s", again.Expect, again.Error, b)
					}
					if again.Status != got.Status || again.Answer != got.Answer || *again.Reward != *got.Reward {
						t.Errorf("replay: status %s answer %q reward %v; recorded %s %q %v", again.Status, again.Answer, *again.Reward, got.Status, got.Answer, *got.Reward)
					}
					if len(again.Turns) != len(got.Turns) {
						t.Fatalf("replay ran %d cells, the model %d", len(again.Turns), len(got.Turns))
					}
					for i := range got.Turns {
						if again.Turns[i].Output != got.Turns[i].Output || again.Turns[i].Code != got.Turns[i].Code {
							t.Errorf("cell %d differs:\n model  %q -> %q\n replay %q -> %q", i, got.Turns[i].Code, got.Turns[i].Output, again.Turns[i].Code, again.Turns[i].Output)
						}
					}
				})
			}
		}
	}
}

func reward(r *runner.Result) string {
	if r.Reward == nil {
		return "none"
	}
	return strconv.FormatFloat(*r.Reward, 'g', -1, 64)
}

// secretsSpec is examples/real-model/rlm-secrets.yaml in a folder of its
// own, with the REPL language and the model's format changed.
func secretsSpec(t *testing.T, lang, format string) *schema.Spec {
	t.Helper()
	b, err := os.ReadFile("../examples/real-model/rlm-secrets.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env, err := filepath.Abs("../examples/rlm-secrets")
	if err != nil {
		t.Fatal(err)
	}
	spec := writeSpec(t, t.TempDir(), strings.NewReplacer(
		"base_dir: ../rlm-secrets", "base_dir: "+env,
		"language: python", "language: "+lang,
		"format: tools ", "format: "+format+" ",
	).Replace(string(b)))
	if spec.REPL.Language != lang || spec.Model.Format != format {
		t.Fatalf("the example changed: language %s format %s", spec.REPL.Language, spec.Model.Format)
	}
	return spec
}

// hostile is a model whose every string is trouble for a YAML file, a
// template or a regular expression: the replay must still reproduce it.
func hostile(req fakellm.Request) fakellm.Reply {
	if req.Header.Get("X-RLM-Depth") == "1" {
		return fakellm.Reply{Content: `{{ .groups.x }} \boxed{a{{b}}c} ` + "\x1b[31m: - [ ]\n  trailing  \t"}
	}
	steps := 0
	for _, m := range req.Messages {
		if m.Role == "assistant" {
			steps++
		}
	}
	cells := []string{
		"echo '{{ .rollout }}' '{{\"{{\"}}' ': - [ ] # not a comment' \"trailing   \"\nprintf 'tab\\there\\n'  ",
		`llm_batch "from $(pwd): a.*b(c)[d]{2} {{ x }} \\z" 'second'`,
		"x=$RANDOM; echo ok",
	}
	if steps < len(cells) {
		b, _ := json.Marshal(map[string]string{"code": cells[steps]})
		return fakellm.Reply{Null: true, ToolCalls: []fakellm.Call{{Name: "call_bash_repl", Arguments: string(b)}}}
	}
	return fakellm.Reply{Content: "I stop here {{ .nope }}."}
}

func TestReplayOfHostileModel(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: hostile})
	defer srv.Close()
	dir := t.TempDir()
	s := writeSpec(t, dir, `version: 1
name: hostile # comments stay
repl: {language: bash, max_iterations: 2}
model: {base_url: `+srv.URL+`, name: hostile, max_retries: 0}
sub_llm: {model: root, stagger_ms: 0, stagger_jitter_ms: 0}
rollouts:
  - id: played
    repeat: 2
    prompt: go
    vars: &d {x: "1"}
  - id: played-2
    prompt: taken id
  - id: scripted
    turns: [{code: "echo {{ .vars.x }}"}]
    vars: *d
`)
	rep := run(t, s, backend(t, "local", s))
	byID := map[string]*runner.Result{}
	for _, r := range rep.Results {
		byID[r.ID] = r
	}
	path := filepath.Join(dir, "replay.yaml")
	sum, err := Write(Options{Spec: s, Results: rep.Results, RunID: rep.RunID, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(sum.Rollouts, " ") != "played-1 played-2.2 played-2" {
		t.Errorf("replayed %v", sum.Rollouts)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "# comments stay") {
		t.Errorf("the replay:\n%s", b)
	}
	rs, err := schema.Load(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	rep2 := run(t, rs, backend(t, "local", rs))
	for _, r := range rep2.Results {
		if !r.Passed {
			t.Errorf("%s did not pass: %+v %s", r.ID, r.Expect, r.Error)
		}
	}
	orig := map[string]string{"played-1": "played#1", "played-2.2": "played#2", "played-2": "played-2", "scripted": "scripted"}
	for _, r := range rep2.Results {
		o := byID[orig[r.ID]]
		if o == nil {
			t.Fatalf("no original for %s", r.ID)
		}
		if r.Status != o.Status || r.Answer != o.Answer || len(r.Turns) != len(o.Turns) {
			t.Fatalf("%s: %s %q %d turns; recorded %s %q %d", r.ID, r.Status, r.Answer, len(r.Turns), o.Status, o.Answer, len(o.Turns))
		}
		for i := range r.Turns {
			if r.Turns[i].Output != o.Turns[i].Output {
				t.Errorf("%s cell %d:\n recorded %q\n replayed %q", r.ID, i, o.Turns[i].Output, r.Turns[i].Output)
			}
		}
	}
}

func TestMatchIsExact(t *testing.T) {
	re := regexp.MustCompile(match("from <rollout>/work and <run>/x: a.*b <b> {2}\n"))
	for s, want := range map[string]bool{
		"from /tmp/r/solve/work and /tmp/r/x: a.*b <b> {2}\n": true,
		"from /tmp/r/solve/work and /tmp/r/x: aXXb <b> {2}\n": false,
		"from /w/work and /r/x: a.*b <b> {2}\nmore":           false,
		"prefix from /w/work and /r/x: a.*b <b> {2}\n":        false,
	} {
		if re.MatchString(s) != want {
			t.Errorf("%q: match %v, want %v", s, !want, want)
		}
	}
}

// TestReplayEnds: how each end of a model's rollout is replayed, and what
// is left out.
func TestReplayEnds(t *testing.T) {
	calls := func(codes ...string) fakellm.Reply {
		var cs []fakellm.Call
		for _, c := range codes {
			b, _ := json.Marshal(map[string]string{"code": c})
			cs = append(cs, fakellm.Call{Name: "call_bash_repl", Arguments: string(b)})
		}
		return fakellm.Reply{Null: true, ToolCalls: cs}
	}
	policy := func(req fakellm.Request) fakellm.Reply {
		prompt := req.Messages[0].Text()
		turn := (len(req.Messages) - 1) / 2
		switch {
		case strings.HasSuffix(prompt, "broken"):
			return fakellm.Reply{Fault: fakellm.BadRequest}
		case strings.HasSuffix(prompt, "many") && turn == 0:
			return calls("echo 1", "echo 2", "echo 3")
		case strings.HasSuffix(prompt, "many"):
			return fakellm.Reply{Content: "that is all"}
		}
		return fakellm.Reply{Content: "", FinishReason: "length"}
	}
	srv := fakellm.Start(fakellm.Options{Policy: policy})
	defer srv.Close()
	dir := t.TempDir()
	s := writeSpec(t, dir, "version: 1\nname: ends\nrepl: {language: bash, max_iterations: 2}\nmodel: {base_url: "+srv.URL+", name: m, max_retries: 0}\nrollouts:\n  - {id: many, prompt: many}\n  - {id: broken, prompt: broken}\n  - {id: full, prompt: full}\n")
	rep := run(t, s, backend(t, "local", s))
	path := filepath.Join(dir, "replay.yaml")
	sum, err := Write(Options{Spec: s, Results: rep.Results, RunID: rep.RunID, Path: path})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if strings.Join(sum.Rollouts, " ") != "many full" || len(sum.Skipped) != 1 || !strings.HasPrefix(sum.Skipped[0], "broken (ended in an error") {
		t.Errorf("summary %+v", sum)
	}
	for _, want := range []string{"max_iterations: 3 # raised from 2", "- {stop: no_tool_calls}", "- {stop: context_length}", "expect: {status: context_length}", "# Left out: broken (ended in an error"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the replay lacks %q:\n%s", want, b)
		}
	}
	rs, err := schema.Load(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	for _, r := range run(t, rs, backend(t, "local", rs)).Results {
		if !r.Passed || r.StopReason == runner.StopEndOfScript {
			t.Errorf("%s: passed %v, stop %s, %+v", r.ID, r.Passed, r.StopReason, r.Expect)
		}
	}
}

// TestReplayFencedFinalAnswer: the answer a fenced model gives in words
// when its turns run out is replayed as a stop with that answer.
func TestReplayFencedFinalAnswer(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: func(req fakellm.Request) fakellm.Reply {
		last := req.Messages[len(req.Messages)-1].Text()
		if strings.Contains(last, "You have used all your turns") {
			return fakellm.Reply{Content: "forty-two {{ .vars }}"}
		}
		return fakellm.Reply{Content: "```repl\necho thinking\n```"}
	}})
	defer srv.Close()
	dir := t.TempDir()
	s := writeSpec(t, dir, "version: 1\nname: words\nrepl: {max_iterations: 2}\nmodel: {base_url: "+srv.URL+", name: m, format: fenced}\nrollouts:\n  - {id: w, prompt: answer}\n")
	r := run(t, s, backend(t, "local", s)).Results[0]
	if r.Status != runner.StatusMaxIterations || r.Answer != "forty-two {{ .vars }}" || !r.FinalAnswer {
		t.Fatalf("status %s answer %q", r.Status, r.Answer)
	}
	path := filepath.Join(dir, "replay.yaml")
	if _, err := Write(Options{Spec: s, Results: []*runner.Result{r}, Path: path}); err != nil {
		t.Fatal(err)
	}
	rs, err := schema.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	again := run(t, rs, backend(t, "local", rs)).Results[0]
	if again.Status != r.Status || again.Answer != r.Answer || !again.Passed || len(again.Turns) != 2 {
		b, _ := os.ReadFile(path)
		t.Errorf("replay: status %s answer %q passed %v\n%s", again.Status, again.Answer, again.Passed, b)
	}
}

// writeSpec writes body as dir/spec.yaml and loads it.
func writeSpec(t *testing.T, dir, body string) *schema.Spec {
	t.Helper()
	path := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := schema.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}
