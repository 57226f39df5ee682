package runner

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/fakellm"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm"
)

// thinker is a model that never writes code: every request is a model
// call and nothing else (no agent starts), so the runner's own cost per
// call shows.
func thinker(fakellm.Request) fakellm.Reply {
	return fakellm.Reply{Content: "Let me think about it a little longer.", Usage: &fakellm.Usage{PromptTokens: 100, CompletionTokens: 10}}
}

// thinkingSpec is n rollouts of the fenced format, turns turns each.
func thinkingSpec(b *testing.B, url string, n, turns, concurrency int) *schema.Spec {
	return loadSpec(b, fmt.Sprintf(`version: 1
name: thinking
repl: {max_iterations: %d}
model: {base_url: %q, name: m, format: fenced, max_retries: 0, max_concurrency: %d}
rollouts:
  - id: r
    repeat: %d
    prompt: Think.
`, turns, url, concurrency, n), nil)
}

// BenchmarkModelCallOverhead: the runner's own cost per model call, against
// the floor of the same requests sent with net/http alone (the same
// conversations, prepared beforehand). Target: overhead <= 1 ms per call.
// Run with: go test ./runner -run '^$' -bench ModelCallOverhead
func BenchmarkModelCallOverhead(b *testing.B) {
	srv := fakellm.Start(fakellm.Options{Policy: thinker})
	defer srv.Close()
	const turns = 50
	spec := thinkingSpec(b, srv.URL, 1, turns, 64)
	// The floor's requests: the conversation one rollout sends.
	first := runSpec(b, spec).Results[0]
	var bodies [][]byte
	for i, m := range first.Messages {
		if m.Role == "assistant" {
			body, _ := json.Marshal(map[string]any{"model": "m", "messages": first.Messages[:i]})
			bodies = append(bodies, body)
		}
	}
	if len(bodies) != turns+1 {
		b.Fatalf("%d requests, want %d", len(bodies), turns+1)
	}
	client := &http.Client{}
	floor := func() {
		for _, body := range bodies {
			resp, err := client.Post(srv.URL+"/chat/completions", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			var c subllm.Completion
			err = json.NewDecoder(resp.Body).Decode(&c)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || len(c.Choices) != 1 {
				b.Fatalf("floor: %v", err)
			}
		}
	}
	var runnerTime, floorTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r := runSpec(b, spec).Results[0]
		runnerTime += time.Since(t0)
		if r.Metrics["root_llm_turns"] != turns+1 {
			b.Fatalf("%v turns", r.Metrics["root_llm_turns"])
		}
		t1 := time.Now()
		floor()
		floorTime += time.Since(t1)
	}
	calls := float64(b.N * (turns + 1))
	perRunner := runnerTime.Seconds() * 1000 / calls
	perFloor := floorTime.Seconds() * 1000 / calls
	b.ReportMetric(perRunner, "runner-ms/call")
	b.ReportMetric(perFloor, "floor-ms/call")
	b.ReportMetric(perRunner-perFloor, "overhead-ms/call")
}

// BenchmarkModelRequestsInFlight1000: 1,000 rollouts, each waiting on a
// model reply at once (the server holds every request for a second). It
// reports the peak heap and goroutines of the process — the test server's
// share included — per request in flight.
// Run with: go test ./runner -run '^$' -bench ModelRequestsInFlight1000 -benchtime 1x
func BenchmarkModelRequestsInFlight1000(b *testing.B) {
	const n = 1000
	srv := fakellm.Start(fakellm.Options{Policy: thinker, Latency: time.Second})
	defer srv.Close()
	spec := thinkingSpec(b, srv.URL, n, 1, n)
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		rss0 := vmRSS()
		heap := samplePeak(func() int64 {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return int64(m.HeapInuse)
		})
		rss := samplePeak(vmRSS)
		goroutines := samplePeak(func() int64 { return int64(runtime.NumGoroutine()) })
		t0 := time.Now()
		rep := runSpec(b, spec, func(o *Options) { o.Concurrency = n })
		wall := time.Since(t0)
		peakHeap, peakRSS, peakG := heap(), rss(), goroutines()
		for _, r := range rep.Results {
			if r.Status != StatusMaxIterations {
				b.Fatalf("%s: %s %s", r.ID, r.Status, r.Error)
			}
		}
		grown := float64(peakHeap-int64(before.HeapInuse)) / (1 << 20)
		b.ReportMetric(wall.Seconds(), "wall-s")
		b.ReportMetric(grown, "peak-heap-MB")
		b.ReportMetric(grown*1024/n, "heap-KB/request")
		b.ReportMetric(float64(peakRSS-rss0)/(1<<20), "rss-growth-MB")
		b.ReportMetric(float64(peakG), "peak-goroutines")
	}
}

// BenchmarkModelScale: 200 rollouts of 10 turns against a server taking
// 50 ms per request, 64 rollouts at once. The ideal is requests × latency /
// concurrency; as the rollouts are equal, they run in ceil(200/64) = 4
// waves, so no scheduler can do better than 4/3.125 = 1.28× it. The floor,
// measured in the same run, is the same requests sent by 64 workers with
// net/http alone. Target: <= 1.3× the ideal.
// Run with: go test ./runner -run '^$' -bench ModelScale -benchtime 3x
func BenchmarkModelScale(b *testing.B) {
	const (
		n, turns, j = 200, 10, 64
		latency     = 50 * time.Millisecond
	)
	srv := fakellm.Start(fakellm.Options{Policy: thinker, Latency: latency})
	defer srv.Close()
	// turns-1 iterations and the final question: turns requests.
	spec := thinkingSpec(b, srv.URL, n, turns-1, j)
	for i := 0; i < b.N; i++ {
		before := srv.Count()
		t0 := time.Now()
		rep := runSpec(b, spec, func(o *Options) { o.Concurrency = j })
		wall := time.Since(t0)
		requests := srv.Count() - before
		if requests != n*turns || len(rep.Results) != n {
			b.Fatalf("%d requests, %d results", requests, len(rep.Results))
		}
		floor := bareWaves(b, srv.URL, n, turns, j)
		ideal := float64(requests) * latency.Seconds() / j
		b.ReportMetric(wall.Seconds(), "wall-s")
		b.ReportMetric(ideal, "ideal-s")
		b.ReportMetric(floor.Seconds(), "floor-s")
		b.ReportMetric(wall.Seconds()/ideal, "x-ideal")
		b.ReportMetric(floor.Seconds()/ideal, "floor-x-ideal")
		b.ReportMetric(wall.Seconds()/floor.Seconds(), "x-floor")
	}
}

// bareWaves sends n conversations of turns requests each, j at a time,
// with net/http alone, and returns how long it took.
func bareWaves(b *testing.B, url string, n, turns, j int) time.Duration {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"Think."}]}`)
	jobs := make(chan int, n)
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	errs := make(chan error, j)
	t0 := time.Now()
	for w := 0; w < j; w++ {
		go func() {
			for range jobs {
				for k := 0; k < turns; k++ {
					resp, err := client.Post(url+"/chat/completions", "application/json", bytes.NewReader(body))
					if err != nil {
						errs <- err
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			errs <- nil
		}()
	}
	for w := 0; w < j; w++ {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(t0)
}
