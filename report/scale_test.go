package report

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/browsertest"
	"github.com/rlmrun/rlmrun/runner"
)

// typical is a rollout about as large as an rlm-secrets one in results.jsonl
// (~9 KB of JSON): a prompt, 6 cells with outputs, tool and sub-LLM calls.
func typical(i int) *runner.Result {
	r := result(fmt.Sprintf("rollout-%05d", i), fmt.Sprintf("answer %d", i%7))
	r.Reward = reward(float64(i%5) / 4)
	r.Volatile.Seconds = 0.5 + float64(i%97)/50
	cell := strings.Repeat(fmt.Sprintf("file%d.txt: 3f2c9a6e-1b7d-4c8e-9a0f-%012d\n", i, i), 8)
	r.Turns = nil
	for j := 0; j < 6; j++ {
		r.Turns = append(r.Turns, runner.Turn{Code: fmt.Sprintf("for f in *.txt; do echo \"$f: $(cat \"$f\")\"; done # %d", j), Output: cell})
	}
	for j := 0; j < 8; j++ {
		r.Calls = append(r.Calls, r.Calls[j%2])
	}
	return r
}

// TestReportOf10000Rollouts: the report of a 10,000-rollout run stays under
// 50 MB (the bound), and opens in a browser with its first rows
// rendered and no more.
func TestReportOf10000Rollouts(t *testing.T) {
	results := make([]*runner.Result, 10_000)
	for i := range results {
		results[i] = typical(i)
	}
	file := writeRun(t, results, nil)
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	resultsSize, _ := os.Stat(filepath.Join(filepath.Dir(file), "results.jsonl"))
	t.Logf("report %.1f MB for %.1f MB of results", float64(st.Size())/1e6, float64(resultsSize.Size())/1e6)
	if st.Size() >= 50<<20 {
		t.Errorf("the report is %d bytes, over 50 MB", st.Size())
	}
	ctx, _ := browsertest.Start(t, 120*time.Second)
	browsertest.Open(t, ctx, "file://"+file)
	if n := browsertest.Eval[int](t, ctx, `document.querySelectorAll('#rows tr').length`); n != 200 {
		t.Errorf("%d rows rendered, want the first 200", n)
	}
	if got := browsertest.Eval[string](t, ctx, `document.getElementById('shown').textContent`); got != "10000 rollout(s)" {
		t.Errorf("shown: %q", got)
	}
}

// BenchmarkOpenReport: the time from navigating to a 10,000-rollout report
// to its table being usable (the target: under 3 s), beside its
// floor in the same run: the same browser opening a plain page of the same
// size (the bytes alone, no script).
//
//	go test ./report -run '^$' -bench OpenReport -benchtime 5x -count 3
func BenchmarkOpenReport(b *testing.B) {
	results := make([]*runner.Result, 10_000)
	for i := range results {
		results[i] = typical(i)
	}
	file := writeRun(b, results, nil)
	st, _ := os.Stat(file)
	plain := filepath.Join(b.TempDir(), "plain.html")
	f, err := os.Create(plain)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprint(f, `<!doctype html><html><body data-ready="1"><pre>`)
	_, _ = io.CopyN(f, strings.NewReader(strings.Repeat("0123456789abcdef", int(st.Size()/16)+1)), st.Size())
	fmt.Fprint(f, `</pre></body></html>`)
	f.Close()
	ctx, _ := browsertest.Start(b, 10*time.Minute)
	for _, tc := range []struct{ name, file string }{{"report", file}, {"plain-page-floor", plain}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(st.Size())
			for i := 0; i < b.N; i++ {
				browsertest.Open(b, ctx, "file://"+tc.file+"?"+fmt.Sprint(i))
			}
		})
	}
}

// BenchmarkWriteReport: rlmrun's side, writing the 10,000-rollout report.
func BenchmarkWriteReport(b *testing.B) {
	in := &Input{Run: Run{Spec: "bench"}, Listings: map[string][]Entry{}}
	for i := 0; i < 10_000; i++ {
		in.Results = append(in.Results, typical(i))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := Write(io.Discard, in); err != nil {
			b.Fatal(err)
		}
	}
}
