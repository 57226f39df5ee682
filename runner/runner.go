// Package runner plans a spec's rollouts, runs them concurrently and owns
// each rollout's life: staging, deferred start of the agent, turns, answer,
// sync-back, rewards, retention and results.
package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/internal/ownerdir"
	"github.com/rlmrun/rlmrun/runner/hostcmd"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/tunnel"
)

// Backend starts agents; local processes and sandboxes both are one.
type Backend interface {
	Name() string
	Start(ctx context.Context, req backends.StartRequest) (*client.Session, *backends.Facts, error)
}

// Options configure a run.
type Options struct {
	Spec    *schema.Spec
	Backend Backend
	// RunID names the run; generated when empty.
	RunID string
	// OutDir replaces the spec's retention.dir.
	OutDir string
	// OutputFile, when set, also receives the JSONL results.
	OutputFile string
	// Concurrency is how many rollouts run at once (default: CPU count).
	Concurrency int
	// TempDir holds the run's working files (default: os.TempDir()).
	TempDir string
	// Filter selects rollouts by id (nil: all).
	Filter func(id string) bool
	// OnResult is called as each rollout finishes.
	OnResult func(*Result)
	// OnStart is called as each rollout starts.
	OnStart func(id string)
	// Drain, once closed, stops starting rollouts; running ones finish.
	// Cancelling Run's context cancels the running ones too.
	Drain <-chan struct{}
}

// Report is the outcome of a run.
type Report struct {
	RunID       string
	Dir         string // retention dir / run id
	ResultsPath string
	Results     []*Result // in spec order
	// NotStarted are the ids of the rollouts an interruption kept from
	// starting, in spec order.
	NotStarted  []string
	Interrupted bool
}

// Failed reports whether any rollout errored or missed an expectation.
func (r *Report) Failed() bool {
	for _, res := range r.Results {
		if !res.Passed {
			return true
		}
	}
	return false
}

// Runner runs one spec.
type Runner struct {
	opts    Options
	spec    *schema.Spec
	server  *tunnel.Server // the run's interception server
	runDir  string         // the run's temp root: TempDir/rlmrun-RUNID
	outDir  string         // retention dir / run id
	results *resultsWriter
	spawner *hostcmd.Spawner // the run's host commands: tools and rewards
}

// NewRunID returns a fresh run id: time, then randomness.
func NewRunID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// Run runs every rollout of the spec and returns what happened. A rollout
// that fails is recorded and the others go on; the error is for problems
// that stop the run itself (an unwritable results file, ...). When ctx ends,
// no new rollout starts, running ones are cancelled, and what finished is kept.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.Spec == nil || opts.Backend == nil {
		return nil, errors.New("runner: spec and backend are required")
	}
	if opts.RunID == "" {
		opts.RunID = NewRunID()
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = runtime.NumCPU()
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	spec := opts.Spec
	outBase := opts.OutDir
	if outBase == "" {
		outBase = spec.Retention.Dir
		if !filepath.IsAbs(outBase) {
			outBase = filepath.Join(spec.Dir, outBase)
		}
	}
	r := &Runner{opts: opts, spec: spec, outDir: filepath.Join(outBase, opts.RunID), spawner: hostcmd.NewSpawner(true)}
	if err := os.MkdirAll(r.outDir, 0o755); err != nil {
		return nil, fmt.Errorf("create results directory: %w", err)
	}
	tmp, err := filepath.Abs(opts.TempDir)
	if err != nil {
		return nil, err
	}
	r.runDir = filepath.Join(tmp, "rlmrun-"+opts.RunID)
	if err := os.Mkdir(r.runDir, 0o711); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	defer os.RemoveAll(r.runDir)
	if err := writeOwner(r.runDir, opts.RunID); err != nil {
		return nil, err
	}
	r.server = tunnel.NewServer(tunnel.Limits{})
	defer r.server.Close()
	if u := spec.Backend.InterceptionURL; u != "" && spec.Backend.Type == "sandbox" {
		l, prefix, err := tunnel.ListenURL(u)
		if err != nil {
			return nil, err
		}
		go func() { _ = r.server.ServeURL(l, prefix) }()
	}
	rep := &Report{RunID: opts.RunID, Dir: r.outDir, ResultsPath: filepath.Join(r.outDir, "results.jsonl")}
	r.results, err = newResultsWriter(rep.ResultsPath, opts.OutputFile)
	if err != nil {
		return nil, err
	}
	defer r.results.Close()

	var insts []schema.Instance
	for _, in := range spec.ExpandedRollouts() {
		if opts.Filter == nil || opts.Filter(in.ID) {
			insts = append(insts, in)
		}
	}
	results := make([]*Result, len(insts))
	sem := make(chan struct{}, opts.Concurrency)
	var wg sync.WaitGroup
	var writeErr error
	var mu sync.Mutex
	drained := func() bool {
		select {
		case <-opts.Drain:
			return true
		default:
			return ctx.Err() != nil
		}
	}
	notStarted := func(from int) {
		for _, in := range insts[from:] {
			rep.NotStarted = append(rep.NotStarted, in.ID)
		}
	}
loop:
	for i, in := range insts {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			notStarted(i)
			break loop
		case <-opts.Drain:
			notStarted(i)
			break loop
		}
		if drained() {
			<-sem
			notStarted(i)
			break
		}
		wg.Add(1)
		go func(i int, in schema.Instance) {
			defer wg.Done()
			defer func() { <-sem }()
			if opts.OnStart != nil {
				opts.OnStart(in.ID)
			}
			res := r.runRollout(ctx, i, in)
			results[i] = res
			if err := r.results.Write(res); err != nil {
				mu.Lock()
				writeErr = multierror.Append(writeErr, err)
				mu.Unlock()
			}
			if opts.OnResult != nil {
				opts.OnResult(res)
			}
		}(i, in)
	}
	wg.Wait()
	for _, res := range results {
		if res != nil {
			rep.Results = append(rep.Results, res)
		}
	}
	rep.Interrupted = drained()
	if err := r.results.Close(); err != nil {
		writeErr = multierror.Append(writeErr, err)
	}
	return rep, writeErr
}

// owner records which process owns a run directory, so leftovers of a
// killed run can be told apart from a live run's (a pid alone may be reused:
// its start time is kept too).
type owner struct {
	RunID   string    `json:"run_id"`
	PID     int       `json:"pid"`
	Start   string    `json:"start"`
	Started time.Time `json:"started"`
}

func writeOwner(dir, runID string) error {
	start, _ := procs.StartTime(os.Getpid())
	b, _ := json.Marshal(owner{RunID: runID, PID: os.Getpid(), Start: start, Started: time.Now().UTC()})
	if err := os.WriteFile(filepath.Join(dir, "owner.json"), b, 0o644); err != nil {
		return fmt.Errorf("write run owner: %w", err)
	}
	return nil
}

// StaleRunDirs lists the run directories under tmp whose owner is gone: a
// run that was killed before it could remove them.
func StaleRunDirs(tmp, runID string) []string {
	matches, _ := filepath.Glob(filepath.Join(tmp, "rlmrun-*", "owner.json"))
	var out []string
	for _, m := range matches {
		// Only run directories this user made: /tmp is everyone's, and a
		// planted rlmrun-* directory (or a link to one) is not ours to remove.
		if ownerdir.Check(filepath.Dir(m)) != nil {
			continue
		}
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		var o owner
		if json.Unmarshal(b, &o) != nil || (runID != "" && o.RunID != runID) {
			continue
		}
		if procs.Alive(o.PID, o.Start) {
			continue
		}
		out = append(out, filepath.Dir(m))
	}
	return out
}
