package runner

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/mcptest"
	"github.com/rlmrun/rlmrun/runner/hostcmd"
	"github.com/rlmrun/rlmrun/runner/mcpserver"
)

func medianSeconds(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// BenchmarkRootToolCall measures a root-tool call from the Bash REPL to a
// trivial host tool (/bin/true) and back. Cells alternate between the call
// and an empty command; the call's cost on top of the tool process's own
// start-up is call − empty cell − start-up (target: median <= 5 ms).
func BenchmarkRootToolCall(b *testing.B) {
	var cells strings.Builder
	for i := 0; i < 100; i++ {
		cells.WriteString("      - code: noop\n      - code: \"true\"\n")
	}
	spec := loadSpec(b, `version: 1
name: bench-tool
repl: {max_iterations: 1000}
root_tools:
  - name: noop
    run: [/bin/true]
rollouts:
  - id: r
    repeat: 1
    turns:
`+cells.String(), nil)
	var call, cell []float64
	for i := 0; i < b.N; i++ {
		r := runSpec(b, spec).Results[0]
		if r.Status != StatusCompleted || len(r.Turns) != 200 {
			b.Fatalf("%s: %s", r.Status, r.Error)
		}
		for j, s := range r.Volatile.TurnSeconds {
			if j%2 == 0 {
				call = append(call, s)
			} else {
				cell = append(cell, s)
			}
		}
	}
	var start []float64
	for i := 0; i < 100; i++ {
		t0 := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		start = append(start, time.Since(t0).Seconds())
	}
	c, e, s := medianSeconds(call)*1000, medianSeconds(cell)*1000, medianSeconds(start)*1000
	b.ReportMetric(c, "call-ms")
	b.ReportMetric(e, "cell-ms")
	b.ReportMetric(s, "tool-start-ms")
	b.ReportMetric(c-e-s, "overhead-ms")
}

// BenchmarkLLMBatch100FromREPL runs llm_batch with 100 scripted prompts
// (stagger 0) from the Bash REPL; the cell's median time is reported
// (target: <= 20 ms).
func BenchmarkLLMBatch100FromREPL(b *testing.B) {
	var cells strings.Builder
	cells.WriteString("      - code: 'llm_batch \"item \"{1..100} | tail -n 1'\n")
	for i := 0; i < 20; i++ {
		cells.WriteString("      - code: 'llm_batch \"item \"{1..100} >/dev/null'\n")
	}
	spec := loadSpec(b, fmt.Sprintf(`version: 1
name: bench-batch
repl: {max_iterations: 1000}
sub_llm:
  stagger_ms: 0
  stagger_jitter_ms: 0
  replies:
    - {match: 'item (?P<n>\d+)', reply: '\boxed{ {{- .groups.n -}} }'}
rollouts:
  - id: r
    turns:
%s`, cells.String()), nil)
	var times []float64
	for i := 0; i < b.N; i++ {
		r := runSpec(b, spec).Results[0]
		if r.Status != StatusCompleted || r.Turns[0].Output != "100\n" {
			b.Fatalf("%s: %s %q", r.Status, r.Error, r.Turns[0].Output)
		}
		times = append(times, r.Volatile.TurnSeconds[1:]...)
	}
	b.ReportMetric(medianSeconds(times)*1000, "cell-ms")
}

// BenchmarkMCPToolCall measures root-tool calls to a run-scoped MCP server
// (the tests' Go server, whose own work is microseconds), made in a loop
// from the Python REPL. It reports the call as the REPL sees it, the
// runner's share (from the call's arrival at the host to its answer,
// recorded in the result's calls), and the floor: the same call made
// straight to the same kind of server with rlmrun's MCP client. overhead
// is the runner's share minus the floor (target: median <= 0.5 ms); the
// rest of the REPL's figure is the way from the REPL to the host, which
// every tool pays.
func BenchmarkMCPToolCall(b *testing.B) {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	const n = 300
	spec := loadSpec(b, fmt.Sprintf(`version: 1
name: bench-mcp
repl: {language: python}
mcp_servers:
  - {name: t, command: [%q], env: {%s: stdio}, tools: [add], prefix: t_}
rollouts:
  - id: r
    turns:
      - code: |
          import time
          t0 = time.perf_counter()
          for _ in range(%d):
              t_add(1, 2)
          print((time.perf_counter() - t0) / %d * 1000)
`, self, mcptest.EnvVar, n, n), nil)
	var repl, runner []float64
	for i := 0; i < b.N; i++ {
		r := runSpec(b, spec).Results[0]
		if r.Status != StatusCompleted || len(r.Calls) != n {
			b.Fatalf("%s: %s, %d calls", r.Status, r.Error, len(r.Calls))
		}
		ms, err := strconv.ParseFloat(strings.TrimSpace(r.Turns[0].Output), 64)
		if err != nil {
			b.Fatalf("output %q", r.Turns[0].Output)
		}
		repl = append(repl, ms)
		for _, c := range r.Calls {
			runner = append(runner, c.DurationMS)
		}
	}
	srv, err := mcpserver.Start(context.Background(), mcpserver.Config{
		Name: "floor", Command: []string{self}, Env: []string{mcptest.EnvVar + "=stdio"},
		StartupTimeout: 30 * time.Second, Spawner: hostcmd.NewSpawner(true), Client: clientInfo,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	var direct []float64
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if _, err := srv.Call(context.Background(), "add", map[string]any{"a": 1, "b": 2}, nil); err != nil {
			b.Fatal(err)
		}
		direct = append(direct, float64(time.Since(t0).Microseconds())/1000)
	}
	rm, dm := medianSeconds(runner), medianSeconds(direct)
	b.ReportMetric(medianSeconds(repl), "repl-ms/call")
	b.ReportMetric(rm, "runner-ms/call")
	b.ReportMetric(dm, "direct-ms/call")
	b.ReportMetric(rm-dm, "overhead-ms")
}
