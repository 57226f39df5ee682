package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/fakellm"
	"github.com/rlmrun/rlmrun/internal/testbin"
	"github.com/rlmrun/rlmrun/schema"
)

// rlmrunBin is the CLI built for tests that need a real agent process.
var rlmrunBin string

func TestMain(m *testing.M) {
	testbin.Main(m, &rlmrunBin)
}

// exampleSpecs lists every spec under examples/.
func exampleSpecs(t *testing.T) []string {
	t.Helper()
	var specs []string
	for _, pat := range []string{"../../examples/*.yaml", "../../examples/*/*.yaml"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, m...)
	}
	if len(specs) == 0 {
		t.Fatal("no example specs found")
	}
	return specs
}

func TestExamplesValidate(t *testing.T) {
	for _, spec := range exampleSpecs(t) {
		code, out, errOut := runCLI(t, "validate", spec)
		if code != 0 {
			t.Errorf("validate %s: exit %d\n%s%s", spec, code, out, errOut)
		}
	}
}

// TestExamplesRun runs every example end to end: each must pass. Examples
// played by a real model get the test server's model, which solves them.
func TestExamplesRun(t *testing.T) {
	srv := fakellm.Start(fakellm.Options{Policy: fakellm.Secrets})
	defer srv.Close()
	for _, spec := range exampleSpecs(t) {
		t.Run(filepath.Base(spec), func(t *testing.T) {
			out := t.TempDir()
			args := []string{"run", "--agent-binary", rlmrunBin, "--out-dir", out}
			if s, err := schema.Load(spec); err != nil {
				t.Fatal(err)
			} else if s.Model != nil {
				args = append(args, "--base-url", srv.URL)
			}
			code, stdout, stderr := runCLI(t, append(args, spec)...)
			if code != 0 {
				t.Fatalf("run %s: exit %d\n%s%s", spec, code, stdout, stderr)
			}
			results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
			if len(results) != 1 {
				t.Fatalf("results files: %v", results)
			}
			for _, r := range readResults(t, results[0]) {
				if r["passed"] != true {
					t.Errorf("%s did not pass: %v", r["id"], r)
				}
			}
		})
	}
}

func readResults(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("bad JSONL line: %v", err)
		}
		out = append(out, r)
	}
	return out
}

// statuses reads the one results file under out: rollout id to status.
func statuses(t *testing.T, out string) map[string]string {
	t.Helper()
	results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
	if len(results) != 1 {
		t.Fatalf("results: %v", results)
	}
	got := map[string]string{}
	for _, r := range readResults(t, results[0]) {
		got[r["id"].(string)] = r["status"].(string)
	}
	return got
}

// TestInterruptedRunExitCode sends SIGTERM to a running rlmrun: it must
// cancel at once, exit with 143, keep the finished rollout's result and
// leave no process or temporary directory behind. (SIGINT: TestCtrlC.)
func TestInterruptedRunExitCode(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			spec := filepath.Join(dir, "spec.yaml")
			marker := fmt.Sprintf("rlmrun-interrupt-%d-%d", os.Getpid(), sig)
			body := fmt.Sprintf("version: 1\nname: interrupt\nrollouts:\n  - id: quick\n    turns: [{code: 'export RLM_CONTENT=1 RLM_READY=1'}]\n  - id: slow\n    turns: [{code: 'exec -a %s sleep 1000'}]\n", marker)
			if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			tmp := t.TempDir()
			out := filepath.Join(dir, "out")
			cmd := exec.Command(rlmrunBin, "run", "--concurrency", "1", "--out-dir", out, spec)
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if !testbin.Within(20*time.Second, func() bool { return len(testbin.Procs(marker)) > 0 }) {
				_ = cmd.Process.Kill()
				t.Fatalf("the slow cell never started\n%s", stderr.String())
			}
			_ = cmd.Process.Signal(sig)
			err := cmd.Wait()
			want := 128 + int(sig)
			if code := cmd.ProcessState.ExitCode(); code != want {
				t.Fatalf("exit code %d (%v), want %d\n%s", code, err, want, stderr.String())
			}
			if left := testbin.Procs(marker); len(left) > 0 {
				t.Errorf("processes left behind: %v", left)
			}
			if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
				t.Errorf("temp files left behind: %v", entries)
			}
			got := statuses(t, out)
			if got["quick"] != "completed" || got["slow"] != "error" {
				t.Errorf("statuses: %v", got)
			}
			// An interrupted rollout is one --resume runs again.
			results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
			for _, r := range readResults(t, results[0]) {
				infra, _ := r["volatile"].(map[string]any)["infra_error"].(bool)
				if infra != (r["id"] == "slow") {
					t.Errorf("%s: infra_error %v", r["id"], infra)
				}
			}
		})
	}
}
