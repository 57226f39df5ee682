package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/browsertest"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/subllm"
)

// The attacks a model can write: each, if it ran, sets window.__pwned.
var attacks = []string{
	`<script>window.__pwned=1</script>`,
	`</script><script>window.__pwned=2</script>`,
	`<img src=x onerror="window.__pwned=3">`,
	`javascript:window.__pwned=4`,
	`"><svg onload="window.__pwned=5">`,
	"\x1b]8;;javascript:window.__pwned=6\x1b\\link\x1b]8;;\x1b\\ \x1b[31mred\x1b[0m",
	`{{.Nonce}} ${window.__pwned=7}`,
}

func reward(v float64) *float64 { return &v }

// result builds a rollout's record with every part a trajectory shows,
// carrying text.
func result(id, text string) *runner.Result {
	exit := 0
	batch := 0
	return &runner.Result{
		ID: id, Rollout: id, Status: runner.StatusCompleted, Prompt: "prompt " + text,
		Answer: text, AnswerReady: true, Reward: reward(1), Passed: true,
		Rewards: []runner.RewardScore{{Name: "r", Weight: 1, Score: 1, Detail: text}},
		Expect:  []runner.Expectation{{Field: "answer", Expected: text, Got: text, Met: true}},
		Turns: []runner.Turn{
			{Code: "echo '" + text + "'", Output: text + "\n", ExitCode: &exit},
			{Code: "print(" + fmt.Sprintf("%q", text) + ")", Output: "Out[1]: " + text},
		},
		Messages: []subllm.Message{
			{Role: "user", Content: text},
			{Role: "assistant", Content: text, ToolCalls: []subllm.ToolCall{{ID: "c1", Type: "function", Function: subllm.FunctionCall{Name: "call_python_repl", Arguments: `{"code": ` + fmt.Sprintf("%q", text) + `}`}}}},
		},
		Calls: []runner.Call{
			{Kind: runner.CallTool, Tool: "decrypt", Args: []any{text}, Result: text},
			{Kind: runner.CallSubLLM, Batch: &batch, Prompt: text, Messages: []subllm.Message{{Role: "user", Content: text}, {Role: "assistant", Content: text}}, Reply: text},
		},
		Metrics: map[string]any{"repl_calls": 2, text: text},
		Volatile: runner.Volatile{
			RunID: "run-1", StartedAt: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), Seconds: 1.5,
			TurnSeconds: []float64{0.1, 0.2}, Warnings: []string{text},
		},
	}
}

func writeRun(t testing.TB, results []*runner.Result, listing map[string][]Entry) string {
	t.Helper()
	dir := t.TempDir()
	var b bytes.Buffer
	for _, r := range results {
		line, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(filepath.Join(dir, "results.jsonl"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	in.Run.Spec = "report-test"
	in.Run.Language = "bash"
	for k, v := range listing {
		in.Listings[k] = v
	}
	f, err := os.Create(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(f, in); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "report.html")
}

func TestLoadInfersTheRun(t *testing.T) {
	a, b := result("a", "x"), result("b", "y")
	b.Volatile.StartedAt = a.Volatile.StartedAt.Add(2 * time.Second)
	b.Status = runner.StatusError
	file := writeRun(t, []*runner.Result{a, b}, nil)
	in, err := Load(filepath.Join(filepath.Dir(file), "results.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := runner.Digest(in.Results)
	if in.Run.RunID != "run-1" || in.Run.Seconds != 3.5 || in.Run.Digest != want || !in.Run.StartedAt.Equal(a.Volatile.StartedAt) {
		t.Errorf("inferred run %+v", in.Run)
	}
	html, _ := os.ReadFile(file)
	for _, want := range []string{"<title>rlmrun report: report-test</title>", "Content-Security-Policy", "<svg class=\"chart\""} {
		if !bytes.Contains(html, []byte(want)) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// Nothing the model wrote is in the page as text: only inside the
	// compressed, base64 data.
	if bytes.Contains(html, []byte("window.__pwned")) {
		t.Error("model text appears in the page's markup")
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "results.jsonl"), []byte("{\"id\": \"a\"}\nnot json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "results.jsonl:2: not a result") {
		t.Errorf("a broken line: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "nothing")); err == nil {
		t.Error("a missing run loaded")
	}
}

func TestHistogram(t *testing.T) {
	svg := histogram("Rewards", []float64{0, 0.5, 0.5, 1}, "reward", 10)
	if strings.Count(svg, "<rect") != 3 || !strings.Contains(svg, "reward 0.5: 2") {
		t.Errorf("three distinct values make three bars: %s", svg)
	}
	many := make([]float64, 1000)
	for i := range many {
		many[i] = float64(i)
	}
	if svg := histogram("T", many, "seconds", 20); strings.Count(svg, "<rect") != 20 {
		t.Errorf("1000 values in 20 bins: %d bars", strings.Count(svg, "<rect"))
	}
	if svg := histogram("T", nil, "seconds", 20); !strings.Contains(svg, "no seconds") {
		t.Errorf("no values: %s", svg)
	}
}

// TestXSSInABrowser opens a report whose every model-written field holds
// an attack, opens the trajectory and every collapsed part, and checks that
// nothing ran and no element came from the data.
func TestXSSInABrowser(t *testing.T) {
	text := strings.Join(attacks, "\n")
	hostile := result("hostile", text)
	listing := map[string][]Entry{"hostile": {{Path: `<img src=x onerror="window.__pwned=8">.txt`, Size: 3}}}
	file := writeRun(t, []*runner.Result{hostile, result("calm", "nothing to see")}, listing)
	ctx, _ := browsertest.Start(t, 90*time.Second)
	browsertest.Open(t, ctx, "file://"+file)
	if n := browsertest.Eval[int](t, ctx, `document.querySelectorAll('#rows tr').length`); n != 2 {
		t.Fatalf("%d rows, want 2", n)
	}
	browsertest.Click(t, ctx, `#rows tr[data-id="hostile"]`)
	browsertest.WaitVisible(t, ctx, `#trajectory h2`)
	// Open every collapsed part and every "show more".
	browsertest.Eval[bool](t, ctx, `(() => { document.querySelectorAll('#trajectory details').forEach(d => { d.open = true; d.dispatchEvent(new Event('toggle')); }); return true; })()`)
	browsertest.Eval[bool](t, ctx, `(() => { document.querySelectorAll('#trajectory button').forEach(b => b.click()); return true; })()`)
	time.Sleep(300 * time.Millisecond)
	got := browsertest.Eval[string](t, ctx, `JSON.stringify({pwned: window.__pwned === undefined ? null : window.__pwned,
		scripts: [...document.scripts].filter(s => !(s.id === 'rlmrun-summary' || s.id === 'rlmrun-blocks' || s.nonce)).length + document.scripts.length - 3, imgs: document.images.length,
		svgs: document.querySelectorAll('#trajectory svg, #rows svg').length,
		links: [...document.querySelectorAll('a')].map(a => a.getAttribute('href')),
		text: document.getElementById('trajectory').textContent.includes('<img src=x onerror=')})`)
	var facts struct {
		Pwned   any      `json:"pwned"`
		Scripts int      `json:"scripts"`
		Imgs    int      `json:"imgs"`
		SVGs    int      `json:"svgs"`
		Links   []string `json:"links"`
		Text    bool     `json:"text"`
	}
	if err := json.Unmarshal([]byte(got), &facts); err != nil {
		t.Fatal(err)
	}
	if facts.Pwned != nil || facts.Scripts != 0 || facts.Imgs != 0 || facts.SVGs != 0 || !facts.Text {
		t.Errorf("the page ran or rendered model text: %+v", facts)
	}
	for _, l := range facts.Links {
		if l != "#" && l != "#rollouts" {
			t.Errorf("a link to %q", l)
		}
	}
	browsertest.Shot(t, ctx, "xss-trajectory.png")
}

// TestHugeOutput: a 16 MB cell output shows 50 lines, stays responsive, and
// grows a megabyte at a time on demand.
func TestHugeOutput(t *testing.T) {
	r := result("huge", "x")
	line := strings.Repeat("0123456789abcdef", 7) + "\n" // 113 bytes
	r.Turns[0].Output = strings.Repeat(line, 16<<20/len(line))
	file := writeRun(t, []*runner.Result{r}, nil)
	ctx, _ := browsertest.Start(t, 120*time.Second)
	browsertest.Open(t, ctx, "file://"+file)
	browsertest.Click(t, ctx, `#rows tr[data-id="huge"]`)
	browsertest.WaitVisible(t, ctx, `#trajectory h2`)
	lines := browsertest.Eval[int](t, ctx, `document.querySelector('#trajectory .turn pre.out').textContent.split('\n').length - 1`)
	if lines != 50 {
		t.Errorf("the collapsed output shows %d lines, want 50", lines)
	}
	label := browsertest.Eval[string](t, ctx, `document.querySelector('#trajectory .turn button').textContent`)
	if !strings.Contains(label, "show all 148470 lines") {
		t.Errorf("button %q", label)
	}
	browsertest.Click(t, ctx, `#trajectory .turn button`)
	n := browsertest.Eval[int](t, ctx, `document.querySelector('#trajectory .turn pre.out').textContent.length`)
	if want := 50*len(line) + 1<<20; n != want {
		t.Errorf("after one click %d chars shown, want the 50 lines and 1 MiB more (%d)", n, want)
	}
	if got := browsertest.Eval[int](t, ctx, `1 + 1`); got != 2 {
		t.Error("the page does not answer")
	}
}

// TestTableFilterAndSort: filters by status, result, reward, id glob and
// text; sorting by reward; rows render lazily.
func TestTableFilterAndSort(t *testing.T) {
	var results []*runner.Result
	for i := 0; i < 450; i++ {
		r := result(fmt.Sprintf("roll-%03d", i), fmt.Sprintf("answer %d", i))
		r.Reward = reward(float64(i%5) / 4)
		if i%3 == 0 {
			r.Status, r.Passed = runner.StatusMaxIterations, false
		}
		results = append(results, r)
	}
	results[123].Turns[1].Output = "a needle in the output"
	file := writeRun(t, results, nil)
	ctx, _ := browsertest.Start(t, 90*time.Second)
	browsertest.Open(t, ctx, "file://"+file)
	rows := func() int { return browsertest.Eval[int](t, ctx, `document.querySelectorAll('#rows tr').length`) }
	if n := rows(); n != 200 {
		t.Errorf("%d rows rendered at first, want 200 (lazily)", n)
	}
	browsertest.Eval[bool](t, ctx, `(() => { document.getElementById('more').scrollIntoView(); return true; })()`)
	browsertest.WaitFor(t, ctx, `document.querySelectorAll('#rows tr').length === 400`)
	// filter sets a field and waits until the table shows the result (the
	// first text search inflates every block first).
	filter := func(id, value string) {
		before := browsertest.Eval[string](t, ctx, `document.body.dataset.filtered || '0'`)
		browsertest.Eval[bool](t, ctx, fmt.Sprintf(`(() => { const e = document.getElementById(%q); e.value = %q; e.dispatchEvent(new Event('input', {bubbles: true})); return true; })()`, id, value))
		browsertest.WaitFor(t, ctx, fmt.Sprintf(`Number(document.body.dataset.filtered || 0) > %s`, before))
	}
	filter("f-text", "NEEDLE")
	if n := rows(); n != 1 || browsertest.Eval[string](t, ctx, `document.querySelector('#rows tr').dataset.id`) != "roll-123" {
		t.Errorf("text search: %d rows", n)
	}
	filter("f-text", "")
	filter("f-id", "roll-01?")
	if n := rows(); n != 10 {
		t.Errorf("id glob roll-01?: %d rows, want 10", n)
	}
	filter("f-id", "")
	filter("f-status", runner.StatusMaxIterations)
	if got := browsertest.Eval[string](t, ctx, `document.getElementById('shown').textContent`); got != "150 of 450 rollout(s) match" {
		t.Errorf("status filter: %q", got)
	}
	filter("f-status", "")
	filter("f-rmin", "1")
	if got := browsertest.Eval[string](t, ctx, `document.getElementById('shown').textContent`); got != "90 of 450 rollout(s) match" {
		t.Errorf("reward ≥ 1: %q", got)
	}
	filter("f-rmin", "")
	browsertest.Click(t, ctx, `th[data-key="reward"]`)
	browsertest.Click(t, ctx, `th[data-key="reward"]`)
	if first := browsertest.Eval[string](t, ctx, `document.querySelector('#rows tr td:nth-child(5)').textContent`); first != "1" {
		t.Errorf("sorted by reward, descending: first %q", first)
	}
	browsertest.Shot(t, ctx, "table.png")
}

// TestRunFileExtendsRunInfo: the run.json a report reads is the one --resume
// reads, with more in it.
func TestRunFileExtendsRunInfo(t *testing.T) {
	dir := t.TempDir()
	if err := WriteRun(dir, &Run{Spec: "name-x", SpecFile: "specs/x.yaml", RunID: "20261126-1", Backend: "local"}); err != nil {
		t.Fatal(err)
	}
	info, err := runner.ReadRunInfo(dir)
	if err != nil || info.RunID != "20261126-1" || info.Name != "name-x" || info.Spec != "specs/x.yaml" {
		t.Errorf("ReadRunInfo = %+v, %v", info, err)
	}
}
