package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/subllm/chatapi"
)

// progress reports a run as it goes: on a terminal, one live line (done,
// failed, running, elapsed, ETA); otherwise one plain line per finished
// rollout; nothing when quiet.
type progress struct {
	w     io.Writer
	live  bool
	quiet bool
	total int
	start time.Time
	// models, when set, are the run's model requests and tokens.
	models *chatapi.Stats
	// lastRetry is when a model retry was last told.
	lastRetry time.Time

	mu      sync.Mutex
	done    int
	failed  int
	running int
	stop    chan struct{}
	stopped chan struct{}
}

// isTerminal reports whether w is a terminal, where a live line can be
// redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newProgress(w io.Writer, total int, quiet, live bool) *progress {
	p := &progress{w: w, live: live && !quiet, quiet: quiet, total: total, start: time.Now(), stop: make(chan struct{}), stopped: make(chan struct{})}
	if p.live {
		go p.tick()
	} else {
		close(p.stopped)
	}
	return p
}

func (p *progress) tick() {
	defer close(p.stopped)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			p.mu.Lock()
			p.draw()
			p.mu.Unlock()
		case <-p.stop:
			return
		}
	}
}

// draw writes the live line; the caller holds mu.
func (p *progress) draw() {
	elapsed := time.Since(p.start)
	eta := "?"
	if p.done > 0 {
		left := time.Duration(float64(elapsed) / float64(p.done) * float64(p.total-p.done))
		eta = left.Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "\r\033[K[%d/%d] done %d, failed %d, running %d, %s elapsed, ETA %s%s",
		p.done, p.total, p.done, p.failed, p.running, elapsed.Round(100*time.Millisecond), eta, p.modelLine())
}

// modelLine is the model requests in flight and the tokens so far.
func (p *progress) modelLine() string {
	if p.models == nil {
		return ""
	}
	return fmt.Sprintf("; model: %d in flight, %d request(s), %d tokens",
		p.models.InFlight.Load(), p.models.Requests.Load(), p.models.PromptTokens.Load()+p.models.CompletionTokens.Load())
}

func (p *progress) started(string) {
	p.mu.Lock()
	p.running++
	p.mu.Unlock()
}

func (p *progress) finished(r *runner.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running--
	p.done++
	if !r.Passed {
		p.failed++
	}
	switch {
	case p.quiet:
	case p.live:
		p.draw()
	default:
		reward := ""
		if r.Reward != nil {
			reward = fmt.Sprintf(" reward %g", *r.Reward)
		}
		verdict := ""
		if !r.Passed {
			verdict = " FAILED"
		}
		fmt.Fprintf(p.w, "[%d/%d] %s: %s%s (%.2fs)%s%s\n", p.done, p.total, safetext.Line(r.ID), r.Status, reward, r.Volatile.Seconds, verdict, p.modelLine())
	}
}

// retryEvery bounds how often model retries are told: a server that is
// down fails every rollout's requests at once.
const retryEvery = 5 * time.Second

// modelRetry tells that model requests are failing and being retried.
func (p *progress) modelRetry(attempt int, wait time.Duration, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.quiet || time.Since(p.lastRetry) < retryEvery {
		return
	}
	p.lastRetry = time.Now()
	if p.live {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "rlmrun: model request failed (attempt %d), retrying in %s: %s\n", attempt, wait.Round(100*time.Millisecond), safetext.Line(err.Error()))
	if p.live {
		p.draw()
	}
}

// close ends the live line.
func (p *progress) close() {
	close(p.stop)
	<-p.stopped
	if p.live {
		p.mu.Lock()
		p.draw()
		fmt.Fprintln(p.w)
		p.mu.Unlock()
	}
}
