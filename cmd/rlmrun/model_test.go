package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/fakellm"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// TestRecordThenReplay: a run played by a model is recorded; the replay
// runs with no model and gives the same cells, answers and rewards.
func TestRecordThenReplay(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: fakellm.Secrets})
	defer srv.Close()
	dir := t.TempDir()
	rec := filepath.Join(dir, "pinned", "replay.yaml")
	if err := os.MkdirAll(filepath.Dir(rec), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", out, "--base-url", srv.URL, "--model", "fake-secrets", "--record", rec, "../../examples/real-model/rlm-secrets.yaml")
	if code != 0 || !strings.Contains(stdout, "record: wrote "+rec+" (1 rollout(s))") {
		t.Fatalf("record: exit %d\n%s%s", code, stdout, stderr)
	}
	recorded := readResults(t, onlyResults(t, out))[0]
	if recorded["model"] != "fake-secrets" || recorded["stop_reason"] != "answer_ready" || len(recorded["messages"].([]any)) == 0 {
		t.Errorf("recorded result: model %v, stop %v", recorded["model"], recorded["stop_reason"])
	}
	out2 := filepath.Join(dir, "out2")
	code, stdout, stderr = runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", out2, rec)
	if code != 0 {
		b, _ := os.ReadFile(rec)
		t.Fatalf("replay: exit %d\n%s%s\n%s", code, stdout, stderr, b)
	}
	replayed := readResults(t, onlyResults(t, out2))[0]
	for _, k := range []string{"status", "answer", "reward", "turns"} {
		a, _ := json.Marshal(recorded[k])
		b, _ := json.Marshal(replayed[k])
		if string(a) != string(b) {
			t.Errorf("%s: recorded %s, replayed %s", k, a, b)
		}
	}
	if replayed["model"] != nil || srv.Count() == 0 {
		t.Errorf("the replay used a model")
	}
}

func onlyResults(t *testing.T, out string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
	if len(m) != 1 {
		t.Fatalf("results files %v", m)
	}
	return m[0]
}

const threeModelRollouts = `version: 1
name: three
repl: {language: bash}
model: {name: fake, max_retries: 0}
rollouts:
  - id: a
    prompt: first
  - id: b
    prompt: flaky
  - id: c
    prompt: third
`

// flaky answers each rollout with one cell that makes its answer ready,
// and fails the rollout prompted "flaky" until told otherwise.
type flaky struct {
	mu   sync.Mutex
	fail bool
	keys []string
}

func (f *flaky) policy(req fakellm.Request) fakellm.Reply {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = append(f.keys, req.Header.Get("Authorization"))
	prompt := req.Messages[0].Text()
	if f.fail && strings.HasSuffix(prompt, "flaky") {
		return fakellm.Reply{Fault: fakellm.ServerError}
	}
	if len(req.Messages) > 1 {
		return fakellm.Reply{Content: "done"}
	}
	word := prompt[strings.LastIndex(prompt, "\n")+1:]
	b, _ := json.Marshal(map[string]string{"code": "export RLM_CONTENT=" + word + " RLM_READY=1"})
	return fakellm.Reply{Null: true, ToolCalls: []fakellm.Call{{Name: "call_bash_repl", Arguments: string(b)}}}
}

// TestResume: a run interrupted (here: filtered) and failed for the model
// server's reason is resumed in place: only what has no result, or an
// infrastructure error, runs again, under the same run id.
func TestResume(t *testing.T) {
	f := &flaky{fail: true}
	srv := fakellm.Start(fakellm.Options{Policy: f.policy})
	defer srv.Close()
	spec := writeSpec(t, threeModelRollouts)
	out := t.TempDir()
	args := []string{"run", "--agent-binary", rlmrunBin, "--base-url", srv.URL}
	if code, stdout, stderr := runCLI(t, append(args, "--out-dir", out, "--filter", "a", spec)...); code != 0 {
		t.Fatalf("first run: exit %d\n%s%s", code, stdout, stderr)
	}
	runDirs, _ := filepath.Glob(filepath.Join(out, "*"))
	if len(runDirs) != 1 {
		t.Fatalf("run dirs %v", runDirs)
	}
	runDir := runDirs[0]
	code, stdout, stderr := runCLI(t, append(args, "--resume", runDir, spec)...)
	if code != 1 || !strings.Contains(stdout, "3 rollout(s): 2 completed, 1 error") {
		t.Fatalf("second run: exit %d\n%s%s", code, stdout, stderr)
	}
	f.mu.Lock()
	f.fail = false
	f.mu.Unlock()
	copyFile := filepath.Join(t.TempDir(), "all.jsonl")
	code, stdout, stderr = runCLI(t, append(args, "--resume", runDir, "-o", copyFile, spec)...)
	if code != 0 || !strings.Contains(stdout, "3 rollout(s): 3 completed") {
		t.Fatalf("third run: exit %d\n%s%s", code, stdout, stderr)
	}
	if n := len(readResults(t, copyFile)); n != 3 {
		t.Errorf("the --output copy of a resumed run holds %d results, want the run's 3", n)
	}
	results := readResults(t, filepath.Join(runDir, "results.jsonl"))
	var ids []string
	for _, r := range results {
		ids = append(ids, r["id"].(string))
		if rid := r["volatile"].(map[string]any)["run_id"]; rid != filepath.Base(runDir) {
			t.Errorf("%s has run id %v", r["id"], rid)
		}
	}
	sort.Strings(ids)
	if strings.Join(ids, " ") != "a b b c" {
		t.Errorf("results.jsonl holds %v, want a, b (failed), b, c", ids)
	}
	code, _, stderr = runCLI(t, append(args, "--resume", runDir, spec)...)
	if code != 0 || !strings.Contains(stderr, "nothing to resume") {
		t.Errorf("fourth run: exit %d\n%s", code, stderr)
	}
	other := writeSpec(t, strings.Replace(threeModelRollouts, "name: three", "name: other", 1))
	if code, _, stderr := runCLI(t, append(args, "--resume", runDir, other)...); code != exitUsage || !strings.Contains(stderr, `a run of spec "three", not of "other"`) {
		t.Errorf("resume with another spec: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t, append(args, "--resume", t.TempDir(), spec)...); code != exitUsage || !strings.Contains(stderr, "not a run's results directory") {
		t.Errorf("resume of a random folder: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t, append(args, "--out-dir", out, "--resume", runDir, spec)...); code != exitUsage || !strings.Contains(stderr, "does not go with --out-dir") {
		t.Errorf("resume with --out-dir: exit %d\n%s", code, stderr)
	}
}

func TestModelFlags(t *testing.T) {
	f := &flaky{}
	srv := fakellm.Start(fakellm.Options{Policy: f.policy})
	defer srv.Close()
	spec := writeSpec(t, threeModelRollouts)
	mixed := writeSpec(t, threeModelRollouts+"  - id: scripted\n    turns: [{code: 'export RLM_CONTENT=s RLM_READY=1'}]\nsub_llm: {model: root}\n")
	t.Setenv("RLMRUN_TEST_KEY", "sk-from-env")
	cases := []struct {
		name   string
		args   []string
		code   int
		inOut  string
		inErr  string
		server bool
	}{
		{"no base url", []string{spec}, exitUsage, "", "model.base_url is not set (give it in the spec, or with --base-url)", false},
		{"bad base url", []string{"--base-url", "ftp://x", spec}, exitUsage, "", "--base-url needs an http(s) URL", false},
		{"scripted", []string{"--scripted", mixed}, 0, "1 rollout(s): 1 completed", "", false},
		{"scripted and a model", []string{"--scripted", "--model", "x", mixed}, exitUsage, "", "--scripted calls no model", false},
		{"scripted, none scripted", []string{"--scripted", spec}, exitUsage, "", "no selected rollout of", false},
		{"key from env", []string{"--base-url", "URL", "--api-key-env", "RLMRUN_TEST_KEY", "--filter", "a", spec}, 0, "1 completed", "; model: 0 in flight, 1 request(s), ", true},
		{"sub model without a server", []string{"--sub-model", "x", writeSpec(t, okSpec)}, exitUsage, "", "--sub-model", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.keys = nil
			f.mu.Unlock()
			args := []string{"run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir()}
			for _, a := range tc.args {
				args = append(args, strings.Replace(a, "URL", srv.URL, 1))
			}
			code, stdout, stderr := runCLI(t, args...)
			if code != tc.code || !strings.Contains(stdout, tc.inOut) || !strings.Contains(stderr, tc.inErr) {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", code, tc.code, stdout, stderr)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if tc.server != (len(f.keys) > 0) {
				t.Errorf("server asked %d times", len(f.keys))
			}
			for _, k := range f.keys {
				if k != "Bearer sk-from-env" {
					t.Errorf("Authorization %q", k)
				}
			}
		})
	}
}

// TestModelRetriesAreTold: a failing model server is retried, and the run
// says so (at most every few seconds), with the server's words escaped.
func TestModelRetriesAreTold(t *testing.T) {
	f := &flaky{}
	srv := fakellm.Start(fakellm.Options{Policy: f.policy})
	defer srv.Close()
	srv.Inject(fakellm.ServerError, fakellm.ServerError)
	spec := writeSpec(t, strings.Replace(threeModelRollouts, "max_retries: 0", "max_retries: 3", 1))
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), "--base-url", srv.URL, "-j", "1", "--filter", "a", spec)
	if code != 0 || strings.Count(stderr, "rlmrun: model request failed (attempt 1), retrying in 0s: model server: HTTP 500") != 1 || strings.Contains(stderr, "attempt 2") {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestMCPServerEndsWithTheRunner: a killed runner leaves no MCP server
// behind, and a server that cannot start stops the run before anything
// runs (exit 1).
func TestMCPServerEndsWithTheRunner(t *testing.T) {
	env, err := filepath.Abs("../../examples/rlm-secrets")
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("rlmrun-mcp-marker-%d", os.Getpid())
	spec := writeSpec(t, fmt.Sprintf(`version: 1
name: mcp-kill
base_dir: %s
mcp_servers:
  - name: puzzle
    command: ["/bin/bash", "-c", "exec -a %s /usr/bin/python3 -SE tools/puzzle_server.py"]
    tools: [decrypt_position]
rollouts:
  - id: slow
    turns: [{code: "decrypt_position a b; sleep 1000"}]
`, env, marker))
	cmd := exec.Command(rlmrunBin, "run", "--out-dir", t.TempDir(), spec)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !testbin.Within(20*time.Second, func() bool { return len(testbin.Procs(marker)) > 0 }) {
		_ = cmd.Process.Kill()
		t.Fatal("the server never started")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if !testbin.Within(10*time.Second, func() bool { return len(testbin.Procs(marker)) == 0 }) {
		t.Errorf("the MCP server outlived the runner: %v", testbin.Procs(marker))
	}

	broken := writeSpec(t, `version: 1
name: mcp-broken
mcp_servers:
  - {name: broken, command: ["/bin/false"]}
rollouts:
  - {id: r, turns: [{code: "echo ran"}]}
`)
	out := t.TempDir()
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", out, broken)
	if code != exitFailed || !strings.Contains(stderr, "mcp_servers[0]: MCP server broken: initialize:") {
		t.Errorf("exit %d\n%s%s", code, stdout, stderr)
	}
	if m, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl")); len(m) > 0 {
		if b, _ := os.ReadFile(m[0]); len(b) > 0 {
			t.Errorf("a rollout ran: %s", b)
		}
	}
}
