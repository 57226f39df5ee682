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
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "validate a spec and run its rollouts",
		ArgsUsage: "SPEC",
		UsageText: `rlmrun run [flags] SPEC

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
   rlmrun examples/hello-bash.yaml`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "concurrency", Aliases: []string{"j"}, Usage: "rollouts run at once (default: CPU count)"},
			&cli.StringSliceFlag{Name: "filter", Usage: "run only rollouts whose id matches `GLOB` (repeatable; ids of repeats are id#1, id#2, ...)"},
			&cli.StringFlag{Name: "backend", Usage: "override the spec's backend: local or sandbox"},
			&cli.StringFlag{Name: "provider", Usage: "override the sandbox provider: bwrap or docker (implies --backend sandbox)"},
			&cli.StringFlag{Name: "image", Usage: "override the docker image"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "also write the JSONL results to `FILE`"},
			&cli.StringFlag{Name: "out-dir", Usage: "write results and retained directories under `DIR` instead of the spec's retention.dir"},
			&cli.StringFlag{Name: "golden", Usage: "compare the deterministic results with `FILE` (written by --update-golden)"},
			&cli.BoolFlag{Name: "update-golden", Usage: "write the deterministic results to the --golden file"},
			&cli.StringFlag{Name: "junit", Usage: "write a JUnit XML report to `FILE`"},
			&cli.BoolFlag{Name: "json", Usage: "print a machine-readable summary on stdout (the table goes to stderr)"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress and no table: the final line and problems only"},
			&cli.BoolFlag{Name: "dry-run", Usage: "validate and print the plan (rollouts, backend, tools) without running"},
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
	}
	if p := c.String("provider"); p != "" {
		if p != "bwrap" && p != "docker" {
			return fmt.Errorf("--provider must be bwrap or docker, got %q", p)
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
	if c.NArg() != 1 {
		return withCode(exitUsage, fmt.Errorf("run needs exactly one SPEC file, got %d (see rlmrun run --help)", c.NArg()))
	}
	file := c.Args().First()
	spec, err := schema.Load(file)
	if err != nil {
		fmt.Fprintln(c.App.ErrWriter, safetext.Lines(err.Error()))
		return withCode(exitUsage, fmt.Errorf("%s is invalid", file))
	}
	if err := applyOverrides(c, spec); err != nil {
		return withCode(exitUsage, err)
	}
	filter, err := filterFunc(c.StringSlice("filter"))
	if err != nil {
		return withCode(exitUsage, err)
	}
	if c.Bool("dry-run") {
		printPlan(c, file, spec)
		return nil
	}
	reports := map[string]string{"--output": c.String("output"), "--junit": c.String("junit")}
	if c.Bool("update-golden") {
		reports["--golden"] = c.String("golden")
	}
	if err := checkReports(spec, reports); err != nil {
		return withCode(exitUsage, err)
	}
	total := 0
	for _, in := range spec.ExpandedRollouts() {
		if filter == nil || filter(in.ID) {
			total++
		}
	}
	if total == 0 {
		return withCode(exitUsage, fmt.Errorf("--filter matches no rollout of %s", file))
	}
	agent, err := agentBinary(c.String("agent-binary"))
	if err != nil {
		return withCode(exitFailed, err)
	}
	backend, err := newBackend(spec, agent)
	if err != nil {
		return withCode(exitFailed, err)
	}
	defer backend.Close()
	// What killed runs left behind goes first; a live run's things are
	// never touched.
	var providers []sandbox.Provider
	if ex, ok := backend.(*sandbox.Executor); ok {
		providers = append(providers, ex.Provider())
	}
	var buf strings.Builder
	if n, _ := removeLeftovers(context.Background(), providers, "", false, &buf); n > 0 {
		fmt.Fprint(c.App.ErrWriter, "rlmrun: cleaned up after a killed run:\n"+buf.String())
	}

	// Ctrl-C once drains (no new rollouts), twice cancels; SIGTERM cancels.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	drain := make(chan struct{})
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var got os.Signal
	go func() {
		drained := false
		for {
			select {
			case s := <-sigs:
				got = s
				if s == os.Interrupt && !drained {
					drained = true
					close(drain)
					fmt.Fprintln(c.App.ErrWriter, "\nrlmrun: interrupted: no new rollouts; running ones finish (Ctrl-C again to cancel them)")
					continue
				}
				if !drained {
					close(drain)
				}
				fmt.Fprintf(c.App.ErrWriter, "\nrlmrun: %v: cancelling running rollouts, cleaning up...\n", s)
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()

	table := c.App.Writer
	if c.Bool("json") {
		table = c.App.ErrWriter
	}
	prog := newProgress(c.App.ErrWriter, total, c.Bool("quiet"), isTerminal(c.App.ErrWriter))
	start := time.Now()
	rep, err := runner.Run(ctx, runner.Options{
		Spec:        spec,
		Backend:     backend,
		OutDir:      c.String("out-dir"),
		OutputFile:  c.String("output"),
		Concurrency: c.Int("concurrency"),
		Filter:      filter,
		Drain:       drain,
		OnStart:     prog.started,
		OnResult:    prog.finished,
	})
	prog.close()
	elapsed := time.Since(start)
	if err != nil && rep == nil {
		return withCode(exitFailed, err)
	}
	digest, derr := runner.Digest(rep.Results)
	if derr != nil {
		return withCode(exitFailed, derr)
	}
	if c.Bool("quiet") {
		fmt.Fprintln(table, runner.SummaryLine(rep))
		runner.WriteProblems(table, rep)
	} else {
		runner.WriteSummary(table, rep)
	}
	fmt.Fprintf(table, "digest: %s\n", digest)

	failed := rep.Failed()
	var problems []string
	if err != nil {
		problems = append(problems, err.Error())
	}
	if jf := c.String("junit"); jf != "" {
		if werr := atomicfile.Write(jf, func(w io.Writer) error { return runner.WriteJUnit(w, spec.Name, rep, elapsed.Seconds()) }); werr != nil {
			problems = append(problems, werr.Error())
		}
	}
	goldenDiffs := 0
	if gf := c.String("golden"); gf != "" && !rep.Interrupted {
		if c.Bool("update-golden") {
			if werr := runner.WriteGolden(gf, rep.Results); werr != nil {
				problems = append(problems, werr.Error())
			} else {
				fmt.Fprintf(table, "golden: wrote %s\n", gf)
			}
		} else {
			diffs, gerr := runner.CompareGolden(gf, rep.Results)
			switch {
			case gerr != nil:
				problems = append(problems, gerr.Error())
			case len(diffs) > 0:
				goldenDiffs = len(diffs)
				fmt.Fprintf(table, "golden: %d difference(s) from %s:\n", len(diffs), gf)
				for _, d := range diffs {
					fmt.Fprintf(table, "  %s\n", d)
				}
			default:
				fmt.Fprintf(table, "golden: matches %s\n", gf)
			}
		}
	}
	if c.Bool("json") {
		if jerr := writeJSONSummary(c.App.Writer, spec, rep, digest, elapsed, goldenDiffs); jerr != nil {
			problems = append(problems, jerr.Error())
		}
	}
	switch {
	case rep.Interrupted:
		code := exitInterrupted
		if got == syscall.SIGTERM {
			code = 128 + int(syscall.SIGTERM)
		}
		return withCode(code, errors.New("interrupted; results of finished rollouts were kept"))
	case len(problems) > 0:
		return withCode(exitFailed, errors.New(strings.Join(problems, "; ")))
	case failed || goldenDiffs > 0:
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
}

func writeJSONSummary(w io.Writer, spec *schema.Spec, rep *runner.Report, digest string, elapsed time.Duration, goldenDiffs int) error {
	s := jsonSummary{
		Spec: spec.Name, RunID: rep.RunID, Backend: backendName(spec), Rollouts: len(rep.Results),
		Statuses: map[string]int{}, NotStarted: len(rep.NotStarted), Interrupted: rep.Interrupted,
		Digest: digest, GoldenDiffs: goldenDiffs, Seconds: elapsed.Seconds(), Results: rep.ResultsPath,
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
