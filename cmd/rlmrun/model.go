package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/replay"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
)

// applyModelOverrides changes the spec's models per the flags: --scripted
// drops them; --base-url, --model and --api-key-env set the root model's
// endpoint (which sub_llm.model: root shares); --sub-model names the
// sub-LLM's model.
func applyModelOverrides(c *cli.Context, spec *schema.Spec) error {
	rootFlags := []string{"base-url", "model", "api-key-env", "sub-model"}
	if c.Bool("scripted") {
		for _, f := range rootFlags {
			if c.IsSet(f) {
				return fmt.Errorf("--scripted calls no model: it does not go with --%s", f)
			}
		}
		spec.Model = nil
		spec.SubLLM.Model = schema.SubModel{Kind: "scripted"}
		return nil
	}
	for _, f := range rootFlags[:3] {
		if c.IsSet(f) && spec.Model == nil {
			return fmt.Errorf("--%s: %s has no model section (every rollout has turns)", f, spec.File)
		}
	}
	if c.IsSet("base-url") {
		u := c.String("base-url")
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return fmt.Errorf("--base-url needs an http(s) URL such as http://127.0.0.1:8000/v1, got %q", u)
		}
		spec.Model.BaseURL = u
	}
	if c.IsSet("model") {
		if strings.TrimSpace(c.String("model")) == "" {
			return errors.New("--model needs a model name")
		}
		spec.Model.Name = c.String("model")
	}
	if c.IsSet("api-key-env") {
		v := c.String("api-key-env")
		if v == "" || strings.ContainsAny(v, "= \t\n") {
			return fmt.Errorf("--api-key-env needs the name of an environment variable, got %q", v)
		}
		spec.Model.APIKeyEnv = v
	}
	if c.IsSet("sub-model") {
		name := c.String("sub-model")
		if strings.TrimSpace(name) == "" {
			return errors.New("--sub-model needs a model name")
		}
		sub := &spec.SubLLM.Model
		switch {
		case sub.Kind == "endpoint":
			sub.Endpoint.Name = name
		case spec.Model != nil:
			// Another model on the root model's server.
			e := spec.Model.Endpoint
			e.Name = name
			*sub = schema.SubModel{Kind: "endpoint", Endpoint: &e}
		default:
			return fmt.Errorf("--sub-model: %s has no model section and sub_llm.model is scripted: there is no server to ask", spec.File)
		}
	}
	return nil
}

// both is a filter that takes what f and g take (a nil f takes all).
func both(f, g func(string) bool) func(string) bool {
	if f == nil {
		return g
	}
	return func(id string) bool { return f(id) && g(id) }
}

// rolloutOf is the rollout an instance id belongs to.
func rolloutOf(spec *schema.Spec, id string) schema.Rollout {
	for _, in := range spec.ExpandedRollouts() {
		if in.ID == id {
			return in.Rollout
		}
	}
	return schema.Rollout{}
}

// resumed is what --resume found in a run's directory.
type resumed struct {
	runID  string
	outDir string
	// previous are the results kept; done their ids.
	previous []*runner.Result
	done     map[string]bool
}

// loadResume reads a run's directory: its results (the last record of a
// rollout wins), less those that ended in an infrastructure error.
func loadResume(c *cli.Context, dir string, spec *schema.Spec) (resumed, error) {
	if c.IsSet("out-dir") {
		return resumed{}, errors.New("--resume writes to the resumed run's directory: it does not go with --out-dir")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return resumed{}, err
	}
	info, err := runner.ReadRunInfo(abs)
	if err != nil {
		return resumed{}, fmt.Errorf("--resume %s: %w", dir, err)
	}
	if info.Name != spec.Name {
		return resumed{}, fmt.Errorf("--resume %s: that is a run of spec %q, not of %q", dir, info.Name, spec.Name)
	}
	r := resumed{runID: info.RunID, outDir: filepath.Dir(abs), done: map[string]bool{}}
	f, err := os.Open(filepath.Join(abs, "results.jsonl"))
	if errors.Is(err, os.ErrNotExist) {
		return r, nil // killed before any rollout finished
	}
	if err != nil {
		return resumed{}, fmt.Errorf("--resume %s: %w", dir, err)
	}
	defer f.Close()
	last := map[string]*runner.Result{}
	var order []string
	rd := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := rd.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			var res runner.Result
			if jerr := json.Unmarshal(line, &res); jerr != nil {
				if err == io.EOF {
					break // a line cut by the kill that ended the run
				}
				return resumed{}, fmt.Errorf("--resume %s: results.jsonl line %d: %w", dir, n, jerr)
			}
			if _, seen := last[res.ID]; !seen {
				order = append(order, res.ID)
			}
			last[res.ID] = &res
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return resumed{}, fmt.Errorf("--resume %s: %w", dir, err)
		}
	}
	for _, id := range order {
		if res := last[id]; !res.Volatile.InfraError {
			r.previous = append(r.previous, res)
			r.done[id] = true
		}
	}
	return r, nil
}

// record writes the replay of the run and says what it holds.
func record(w io.Writer, file string, spec *schema.Spec, rep *runner.Report) []string {
	sum, err := replay.Write(replay.Options{Spec: spec, Results: rep.Results, RunID: rep.RunID, Path: file})
	if err != nil {
		return []string{err.Error()}
	}
	fmt.Fprintf(w, "record: wrote %s (%d rollout(s)); replay it with: rlmrun run %s\n", safetext.Line(file), len(sum.Rollouts), safetext.Line(file))
	for _, s := range sum.Skipped {
		fmt.Fprintf(w, "  left out %s\n", safetext.Line(s))
	}
	if sum.Conflicts > 0 {
		fmt.Fprintf(w, "  %d sub-LLM prompt(s) were sent again in a rollout and answered differently: the replay answers them with their first answer\n", sum.Conflicts)
	}
	if sum.SubErrors > 0 {
		fmt.Fprintf(w, "  %d sub-LLM call(s) failed: the replay has no answer for them\n", sum.SubErrors)
	}
	return nil
}
