package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func goldenResults() []*Result {
	reward := 1.0
	return []*Result{
		{ID: "b", Rollout: "b", Status: StatusCompleted, Answer: "42", Reward: &reward, Passed: true,
			Turns:    []Turn{{Code: "echo", Output: strings.Repeat("x", 500) + "tail"}},
			Volatile: Volatile{RunID: "run-1", Seconds: 1.5, StartedAt: time.Unix(1, 0)}},
		{ID: "a", Rollout: "a", Status: StatusCompleted, Passed: true, Turns: []Turn{}},
	}
}

func TestDigestIgnoresVolatileAndOrder(t *testing.T) {
	rs := goldenResults()
	d1, err := Digest(rs)
	if err != nil {
		t.Fatal(err)
	}
	other := goldenResults()
	other[0], other[1] = other[1], other[0]
	other[1].Volatile = Volatile{RunID: "run-2", Seconds: 9, Metrics: map[string]any{"x": 1}}
	if d2, _ := Digest(other); d2 != d1 {
		t.Errorf("volatile fields or result order changed the digest: %s %s", d1, d2)
	}
	other[1].Answer = "43"
	if d3, _ := Digest(other); d3 == d1 {
		t.Error("a changed answer kept the digest")
	}
	lines, _ := GoldenLines(rs)
	if strings.Contains(string(lines), "volatile") || strings.Count(string(lines), "\n") != 2 {
		t.Errorf("golden lines: %s", lines)
	}
	if first := strings.SplitN(string(lines), "\n", 2)[0]; !strings.Contains(first, `"id":"a"`) {
		t.Errorf("golden lines are not sorted by id: %s", first)
	}
}

func TestCompareGolden(t *testing.T) {
	golden := filepath.Join(t.TempDir(), "g.golden")
	if err := WriteGolden(golden, goldenResults()); err != nil {
		t.Fatal(err)
	}
	if diffs, err := CompareGolden(golden, goldenResults()); err != nil || len(diffs) != 0 {
		t.Fatalf("same results: %v %v", diffs, err)
	}

	changed := goldenResults()
	changed[0].Answer = "41"
	changed[0].Turns[0].Output = strings.Repeat("x", 500) + "TAIL"
	changed[0].Turns = append(changed[0].Turns, Turn{Code: "extra"})
	changed = append(changed[:1], &Result{ID: "c", Rollout: "c", Status: StatusError, Turns: []Turn{}})
	diffs, err := CompareGolden(golden, changed)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range diffs {
		got = append(got, d.String())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"a: missing from this run",
		"b: answer:\n    expected \"42\"\n    got      \"41\"",
		// A long output is shown around its first difference, not whole.
		"b: turns[0].output:\n    expected …\"" + strings.Repeat("x", 60) + "tail\"\n    got      …\"" + strings.Repeat("x", 60) + "TAIL\"",
		"b: turns[1]:\n    expected (nothing)\n    got      {\"code\":\"extra\"",
		"c: not in the golden file",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("diffs lack %q:\n%s", want, all)
		}
	}
	if len(diffs) != 5 {
		t.Errorf("%d diffs, want 5:\n%s", len(diffs), all)
	}

	if err := os.WriteFile(golden, []byte("{\"id\":\"a\"}\nnot json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := CompareGolden(golden, changed); err == nil || !strings.Contains(err.Error(), "g.golden: line 2") {
		t.Errorf("a corrupt golden file: %v", err)
	}
}
