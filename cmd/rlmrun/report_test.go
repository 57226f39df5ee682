package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/browsertest"
)

// TestReportOfRLMSecrets runs the rlm-secrets example with --report and
// opens the report in chromium: every rollout is listed, filtering works, a
// trajectory shows its cells and its sub-LLM calls. Screenshots of the run
// page and of a trajectory are kept as test artifacts.
func TestReportOfRLMSecrets(t *testing.T) {
	out := t.TempDir()
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", out, "--report", "-q", secrets)
	if code != 0 {
		t.Fatalf("run: exit %d\n%s%s", code, stdout, stderr)
	}
	reports, _ := filepath.Glob(filepath.Join(out, "*", "report.html"))
	if len(reports) != 1 || !strings.Contains(stdout, "report: "+reports[0]) {
		t.Fatalf("reports %v; output:\n%s", reports, stdout)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(reports[0]), "run.json")); err != nil {
		t.Errorf("no run.json: %v", err)
	}
	// rlmrun report makes the same page from the run's folder.
	again := filepath.Join(t.TempDir(), "again.html")
	if code, stdout, stderr := runCLI(t, "report", "-o", again, filepath.Dir(reports[0])); code != 0 || !strings.Contains(stdout, "wrote "+again) {
		t.Errorf("rlmrun report: exit %d\n%s%s", code, stdout, stderr)
	}
	ctx, _ := browsertest.Start(t, 90*time.Second)
	browsertest.Open(t, ctx, "file://"+reports[0])
	page := browsertest.Eval[string](t, ctx, `document.querySelector('header').textContent + document.getElementById('run-page').textContent`)
	for _, want := range []string{"rlm-secrets-bash", "local", "digest", "sha256:"} {
		if !strings.Contains(page, want) {
			t.Errorf("the run page lacks %q", want)
		}
	}
	ids := browsertest.Eval[[]string](t, ctx, `[...document.querySelectorAll('#rows tr')].map(r => r.dataset.id)`)
	if strings.Join(ids, ",") != "solve,mistakes" {
		t.Errorf("rows %v, want solve,mistakes", ids)
	}
	browsertest.Shot(t, ctx, "run-page.png")
	browsertest.Eval[bool](t, ctx, `(() => { const e = document.getElementById('f-id'); e.value = 'mis*'; e.dispatchEvent(new Event('input', {bubbles: true})); return true; })()`)
	browsertest.WaitFor(t, ctx, `document.querySelectorAll('#rows tr').length === 1`)
	browsertest.Eval[bool](t, ctx, `(() => { const e = document.getElementById('f-id'); e.value = ''; e.dispatchEvent(new Event('input', {bubbles: true})); return true; })()`)
	browsertest.WaitFor(t, ctx, `document.querySelectorAll('#rows tr').length === 2`)
	browsertest.Click(t, ctx, `#rows tr[data-id="solve"]`)
	browsertest.WaitVisible(t, ctx, `#trajectory h2`)
	traj := browsertest.Eval[string](t, ctx, `document.getElementById('trajectory').textContent`)
	for _, want := range []string{"Turn 1", "for f in *.txt", "llm_batch", "sub_llm", "decrypt_position", "correct_position", "rsqashub.txt"} {
		if !strings.Contains(traj, want) {
			t.Errorf("the trajectory lacks %q", want)
		}
	}
	// A sub-LLM conversation opens with its prompt and reply.
	browsertest.Eval[bool](t, ctx, `(() => { const d = [...document.querySelectorAll('#trajectory details')].find(d => d.querySelector('summary').textContent.includes('sub_llm')); d.open = true; return true; })()`)
	browsertest.WaitFor(t, ctx, `[...document.querySelectorAll('#trajectory details[open] .role')].some(e => e.textContent === 'reply')`)
	browsertest.Shot(t, ctx, "trajectory.png")
}

// TestReportShowsTheGoldenComparison: a run compared with a golden file
// that differs shows the differences on its run page (escaped: they quote
// model output).
func TestReportShowsTheGoldenComparison(t *testing.T) {
	spec := "../../examples/hello-bash.yaml"
	gold := filepath.Join(t.TempDir(), "hello.golden")
	if code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), "-q", "--golden", gold, "--update-golden", spec); code != 0 {
		t.Fatalf("update golden: exit %d\n%s%s", code, stdout, stderr)
	}
	b, err := os.ReadFile(gold)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gold, []byte(strings.Replace(string(b), `"answer":"21"`, `"answer":"<b>22</b>"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", out, "-q", "--golden", gold, "--report", spec)
	if code != 1 || !strings.Contains(stdout, "difference(s)") {
		t.Fatalf("exit %d, want 1 with differences\n%s%s", code, stdout, stderr)
	}
	reports, _ := filepath.Glob(filepath.Join(out, "*", "report.html"))
	if len(reports) != 1 {
		t.Fatalf("reports: %v", reports)
	}
	html, _ := os.ReadFile(reports[0])
	if !strings.Contains(string(html), "difference(s)") || !strings.Contains(string(html), "&lt;b&gt;22&lt;/b&gt;") || strings.Contains(string(html), "<b>22</b>") {
		t.Errorf("the report's golden section is missing or unescaped")
	}
}

func TestReportNeverOverwritesItsInput(t *testing.T) {
	out := t.TempDir()
	if code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", out, "-q", "../../examples/hello-bash.yaml"); code != 0 {
		t.Fatalf("run: exit %d\n%s%s", code, stdout, stderr)
	}
	results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
	before, _ := os.ReadFile(results[0])
	for _, target := range []string{results[0], filepath.Join(filepath.Dir(results[0]), "run.json")} {
		code, _, stderr := runCLI(t, "report", "-o", target, filepath.Dir(results[0]))
		if code != 2 || !strings.Contains(stderr, "which the report reads") {
			t.Errorf("report -o %s: exit %d %s", target, code, stderr)
		}
	}
	if after, _ := os.ReadFile(results[0]); string(after) != string(before) {
		t.Error("the results changed")
	}
}
