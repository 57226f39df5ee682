package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/internal/mcptest"
	"github.com/rlmrun/rlmrun/internal/testbin"
	"github.com/rlmrun/rlmrun/schema"
)

// agentBin is the rlmrun binary the local backend starts as the agent.
var agentBin string

func TestMain(m *testing.M) {
	mcptest.MainIfServer() // the test binary is also the tests' MCP server
	testbin.Main(m, &agentBin)
}

// loadSpec writes body (plus files) into a fresh folder and loads it.
func loadSpec(t testing.TB, body string, files map[string]string) *schema.Spec {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "spec.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := schema.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

func runSpec(t testing.TB, spec *schema.Spec, mod ...func(*Options)) *Report {
	t.Helper()
	backend, err := local.New(local.Options{AgentPath: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Spec: spec, Backend: backend, OutDir: t.TempDir(), TempDir: t.TempDir()}
	for _, m := range mod {
		m(&opts)
	}
	rep, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func find(t testing.TB, rep *Report, id string) *Result {
	t.Helper()
	for _, r := range rep.Results {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("no result for %s", id)
	return nil
}

func outputs(r *Result) []string {
	out := make([]string, len(r.Turns))
	for i, t := range r.Turns {
		out[i] = t.Output
	}
	return out
}

func checkOutputs(t *testing.T, r *Result, want []string) {
	t.Helper()
	got := outputs(r)
	if len(got) != len(want) {
		t.Fatalf("%s: %d turns, want %d:\n%q", r.ID, len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s turn %d:\n got  %q\n want %q", r.ID, i, got[i], want[i])
		}
	}
}

func TestBashRollout(t *testing.T) {
	spec := loadSpec(t, `version: 1
name: bash-e2e
rollouts:
  - id: r
    turns:
      - code: "x=41; greet() { echo \"hi $1\"; }; mkdir -p d && cd d"
      - code: "echo $((x+1)); greet you; basename $(pwd)"
      - code: "echo out; echo err >&2; false"
      - code: "echo \"unclosed"
      - code: "cat <<EOF\nheredoc body"
      - code: "echo {{ .vars.word }} {{ .rollout }}"
      - code: "export RLM_CONTENT=\"$x\" RLM_READY=1"
      - code: "echo never runs"
    vars: {word: templated}
`, nil)
	r := runSpec(t, spec).Results[0]
	if r.Status != StatusCompleted || r.Answer != "41" || !r.AnswerReady || !r.Passed {
		t.Fatalf("result: %+v", r)
	}
	checkOutputs(t, r, []string{
		"(no output)",
		"42\nhi you\nd\n",
		"out\nerr\n",
		"/dev/fd/95: line 1: unexpected EOF while looking for matching `\"'\n",
		"heredoc body\n/dev/fd/95: line 2: warning: here-document at line 1 delimited by end-of-file (wanted `EOF')\n",
		"templated r\n",
		"(no output)",
	})
	if ec := r.Turns[2].ExitCode; ec == nil || *ec != 1 {
		t.Errorf("exit code of `false` = %v", ec)
	}
	if r.Metrics["repl_call_count"] != 7 {
		t.Errorf("metrics = %v", r.Metrics)
	}
}

func TestPythonRollout(t *testing.T) {
	spec := loadSpec(t, `version: 1
name: python-e2e
repl: {language: python}
rollouts:
  - id: r
    turns:
      - code: "x = 41\nx + 1"
      - code: "import os, sys\nprint('out  ')\nos.system('echo shell')\nprint('err', file=sys.stderr)\n[1, 2]"
      - code: "1/0"
      - code: "None"
      - code: "answer['content'] = x\nanswer['ready'] = True"
`, nil)
	r := runSpec(t, spec).Results[0]
	if r.Status != StatusCompleted || r.Answer != "41" {
		t.Fatalf("result: %+v", r)
	}
	checkOutputs(t, r, []string{
		"Out[1]: 42",
		"out  \nshell\nstderr:\nerr\nOut[2]: [1, 2]",
		"Traceback (most recent call last):\n  File \"<cell-3>\", line 1, in <module>\n    1/0\n     ~^~\nZeroDivisionError: division by zero",
		"(no output)",
		"(no output)",
	})
	// The model saw each output followed by the reference's timing line.
	timing := regexp.MustCompile(`^\[Execution time: \d+\.\d\ds\]$`)
	if len(r.Volatile.ExecutionTimes) != len(r.Turns) {
		t.Fatalf("execution times: %q", r.Volatile.ExecutionTimes)
	}
	for _, line := range r.Volatile.ExecutionTimes {
		if !timing.MatchString(line) {
			t.Errorf("execution time line %q", line)
		}
	}
}

func TestTimeoutRestartsTheWorker(t *testing.T) {
	cases := []struct{ lang, set, sleep, get, wantAfter string }{
		{"bash", "x=1", "sleep 30", "echo \"x=${x:-unset}\"", "x=unset\n"},
		{"python", "x = 1", "import time\ntime.sleep(30)", "'x' in globals()", "Out[1]: False"},
	}
	for _, tc := range cases {
		t.Run(tc.lang, func(t *testing.T) {
			spec := loadSpec(t, fmt.Sprintf(`version: 1
name: timeout
repl: {language: %s, code_execution_timeout: 1s}
rollouts:
  - id: r
    turns:
      - code: %q
      - code: %q
      - code: %q
`, tc.lang, tc.set, tc.sleep, tc.get), nil)
			start := time.Now()
			r := runSpec(t, spec).Results[0]
			if d := time.Since(start); d > 20*time.Second {
				t.Fatalf("rollout took %v", d)
			}
			out := outputs(r)
			if r.Status != StatusCompleted || len(out) != 3 {
				t.Fatalf("result: %+v", r)
			}
			if out[1] != "Code execution timed out after 1 seconds. The worker was restarted and the REPL state was reset." || r.Turns[1].Event != "timeout" {
				t.Errorf("timeout turn: %q (%s)", out[1], r.Turns[1].Event)
			}
			if out[2] != tc.wantAfter {
				t.Errorf("after restart: %q, want %q", out[2], tc.wantAfter)
			}
		})
	}
}

func TestAbortOnCodeTimeout(t *testing.T) {
	spec := loadSpec(t, `version: 1
name: abort
repl: {code_execution_timeout: 1s, abort_on_code_timeout: true}
rollouts:
  - id: r
    turns:
      - code: export RLM_CONTENT=partial
      - code: sleep 30
      - code: echo never
`, nil)
	r := runSpec(t, spec).Results[0]
	if r.Status != StatusTimeout || len(r.Turns) != 2 || r.Answer != "partial" || r.AnswerReady {
		t.Fatalf("result: %+v", r)
	}
	if r.Turns[1].Output != "Code execution timed out after 1 seconds." {
		t.Errorf("output: %q", r.Turns[1].Output)
	}
}

func TestWorkerDeathIsReportedAndRestarted(t *testing.T) {
	cases := []struct{ lang, die, want, after, wantAfter string }{
		{"bash", "echo bye; exit 3", "bye\nThe REPL process exited while running this cell (exit status 3). The worker was restarted and the REPL state was reset.", "echo alive", "alive\n"},
		{"bash", "kill -9 $$", "The REPL process exited while running this cell (killed by signal: killed). The worker was restarted and the REPL state was reset.", "echo alive", "alive\n"},
		{"python", "import os\nos._exit(3)", "The REPL process exited while running this cell (exit status 3). The worker was restarted and the REPL state was reset.", "'alive'", "Out[1]: 'alive'"},
	}
	for _, tc := range cases {
		t.Run(tc.lang+"/"+tc.die, func(t *testing.T) {
			spec := loadSpec(t, fmt.Sprintf("version: 1\nname: crash\nrepl: {language: %s}\nrollouts:\n  - id: r\n    turns:\n      - code: %q\n      - code: %q\n", tc.lang, tc.die, tc.after), nil)
			r := runSpec(t, spec).Results[0]
			checkOutputs(t, r, []string{tc.want, tc.wantAfter})
			if r.Turns[0].Event != "crashed" || r.Status != StatusCompleted {
				t.Errorf("result: %+v", r)
			}
		})
	}
}

func TestHugeAndBinaryOutput(t *testing.T) {
	spec := loadSpec(t, `version: 1
name: output
repl: {max_output_length: 20}
rollouts:
  - id: r
    turns:
      - code: "head -c 100000000 /dev/zero | tr '\\0' a"
      - code: "printf 'ok\\xff\\xfeend'"
      - code: "printf 'ü%.0s' $(seq 30)"
`, nil)
	r := runSpec(t, spec).Results[0]
	checkOutputs(t, r, []string{
		"aaaaaaaaaaaaaaaaaaaa\n... [output truncated]",
		"ok\ufffd\ufffdend",
		strings.Repeat("ü", 20) + "\n... [output truncated]",
	})
}

func TestScrubbedEnvironment(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "sk-secret")
	t.Setenv("GITHUB_TOKEN", "ghp-secret")
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			code := map[string]string{
				"bash":   "env | cut -d= -f1 | sort | tr '\\n' ' '",
				"python": "import os\nprint(' '.join(sorted(os.environ)))",
			}[lang]
			spec := loadSpec(t, fmt.Sprintf(`version: 1
name: env
repl: {language: %s}
backend:
  sandbox:
    env: {EXTRA_SETTING: "yes"}
rollouts:
  - id: r
    turns:
      - code: %q
`, lang, code), nil)
			r := runSpec(t, spec).Results[0]
			want := map[string]string{
				// TMPDIR: the confined local REPL's own, /tmp being out of reach.
				"bash":   "EXTRA_SETTING HOME LANG OLDPWD PATH PWD RLM_INTERCEPTION_URL RLM_ROOT_TOOL_NAMES RLM_ROOT_TOOL_URL RLM_SECRET RLM_TOOL_TIMEOUT_MS RLM_WORKDIR SHLVL TMPDIR _ ",
				"python": "EXTRA_SETTING HOME LANG PATH RLM_INTERCEPTION_URL RLM_ROOT_TOOL_NAMES RLM_ROOT_TOOL_URL RLM_SECRET RLM_TOOL_TIMEOUT_MS RLM_WORKDIR TMPDIR",
			}[lang]
			checkOutputs(t, r, []string{want})
		})
	}
}

func TestMaxIterationsAndNoTurns(t *testing.T) {
	spec := loadSpec(t, `version: 1
name: limits
repl: {max_iterations: 2}
rollouts:
  - id: limited
    turns: [{code: "echo 1"}, {code: "export RLM_CONTENT=two"}, {code: "echo 3"}]
  - id: idle
    turns: []
    mutations: [{write: {path: a.txt, content: x}}]
`, nil)
	rep := runSpec(t, spec)
	lim := find(t, rep, "limited")
	if lim.Status != StatusMaxIterations || len(lim.Turns) != 2 || lim.Answer != "two" || lim.AnswerReady {
		t.Errorf("limited: %+v", lim)
	}
	idle := find(t, rep, "idle")
	if idle.Status != StatusCompleted || idle.Volatile.Facts != nil || len(idle.Turns) != 0 {
		t.Errorf("a rollout without turns must not start an agent: %+v", idle)
	}
}

func TestRetention(t *testing.T) {
	body := `version: 1
name: retention
retention: {filesystem: %v}
filesystem:
  context: {"n": 1}
rollouts:
  - id: r
    turns: [{code: "echo made > made.txt; rm context.json"}]
`
	for _, keep := range []bool{true, false} {
		t.Run(fmt.Sprint(keep), func(t *testing.T) {
			spec := loadSpec(t, fmt.Sprintf(body, keep), nil)
			rep := runSpec(t, spec)
			r := rep.Results[0]
			if !keep {
				if r.Volatile.RetainedDir != "" {
					t.Fatalf("retained %s", r.Volatile.RetainedDir)
				}
				entries, _ := os.ReadDir(rep.Dir)
				if len(entries) != 2 || entries[0].Name() != "results.jsonl" || entries[1].Name() != "run.json" {
					t.Fatalf("results dir holds %v", entries)
				}
				return
			}
			got, err := os.ReadFile(filepath.Join(r.Volatile.RetainedDir, "made.txt"))
			if err != nil || string(got) != "made\n" {
				t.Fatalf("retained made.txt: %q %v", got, err)
			}
			if _, err := os.Stat(filepath.Join(r.Volatile.RetainedDir, "context.json")); !os.IsNotExist(err) {
				t.Fatalf("context.json should be gone from the retained directory: %v", err)
			}
		})
	}
}

func TestFailedRolloutDoesNotStopOthers(t *testing.T) {
	spec := loadSpec(t, `version: 1
name: mixed
repl: {language: python, python: /nonexistent/python3}
rollouts:
  - id: broken
    turns: [{code: "1"}]
  - id: idle
    turns: []
`, nil)
	rep := runSpec(t, spec)
	b := find(t, rep, "broken")
	if b.Status != StatusError || !strings.Contains(b.Error, "/nonexistent/python3") || b.Passed {
		t.Errorf("broken: %+v", b)
	}
	if i := find(t, rep, "idle"); i.Status != StatusCompleted {
		t.Errorf("idle: %+v", i)
	}
	if !rep.Failed() {
		t.Error("report should count the failure")
	}
}

// TestInterruptLeavesNothingBehind cancels a run in the middle of a cell:
// the run must end promptly, with no agent or worker process and no
// directory left.
func TestInterruptLeavesNothingBehind(t *testing.T) {
	spec := loadSpec(t, `version: 1
name: interrupt
rollouts:
  - id: r
    turns:
      - code: "sleep 1000 & sleep 1000"
`, nil)
	tmp := t.TempDir()
	backend, err := local.New(local.Options{AgentPath: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	go func() {
		// Wait until the worker runs the cell, then interrupt.
		testbin.Within(10*time.Second, func() bool { return len(sleepers()) >= 2 })
		close(started)
		cancel()
	}()
	start := time.Now()
	rep, err := Run(ctx, Options{Spec: spec, Backend: backend, OutDir: t.TempDir(), TempDir: tmp})
	<-started
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("interrupted run took %v", d)
	}
	r := rep.Results[0]
	if r.Status != StatusError || !strings.Contains(r.Error, "interrupted") || !rep.Interrupted {
		t.Errorf("result: %+v", r)
	}
	if pids := sleepers(); len(pids) > 0 {
		t.Errorf("processes left behind: %v", pids)
	}
	entries, _ := os.ReadDir(tmp)
	if len(entries) != 0 {
		t.Errorf("temp files left behind: %v", entries)
	}
}

// sleepers lists processes running `sleep 1000`.
func sleepers() []string {
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && string(b) == "sleep\x001000\x00" {
			out = append(out, d.Name())
		}
	}
	return out
}
