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
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/ownerdir"
	"github.com/rlmrun/rlmrun/runner/hostcmd"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm/chatapi"
	"github.com/rlmrun/rlmrun/tunnel"
)

// Backend is what the runner needs from a way of reaching REPLs: local
// processes and sandboxes are both one.
type Backend interface {
	Name() string
	// Root is where a rollout's directory lives as its agent sees it, for
	// the run's directory runDir on this machine. The runner shows both as
	// "<run>" in transcripts.
	Root(runDir, rolloutID string) string
	// Start starts an agent for one rollout.
	Start(ctx context.Context, req backends.StartRequest) (*client.Session, *backends.Facts, error)
}

var (
	_ Backend = (*local.Executor)(nil)
	_ Backend = (*sandbox.Executor)(nil)
)

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
	// InterceptionURL, when set, is where workers call tools and sub-LLMs
	// instead of the tunnel (the spec's backend.interception_url): the
	// interception server listens there too.
	InterceptionURL string
	// Getenv reads the variables api_key_env names (default os.Getenv).
	Getenv func(string) string
	// ModelStats, when set, counts the run's model requests and tokens.
	ModelStats *chatapi.Stats
	// HTTPClient, when set, is the model clients' HTTP client.
	HTTPClient *http.Client
	// OnModelRetry, when set, hears of every model request that failed and
	// will be retried (attempt from 1, the wait before the next, why).
	OnModelRetry func(attempt int, wait time.Duration, err error)
	// Retries is how often a rollout that failed for an infrastructure
	// reason (Volatile.InfraError) runs again from scratch.
	Retries int
	// Previous are results of an earlier run this one resumes: they are
	// reported with the new ones, and the run appends to its results file.
	Previous []*Result
	// Environment, when set, says the spec came packed (an archive or a
	// registry reference): every result records it.
	Environment *Environment
}

// Environment names a packed environment a run ran: how it was given and
// its digests. It is a fact of the run (volatile), so a folder and its
// pushed artifact give the same digest of results.
type Environment struct {
	// Ref is the archive or oci:// reference as given.
	Ref string `json:"ref"`
	// Digest is the environment archive's digest.
	Digest string `json:"digest"`
	// Manifest is the registry manifest's digest the reference resolved to.
	Manifest string `json:"manifest,omitempty"`
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
	runEnv
	opts    Options
	results *resultsWriter
	// resultsPath is results.jsonl in outDir.
	resultsPath string
}

// runEnv is what every rollout of a run shares, and only reads: a rollout
// gets it, not the Runner.
type runEnv struct {
	spec            *schema.Spec
	backend         Backend
	runID           string
	runDir          string         // the run's temp root: TempDir/rlmrun-RUNID
	outDir          string         // retention dir / run id
	interceptionURL string         // Options.InterceptionURL
	server          *tunnel.Server // the run's interception server
	spawner         *hostcmd.Spawner
	models          *models
	tools           *toolSet
	environment     *Environment // Options.Environment
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
	r, err := newRunner(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer r.close()
	rep := &Report{RunID: r.opts.RunID, Dir: r.outDir, ResultsPath: r.resultsPath}
	insts := r.instances()
	results, notStarted, writeErr := r.schedule(ctx, insts)
	rep.Results = r.merged(results)
	for _, i := range notStarted {
		rep.NotStarted = append(rep.NotStarted, insts[i].ID)
	}
	rep.Interrupted = drained(ctx, r.opts.Drain)
	if err := r.results.Close(); err != nil {
		writeErr = multierror.Append(writeErr, err)
	}
	return rep, writeErr
}

// newRunner applies the options' defaults and makes what a run holds: its
// results directory, its temporary directory, its interception server and
// its results file.
func newRunner(ctx context.Context, opts Options) (*Runner, error) {
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
	r := &Runner{opts: opts, runEnv: runEnv{
		spec: spec, backend: opts.Backend, runID: opts.RunID, interceptionURL: opts.InterceptionURL,
		outDir: filepath.Join(outBase, opts.RunID), spawner: hostcmd.NewSpawner(true),
		environment: opts.Environment,
	}}
	r.resultsPath = filepath.Join(r.outDir, "results.jsonl")
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
	if err := writeOwner(r.runDir, opts.RunID); err != nil {
		r.close()
		return nil, err
	}
	if err := writeRunInfo(r.outDir, RunInfo{RunID: opts.RunID, Name: spec.Name, Spec: spec.File}); err != nil {
		r.close()
		return nil, err
	}
	needRoot := false
	for _, in := range r.instances() {
		needRoot = needRoot || !in.Rollout.Scripted
	}
	if r.tools, err = buildTools(ctx, spec, r.spawner, r.outDir); err != nil {
		r.close()
		return nil, err
	}
	if r.models, err = newModels(spec, needRoot, definitions(r.tools.root), definitions(r.tools.sub), modelOptions{getenv: opts.Getenv, stats: opts.ModelStats, http: opts.HTTPClient, onRetry: opts.OnModelRetry}); err != nil {
		r.close()
		return nil, err
	}
	r.server = tunnel.NewServer(tunnel.Limits{})
	if u := opts.InterceptionURL; u != "" {
		l, prefix, err := tunnel.ListenURL(u)
		if err != nil {
			r.close()
			return nil, err
		}
		go func() { _ = r.server.ServeURL(l, prefix) }()
	}
	if r.results, err = newResultsWriter(r.resultsPath, opts.OutputFile, len(opts.Previous) > 0); err != nil {
		r.close()
		return nil, err
	}
	// The --output copy holds the whole run: what the resumed run kept too.
	for _, res := range opts.Previous {
		if err := r.results.writeCopy(res); err != nil {
			r.close()
			return nil, err
		}
	}
	return r, nil
}

// close ends what newRunner made, the results file aside.
func (r *Runner) close() {
	if r.server != nil {
		_ = r.server.Close()
	}
	if r.tools != nil {
		r.tools.close()
	}
	if r.results != nil {
		_ = r.results.Close()
	}
	_ = os.RemoveAll(r.runDir)
}

// instances are the rollouts the run runs: every repeat, filtered.
func (r *Runner) instances() []schema.Instance {
	var insts []schema.Instance
	for _, in := range r.spec.ExpandedRollouts() {
		if r.opts.Filter == nil || r.opts.Filter(in.ID) {
			insts = append(insts, in)
		}
	}
	return insts
}

// drained reports whether the run was told to start no more rollouts.
func drained(ctx context.Context, drain <-chan struct{}) bool {
	select {
	case <-drain:
		return true
	default:
		return ctx.Err() != nil
	}
}

// schedule runs the instances, Concurrency at once, until they are done or
// the run is drained or cancelled. It returns the results (nil for those
// that did not run, in instance order), the indices of the instances an
// interruption kept from starting, and the errors of writing results.
func (r *Runner) schedule(ctx context.Context, insts []schema.Instance) ([]*Result, []int, error) {
	results := make([]*Result, len(insts))
	var notStarted []int
	sem := make(chan struct{}, r.opts.Concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var writeErr error
	for i, in := range insts {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		case <-r.opts.Drain:
		}
		if drained(ctx, r.opts.Drain) {
			for j := i; j < len(insts); j++ {
				notStarted = append(notStarted, j)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if r.opts.OnStart != nil {
				r.opts.OnStart(in.ID)
			}
			res := r.runEnv.runRollout(ctx, i, in)
			for attempt := 1; ; attempt++ {
				res.Volatile.Attempts = attempt
				if !res.Volatile.InfraError || attempt > r.opts.Retries || drained(ctx, r.opts.Drain) {
					break
				}
				// From scratch: nothing of the failed attempt stays but
				// why it failed.
				if d := res.Volatile.RetainedDir; d != "" {
					_ = os.RemoveAll(d)
				}
				failed := append(res.Volatile.Warnings, fmt.Sprintf("attempt %d failed: %s", attempt, res.Error))
				res = r.runEnv.runRollout(ctx, i, in)
				res.Volatile.Warnings = append(failed, res.Volatile.Warnings...)
			}
			results[i] = res
			if err := r.results.Write(res); err != nil {
				mu.Lock()
				writeErr = multierror.Append(writeErr, err)
				mu.Unlock()
			}
			if r.opts.OnResult != nil {
				r.opts.OnResult(res)
			}
		}()
	}
	wg.Wait()
	return results, notStarted, writeErr
}

// merged are the results in spec order: the previous run's that were not
// run again, and this run's.
func (r *Runner) merged(results []*Result) []*Result {
	byID := map[string]*Result{}
	for _, res := range r.opts.Previous {
		byID[res.ID] = res
	}
	for _, res := range results {
		if res != nil {
			byID[res.ID] = res
		}
	}
	var out []*Result
	for _, in := range r.spec.ExpandedRollouts() {
		if res, ok := byID[in.ID]; ok {
			out = append(out, res)
		}
	}
	return out
}

// RunInfo identifies a run in its results directory (run.json), for
// --resume.
type RunInfo struct {
	RunID string `json:"run_id"`
	// Name is the spec's name; Spec the file as given.
	Name string `json:"name"`
	Spec string `json:"spec"`
}

const runInfoFile = "run.json"

func writeRunInfo(dir string, info RunInfo) error {
	b, _ := json.MarshalIndent(info, "", "  ")
	if err := atomicfile.Write(filepath.Join(dir, runInfoFile), func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	}); err != nil {
		return fmt.Errorf("write run info: %w", err)
	}
	return nil
}

// ReadRunInfo reads the run.json of a run's results directory.
func ReadRunInfo(dir string) (RunInfo, error) {
	var info RunInfo
	b, err := os.ReadFile(filepath.Join(dir, runInfoFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return info, fmt.Errorf("not a run's results directory (it has no %s)", runInfoFile)
		}
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil || info.RunID == "" {
		return info, fmt.Errorf("%s is not a run's description", runInfoFile)
	}
	return info, nil
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
