package runner

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/schema"
)

// machineCPU is the CPU time every process of the machine has used (user
// and system, from /proc/stat). Sandboxed processes live in PID namespaces
// whose reaping does not reach this process's rusage, so the split is taken
// from the whole machine, which the benchmark has to itself.
func machineCPU(b *testing.B) time.Duration {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(fields) < 9 || fields[0] != "cpu" {
		b.Fatalf("/proc/stat: %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		ticks += n
	}
	// USER_HZ is 100 on every Linux ABI Go supports.
	return time.Duration(ticks) * 10 * time.Millisecond
}

// selfCPU is this process's own CPU time: the runner.
func selfCPU() time.Duration {
	var s syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &s)
	tv := func(t syscall.Timeval) time.Duration {
		return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
	}
	return tv(s.Utime) + tv(s.Stime)
}

// BenchmarkScaleRLMSecrets runs the rlm-secrets Bash solution many times
// (RLMRUN_SCALE_N, default 500) at concurrency 8, with its tools as
// commands (a process per call) and as MCP servers (one process for the
// run), on the local backend and in bubblewrap, and splits the time: CPU of
// the host tools' processes, of the runner itself, and of everything else
// (agents, shells, the commands the cells run, MCP servers). Targets with
// MCP: 500 rollouts in <= 25 s local, <= 30 s bwrap.
// Run with: go test ./runner -run '^$' -bench 'ScaleRLMSecrets/mcp' -benchtime 1x
func BenchmarkScaleRLMSecrets(b *testing.B) {
	n := 500
	if v, err := strconv.Atoi(os.Getenv("RLMRUN_SCALE_N")); err == nil && v > 0 {
		n = v
	}
	for _, tools := range []string{"commands", "mcp"} {
		file := map[string]string{"commands": "../examples/rlm-secrets/bash.yaml", "mcp": "../examples/rlm-secrets-mcp/bash.yaml"}[tools]
		for _, be := range []string{"local", "bwrap"} {
			b.Run(tools+"/"+be, func(b *testing.B) {
				spec, err := schema.Load(file)
				if err != nil {
					b.Fatal(err)
				}
				spec.Rollouts = spec.Rollouts[:1] // solve
				spec.Rollouts[0].Repeat = n
				var backend Backend
				if be == "local" {
					backend, err = local.New(local.Options{AgentPath: agentBin})
				} else {
					spec.Backend.Type = "sandbox"
					backend, _, _ = newBwrap(b, spec)
				}
				if err != nil {
					b.Fatal(err)
				}
				for i := 0; i < b.N; i++ {
					machine0, self0 := machineCPU(b), selfCPU()
					t0 := time.Now()
					rep := runSpec(b, spec, func(o *Options) { o.Backend = backend; o.Concurrency = 8 })
					wall := time.Since(t0)
					machine1, self1 := machineCPU(b), selfCPU()
					toolCPU, toolProcs := 0.0, 0
					for _, r := range rep.Results {
						if !r.Passed {
							b.Fatalf("%s: %s %s", r.ID, r.Status, r.Error)
						}
						toolCPU += r.Volatile.Metrics["host_tool_cpu_seconds"].(float64)
						toolProcs += r.Volatile.Metrics["host_tool_processes"].(int)
					}
					total := (machine1 - machine0).Seconds()
					runner := (self1 - self0).Seconds()
					b.ReportMetric(wall.Seconds(), "wall-s")
					b.ReportMetric(total, "cpu-s")
					b.ReportMetric(toolCPU, "tool-cpu-s")
					b.ReportMetric(float64(toolProcs), "tool-procs")
					if toolProcs > 0 {
						b.ReportMetric(toolCPU/float64(toolProcs)*1000, "tool-cpu-ms/call")
					}
					b.ReportMetric(runner, "runner-cpu-s")
					b.ReportMetric(total-toolCPU-runner, "rest-cpu-s")
				}
			})
		}
	}
}

// BenchmarkRunnerMemory64 runs 64 rollouts at once, each holding a cell
// open, and reports the runner's peak resident memory (workers excluded:
// they are other processes). Target: <= 100 MB.
func BenchmarkRunnerMemory64(b *testing.B) {
	spec := loadSpec(b, `version: 1
name: memory
sub_llm: {stagger_ms: 0, stagger_jitter_ms: 0, replies: [{match: ".", reply: '\boxed{ok}'}]}
rollouts:
  - id: r
    repeat: 64
    turns:
      - code: "llm_batch a b c >/dev/null; sleep 3"
      - code: "export RLM_CONTENT=done RLM_READY=1"
`, nil)
	for i := 0; i < b.N; i++ {
		peak := samplePeak(vmRSS)
		rep := runSpec(b, spec, func(o *Options) { o.Concurrency = 64 })
		rss := peak()
		if len(rep.Results) != 64 || rep.Failed() {
			b.Fatalf("%d results, failed %v", len(rep.Results), rep.Failed())
		}
		b.ReportMetric(float64(rss)/(1<<20), "peak-rss-MB")
	}
}

// samplePeak samples f every 20 ms until the function it returns is
// called, which returns the largest value seen.
func samplePeak(f func() int64) func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if v := f(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-t.C:
			case <-stop:
				return
			}
		}
	}()
	return func() int64 {
		close(stop)
		<-done
		return peak.Load()
	}
}

// vmRSS is this process's resident memory in bytes.
func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}
