package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/report"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm/chatapi"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "validate a spec and run its rollouts",
		ArgsUsage: "SPEC",
		UsageText: `rlmrun run [flags] SPEC|ENV.tar.gz|oci://REF

Runs every rollout of SPEC and writes one JSON object per rollout to
RETENTION_DIR/RUN_ID/results.jsonl (and --output FILE), then prints a summary
and the digest of the deterministic results (equal across runs and backends
for the same spec). Exits 0 when every rollout ran and met its expectations
(and matched --golden), 1 when one did not, 2 when the spec or a flag is
invalid, 130 when interrupted (143 on SIGTERM; Ctrl-C once: no new rollouts, running ones
finish; twice: they are cancelled; everything is cleaned up either way).

EXAMPLES:
   rlmrun run examples/hello-bash.yaml
   rlmrun run --concurrency 8 --junit report.xml examples/rlm-secrets/bash.yaml
   rlmrun run --backend sandbox --provider docker --image rlmrun-test:latest examples/hello-bash.yaml
   rlmrun run --filter 'solve*' --golden testdata/secrets.golden examples/rlm-secrets/bash.yaml
   rlmrun run --dry-run examples/hello-bash.yaml
   rlmrun run --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen3-8B --record replay.yaml examples/real-model/rlm-secrets.yaml
   rlmrun run --resume rlmrun-out/20261126-101500-a1b2c3 --retries 2 examples/real-model/rlm-secrets.yaml
   rlmrun run env.tar.gz                              an archive made by rlmrun pack
   rlmrun run --trust oci://ghcr.io/org/envs/rlm-secrets:1.2.0
   rlmrun examples/hello-bash.yaml`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "concurrency", Aliases: []string{"j"}, Usage: "rollouts run at once (default: CPU count)"},
			&cli.StringSliceFlag{Name: "filter", Usage: "run only rollouts whose id matches `GLOB` (repeatable; ids of repeats are id#1, id#2, ...)"},
			&cli.StringFlag{Name: "backend", Usage: "override the spec's backend: local or sandbox"},
			&cli.StringFlag{Name: "provider", Usage: "override the sandbox provider: bwrap, docker or kubernetes (implies --backend sandbox)"},
			&cli.StringFlag{Name: "image", Usage: "override the docker image"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "also write the JSONL results to `FILE`"},
			&cli.StringFlag{Name: "out-dir", Usage: "write results and retained directories under `DIR` instead of the spec's retention.dir"},
			&cli.StringFlag{Name: "golden", Usage: "compare the deterministic results with `FILE` (written by --update-golden)"},
			&cli.BoolFlag{Name: "update-golden", Usage: "write the deterministic results to the --golden file"},
			&cli.StringFlag{Name: "junit", Usage: "write a JUnit XML report to `FILE`"},
			&cli.BoolFlag{Name: "report", Usage: "write report.html (one self-contained file to open in a browser) next to results.jsonl"},
			&cli.BoolFlag{Name: "json", Usage: "print a machine-readable summary on stdout (the table goes to stderr)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress and no table: the final line and problems only"},
			&cli.BoolFlag{Name: "dry-run", Usage: "validate and print the plan (rollouts, backend, tools) without running"},
			&cli.StringFlag{Name: "base-url", Usage: "the root model's OpenAI-compatible API root `URL`, e.g. http://127.0.0.1:8000/v1 (overrides model.base_url)"},
			&cli.StringFlag{Name: "model", Usage: "the root model's `NAME` on its server (overrides model.name; the sub-LLM's too with sub_llm.model: root)"},
			&cli.StringFlag{Name: "sub-model", Usage: "the sub-LLM's model `NAME` (on the root model's server, unless sub_llm.model names a server of its own)"},
			&cli.StringFlag{Name: "api-key-env", Usage: "the environment `VAR`iable holding the API key (overrides model.api_key_env)"},
			&cli.BoolFlag{Name: "scripted", Usage: "call no model: run only the rollouts with turns; sub-LLMs answer from the spec's replies"},
			&cli.StringFlag{Name: "record", Usage: "write a scripted replay of the model's rollouts to `FILE` (rlmrun run FILE reproduces them)"},
			&cli.StringFlag{Name: "resume", Usage: "resume the run in `RUN_DIR`: run only its rollouts without a result (or that ended in an infrastructure error), appending to its results"},
			&cli.IntFlag{Name: "retries", Usage: "run a rollout that failed for an infrastructure reason (sandbox, model server, lost agent) again, up to `N` times"},
			&cli.BoolFlag{Name: "trust", Usage: "run the tools, MCP servers and rewards of an environment from a registry (oci://REF, or one a spec extends) on this machine"},
			insecureFlag(),
			&cli.StringFlag{Name: "agent-binary", Usage: "the rlmrun binary to start as the agent (default: this one)", Hidden: true},
		},
		Action: runAction,
	}
}

// applyOverrides changes the spec's backend per the flags.
func applyOverrides(c *cli.Context, spec *schema.Spec) error {
	if b := c.String("backend"); b != "" {
		if b != "local" && b != "sandbox" {
			return fmt.Errorf("--backend must be local or sandbox, got %q", b)
		}
		spec.Backend.Type = b
		if b == "local" {
			// A local worker always reaches its tools through the tunnel.
			spec.Backend.InterceptionURL = ""
		}
	}
	if p := c.String("provider"); p != "" {
		if _, ok := providers()[p]; !ok {
			return fmt.Errorf("--provider must be one of %s, got %q", strings.Join(providerNames(), ", "), p)
		}
		spec.Backend.Sandbox.Provider = p
		if c.String("backend") == "" {
			spec.Backend.Type = "sandbox"
		}
	}
	if c.IsSet("image") {
		img := c.String("image")
		if strings.TrimSpace(img) == "" || strings.HasPrefix(img, "-") {
			return fmt.Errorf("--image needs an image name, got %q", img)
		}
		spec.Backend.Sandbox.Image = img
	}
	if c.IsSet("concurrency") && c.Int("concurrency") < 1 {
		return fmt.Errorf("--concurrency (-j) must be at least 1, got %d", c.Int("concurrency"))
	}
	if c.Bool("update-golden") && c.String("golden") == "" {
		return errors.New("--update-golden needs --golden FILE")
	}
	return nil
}

func filterFunc(globs []string) (func(string) bool, error) {
	if len(globs) == 0 {
		return nil, nil
	}
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("--filter %q: %w", g, err)
		}
	}
	return func(id string) bool {
		for _, g := range globs {
			if ok, _ := path.Match(g, id); ok {
				return true
			}
		}
		return false
	}, nil
}

func runAction(c *cli.Context) error {
	plan, err := prepareRun(c)
	if err != nil || plan == nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be, err := startBackend(ctx, c, plan.spec)
	if err != nil {
		return withCode(exitFailed, err)
	}
	defer be.Close()
	sig := watchSignals(ctx, cancel, c.App.ErrWriter)
	defer sig.stop()

	table := c.App.Writer
	if c.Bool("json") {
		table = c.App.ErrWriter
	}
	stats := &chatapi.Stats{}
	prog := newProgress(c.App.ErrWriter, plan.total, c.Bool("quiet"), isTerminal(c.App.ErrWriter))
	if plan.usesModel {
		prog.models = stats
	}
	start := time.Now()
	rep, err := runner.Run(ctx, runner.Options{
		Spec:            plan.spec,
		Backend:         be,
		RunID:           plan.resume.runID,
		OutDir:          plan.outDir(c),
		OutputFile:      c.String("output"),
		Concurrency:     c.Int("concurrency"),
		Filter:          plan.filter,
		Drain:           sig.drain,
		OnStart:         prog.started,
		OnResult:        prog.finished,
		InterceptionURL: plan.spec.Backend.InterceptionURL,
		ModelStats:      stats,
		OnModelRetry:    prog.modelRetry,
		Retries:         c.Int("retries"),
		Previous:        plan.resume.previous,
		Environment:     plan.env,
	})
	prog.close()
	if err != nil && rep == nil {
		if errors.Is(err, runner.ErrNoModel) {
			return withCode(exitUsage, err)
		}
		return withCode(exitFailed, err)
	}
	var problems []string
	if err != nil {
		problems = append(problems, err.Error())
	}
	out, rerr := writeReports(c, table, plan.spec, rep, start, time.Since(start))
	problems = append(problems, rerr...)
	if f := c.String("record"); f != "" {
		problems = append(problems, record(table, f, plan.spec, rep)...)
	}
	return exitCode(rep, sig.got(), problems, out.goldenDiffs)
}

// runPlan is a validated `rlmrun run`: its spec (overrides applied), which
// rollouts run, and how many.
type runPlan struct {
	file   string
	spec   *schema.Spec
	filter func(string) bool
	total  int
	// usesModel says a model plays a rollout or answers a sub-LLM.
	usesModel bool
	resume    resumed
	// env is set when the spec came packed (an archive or oci://REF).
	env *runner.Environment
}

// outDir is where the run's results go: the resumed run's, --out-dir, or
// the spec's.
func (p *runPlan) outDir(c *cli.Context) string {
	if p.resume.outDir != "" {
		return p.resume.outDir
	}
	if d := c.String("out-dir"); d != "" || p.env == nil {
		return d
	}
	// A packed environment lives in the cache: its results go where the
	// command runs, never into the cache.
	if abs, err := filepath.Abs(p.spec.Retention.Dir); err == nil {
		return abs
	}
	return p.spec.Retention.Dir
}

// prepareRun checks the command line and the spec, and every report path,
// before anything runs. A nil plan with a nil error means there is nothing
// to run (--dry-run printed the plan).
func prepareRun(c *cli.Context) (*runPlan, error) {
	if c.NArg() != 1 {
		return nil, withCode(exitUsage, fmt.Errorf("run needs exactly one SPEC file, archive or oci://REF, got %d (see rlmrun run --help)", c.NArg()))
	}
	file := c.Args().First()
	src, err := newSources(context.Background(), c)
	if err != nil {
		return nil, withCode(exitFailed, err)
	}
	l, err := src.load(file)
	if err != nil {
		var fe *errFetch
		if errors.As(err, &fe) {
			return nil, withCode(exitFailed, err)
		}
		fmt.Fprintln(c.App.ErrWriter, safetext.Lines(err.Error()))
		return nil, withCode(exitUsage, fmt.Errorf("%s is invalid", safetext.Line(file)))
	}
	if err := checkTrust(l, c.Bool("trust")); err != nil {
		return nil, withCode(exitUsage, err)
	}
	spec := l.spec
	if err := applyOverrides(c, spec); err != nil {
		return nil, withCode(exitUsage, err)
	}
	if err := applyModelOverrides(c, spec); err != nil {
		return nil, withCode(exitUsage, err)
	}
	filter, err := filterFunc(c.StringSlice("filter"))
	if err != nil {
		return nil, withCode(exitUsage, err)
	}
	if c.Bool("scripted") {
		filter = both(filter, func(id string) bool { return rolloutOf(spec, id).Scripted })
	}
	var res resumed
	if dir := c.String("resume"); dir != "" {
		if res, err = loadResume(c, dir, spec); err != nil {
			return nil, withCode(exitUsage, err)
		}
		filter = both(filter, func(id string) bool { return !res.done[id] })
	}
	if c.Bool("dry-run") {
		if err := printPlan(c, file, spec); err != nil {
			return nil, withCode(exitFailed, err)
		}
		return nil, nil
	}
	reports := map[string]string{"--output": c.String("output"), "--junit": c.String("junit"), "--record": c.String("record")}
	if c.Bool("update-golden") {
		reports["--golden"] = c.String("golden")
	}
	if err := checkReports(spec, reports); err != nil {
		return nil, withCode(exitUsage, err)
	}
	plan := &runPlan{file: file, spec: spec, filter: filter, resume: res, env: l.env}
	played := 0
	for _, in := range spec.ExpandedRollouts() {
		if filter == nil || filter(in.ID) {
			plan.total++
			if !in.Rollout.Scripted {
				played++
			}
		}
	}
	plan.usesModel = played > 0 || spec.SubLLM.Model.Kind != "scripted"
	switch {
	case plan.total == 0 && res.runID != "":
		fmt.Fprintf(c.App.ErrWriter, "rlmrun: nothing to resume: every selected rollout of %s has a result\n", safetext.Line(c.String("resume")))
	case plan.total == 0 && c.Bool("scripted"):
		return nil, withCode(exitUsage, fmt.Errorf("--scripted: no selected rollout of %s has turns", file))
	case plan.total == 0:
		return nil, withCode(exitUsage, fmt.Errorf("--filter matches no rollout of %s", file))
	}
	if c.String("record") != "" && played == 0 && res.runID == "" {
		return nil, withCode(exitUsage, errors.New("--record: no selected rollout is played by a model (they all have turns)"))
	}
	if err := runner.CheckModels(spec, played > 0); err != nil {
		return nil, withCode(exitUsage, err)
	}
	return plan, nil
}

// startBackend builds the spec's backend and first removes what killed
// runs left with it (never a live run's things).
func startBackend(ctx context.Context, c *cli.Context, spec *schema.Spec) (backend, error) {
	agent, err := agentBinary(c.String("agent-binary"))
	if err != nil {
		return nil, err
	}
	be, err := newBackend(ctx, spec, agent)
	if err != nil {
		return nil, err
	}
	if sw, ok := be.(backends.Sweeper); ok {
		var buf strings.Builder
		if n, _ := removeLeftovers(ctx, []backends.Sweeper{sw}, "", false, &buf); n > 0 {
			fmt.Fprint(c.App.ErrWriter, "rlmrun: cleaned up after a killed run:\n"+buf.String())
		}
	}
	return be, nil
}

// signals follows Ctrl-C and SIGTERM during a run: Ctrl-C once drains (no
// new rollouts), twice cancels; SIGTERM cancels.
type signals struct {
	drain chan struct{}
	stop  func()
	mu    sync.Mutex
	last  os.Signal
}

func (s *signals) got() os.Signal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func watchSignals(ctx context.Context, cancel context.CancelFunc, w io.Writer) *signals {
	s := &signals{drain: make(chan struct{})}
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	s.stop = func() {
		signal.Stop(ch)
		close(done)
	}
	go func() {
		drained := false
		for {
			select {
			case sig := <-ch:
				s.mu.Lock()
				s.last = sig
				s.mu.Unlock()
				if sig == os.Interrupt && !drained {
					drained = true
					close(s.drain)
					fmt.Fprintln(w, "\nrlmrun: interrupted: no new rollouts; running ones finish (Ctrl-C again to cancel them)")
					continue
				}
				if !drained {
					close(s.drain)
				}
				fmt.Fprintf(w, "\nrlmrun: %v: cancelling running rollouts, cleaning up...\n", sig)
				cancel()
				return
			case <-ctx.Done():
				return
			case <-done:
				return
			}
		}
	}()
	return s
}

// reportsOut says what writeReports found.
type reportsOut struct{ goldenDiffs int }

// writeReports prints the summary and the digest, and writes the JUnit
// report, the golden file or its comparison, and the --json summary. It
// returns the problems met doing so.
func writeReports(c *cli.Context, table io.Writer, spec *schema.Spec, rep *runner.Report, started time.Time, elapsed time.Duration) (reportsOut, []string) {
	var out reportsOut
	var problems []string
	digest, err := runner.Digest(rep.Results)
	if err != nil {
		return out, []string{err.Error()}
	}
	if c.Bool("quiet") {
		fmt.Fprintln(table, runner.SummaryLine(rep))
		runner.WriteProblems(table, rep)
	} else {
		runner.WriteSummary(table, rep)
	}
	if env := environmentOf(rep); env != nil {
		fmt.Fprintf(table, "environment: %s (%s)\n", safetext.Line(env.Ref), env.Digest)
	}
	fmt.Fprintf(table, "digest: %s\n", digest)
	if jf := c.String("junit"); jf != "" {
		if werr := atomicfile.Write(jf, func(w io.Writer) error { return runner.WriteJUnit(w, spec.Name, rep, elapsed.Seconds()) }); werr != nil {
			problems = append(problems, werr.Error())
		}
	}
	var gold *report.Golden
	if gf := c.String("golden"); gf != "" && !rep.Interrupted {
		diffs, err := golden(table, gf, c.Bool("update-golden"), rep)
		if err != nil {
			problems = append(problems, err.Error())
		} else if !c.Bool("update-golden") {
			gold = &report.Golden{File: gf, Differences: diffs}
		}
		out.goldenDiffs = len(diffs)
	}
	run := &report.Run{
		Spec: spec.Name, SpecFile: spec.File, Backend: backendName(spec), Language: spec.REPL.Language,
		RunID: rep.RunID, StartedAt: started.UTC(), Seconds: elapsed.Seconds(), Digest: digest,
		Environment: environmentOf(rep), Interrupted: rep.Interrupted, NotStarted: rep.NotStarted, Golden: gold,
	}
	if err := report.WriteRun(rep.Dir, run); err != nil {
		problems = append(problems, err.Error())
	}
	if c.Bool("report") {
		file := filepath.Join(rep.Dir, "report.html")
		if err := writeReport(rep.Dir, file); err != nil {
			problems = append(problems, err.Error())
		} else {
			fmt.Fprintf(table, "report: %s\n", safetext.Line(file))
		}
	}
	if c.Bool("json") {
		if jerr := writeJSONSummary(c.App.Writer, spec, rep, digest, elapsed, out.goldenDiffs); jerr != nil {
			problems = append(problems, jerr.Error())
		}
	}
	return out, problems
}

// golden writes the golden file (update) or compares the run with it,
// printing the differences; it returns how many there were.
func golden(w io.Writer, file string, update bool, rep *runner.Report) ([]string, error) {
	if update {
		if err := runner.WriteGolden(file, rep.Results); err != nil {
			return nil, err
		}
		fmt.Fprintf(w, "golden: wrote %s\n", file)
		return nil, nil
	}
	diffs, err := runner.CompareGolden(file, rep.Results)
	if err != nil {
		return nil, err
	}
	if len(diffs) == 0 {
		fmt.Fprintf(w, "golden: matches %s\n", file)
		return nil, nil
	}
	fmt.Fprintf(w, "golden: %d difference(s) from %s:\n", len(diffs), file)
	lines := make([]string, len(diffs))
	for i, d := range diffs {
		lines[i] = fmt.Sprint(d)
		fmt.Fprintf(w, "  %s\n", d)
	}
	return lines, nil
}

// exitCode is the run's exit: interrupted (130, 143 for SIGTERM), failed
// (1: a problem, a rollout that did not pass, a golden difference), or 0.
func exitCode(rep *runner.Report, sig os.Signal, problems []string, goldenDiffs int) error {
	switch {
	case rep.Interrupted:
		code := exitInterrupted
		if sig == syscall.SIGTERM {
			code = 128 + int(syscall.SIGTERM)
		}
		return withCode(code, errors.New("interrupted; results of finished rollouts were kept"))
	case len(problems) > 0:
		return withCode(exitFailed, errors.New(strings.Join(problems, "; ")))
	case rep.Failed() || goldenDiffs > 0:
		return withCode(exitFailed, nil)
	}
	return nil
}

// checkReports refuses report paths that would overwrite the spec or a
// file it uses (or each other), and checks each can be written, before the
// first rollout starts.
func checkReports(spec *schema.Spec, reports map[string]string) error {
	inputs := spec.Inputs()
	flags := make([]string, 0, len(reports))
	for flag := range reports {
		flags = append(flags, flag)
	}
	sort.Strings(flags)
	seen := map[string]string{}
	for _, flag := range flags {
		p := reports[flag]
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("%s %s: %w", flag, p, err)
		}
		real := abs
		if r, err := filepath.EvalSymlinks(abs); err == nil {
			real = r
		} else if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
			real = filepath.Join(dir, filepath.Base(abs))
		}
		if other, ok := seen[real]; ok {
			return fmt.Errorf("%s and %s name the same file %s", other, flag, p)
		}
		seen[real] = flag
		for _, in := range inputs {
			if sameFile(real, in) || insideDir(real, in) {
				return fmt.Errorf("%s %s would overwrite %s, which the spec uses: write the report elsewhere", flag, p, in)
			}
		}
		if err := atomicfile.CheckWritable(abs); err != nil {
			return fmt.Errorf("%s %s cannot be written: %w", flag, p, err)
		}
	}
	return nil
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// insideDir reports whether path lies under dir (when dir is a directory).
func insideDir(path, dir string) bool {
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return false
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// jsonSummary is --json's output.
type jsonSummary struct {
	Spec        string         `json:"spec"`
	RunID       string         `json:"run_id"`
	Backend     string         `json:"backend"`
	Rollouts    int            `json:"rollouts"`
	Statuses    map[string]int `json:"statuses"`
	Passed      int            `json:"passed"`
	Failed      int            `json:"failed"`
	NotStarted  int            `json:"not_started"`
	Interrupted bool           `json:"interrupted"`
	MeanReward  *float64       `json:"mean_reward,omitempty"`
	Digest      string         `json:"digest"`
	GoldenDiffs int            `json:"golden_differences"`
	Seconds     float64        `json:"seconds"`
	Results     string         `json:"results"`
	FailedIDs   []string       `json:"failed_ids,omitempty"`
	// Environment is the packed environment that ran, if it was one.
	Environment *runner.Environment `json:"environment,omitempty"`
}

// environmentOf is the packed environment a run ran (nil for a spec file).
func environmentOf(rep *runner.Report) *runner.Environment {
	for _, r := range rep.Results {
		if r.Volatile.Environment != nil {
			return r.Volatile.Environment
		}
	}
	return nil
}

func writeJSONSummary(w io.Writer, spec *schema.Spec, rep *runner.Report, digest string, elapsed time.Duration, goldenDiffs int) error {
	s := jsonSummary{
		Spec: spec.Name, RunID: rep.RunID, Backend: backendName(spec), Rollouts: len(rep.Results),
		Statuses: map[string]int{}, NotStarted: len(rep.NotStarted), Interrupted: rep.Interrupted,
		Digest: digest, GoldenDiffs: goldenDiffs, Seconds: elapsed.Seconds(), Results: rep.ResultsPath,
		Environment: environmentOf(rep),
	}
	sum, n := 0.0, 0
	for _, r := range rep.Results {
		s.Statuses[r.Status]++
		if r.Passed {
			s.Passed++
		} else {
			s.Failed++
			s.FailedIDs = append(s.FailedIDs, r.ID)
		}
		if r.Reward != nil {
			sum += *r.Reward
			n++
		}
	}
	if n > 0 {
		mean := sum / float64(n)
		s.MeanReward = &mean
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
