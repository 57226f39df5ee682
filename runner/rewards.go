package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/rlmrun/rlmrun/internal/tmpl"
	"github.com/rlmrun/rlmrun/runner/hostcmd"
	"github.com/rlmrun/rlmrun/schema"
)

// score runs every reward on the final answer and the final working
// directory (dir), and sets the rollout's reward to their weighted sum.
func (ro *rollout) score(dir string) {
	spec := ro.env.spec
	if len(spec.Rewards) == 0 {
		return
	}
	total := 0.0
	for i, rw := range spec.Rewards {
		where := fmt.Sprintf("rewards[%d]", i)
		s, detail := ro.scoreOne(where, rw, dir)
		ro.res.Rewards = append(ro.res.Rewards, RewardScore{Name: rw.Name, Weight: rw.Weight, Score: s, Detail: detail})
		total += rw.Weight * s
	}
	total = math.Round(total*1e9) / 1e9
	ro.res.Reward = &total
}

func (ro *rollout) render(where, text string) (string, error) {
	return tmpl.Render(where, text, ro.data)
}

func (ro *rollout) scoreOne(where string, rw schema.Reward, dir string) (float64, string) {
	switch {
	case rw.Answer != nil:
		ok, detail, err := ro.checkText(where+".answer", *rw.Answer, ro.answer.Content)
		if err != nil {
			return 0, err.Error()
		}
		return boolScore(ok), detail
	case rw.Files != nil:
		return ro.checkFiles(where+".files", *rw.Files, dir)
	case rw.Run != nil:
		return ro.runReward(where+".run", rw, dir)
	}
	return 0, "no check"
}

func boolScore(ok bool) float64 {
	if ok {
		return 1
	}
	return 0
}

// checkText compares got with an equals / contains / matches expectation.
func (ro *rollout) checkText(where string, c schema.AnswerCheck, got string) (bool, string, error) {
	switch {
	case c.Equals != nil:
		want, err := ro.render(where+".equals", *c.Equals)
		if err != nil {
			return false, "", err
		}
		if strings.TrimSpace(got) == strings.TrimSpace(want) {
			return true, "", nil
		}
		return false, fmt.Sprintf("expected %q, got %q", strings.TrimSpace(want), strings.TrimSpace(got)), nil
	case c.Contains != nil:
		want, err := ro.render(where+".contains", *c.Contains)
		if err != nil {
			return false, "", err
		}
		if strings.Contains(got, want) {
			return true, "", nil
		}
		return false, fmt.Sprintf("%q does not contain %q", short(got), want), nil
	case c.Matches != nil:
		pat, err := ro.render(where+".matches", *c.Matches)
		if err != nil {
			return false, "", err
		}
		re, err := regexp.Compile(pat)
		if err != nil {
			return false, "", err
		}
		if re.MatchString(got) {
			return true, "", nil
		}
		return false, fmt.Sprintf("%q does not match %s", short(got), pat), nil
	}
	return false, "no check", nil
}

func short(s string) string {
	r := []rune(s)
	if len(r) > 80 {
		return string(r[:77]) + "..."
	}
	return s
}

// checkFiles judges the final working directory; every condition must hold.
func (ro *rollout) checkFiles(where string, f schema.FilesCheck, dir string) (float64, string) {
	var fails []string
	if f.Glob != "" {
		pat, err := ro.render(where+".glob", f.Glob)
		if err != nil {
			return 0, err.Error()
		}
		matches, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			return 0, err.Error()
		}
		if f.Count != nil && len(matches) != *f.Count {
			names := make([]string, len(matches))
			for i, m := range matches {
				names[i], _ = filepath.Rel(dir, m)
			}
			fails = append(fails, fmt.Sprintf("%d match(es) of %s, expected %d: %s", len(matches), pat, *f.Count, strings.Join(names, " ")))
		}
	}
	for i, p := range f.Exists {
		rel, err := ro.render(fmt.Sprintf("%s.exists[%d]", where, i), p)
		if err != nil {
			return 0, err.Error()
		}
		if _, err := os.Lstat(filepath.Join(dir, rel)); err != nil {
			fails = append(fails, rel+" is missing")
		}
	}
	for i, p := range f.Absent {
		rel, err := ro.render(fmt.Sprintf("%s.absent[%d]", where, i), p)
		if err != nil {
			return 0, err.Error()
		}
		if _, err := os.Lstat(filepath.Join(dir, rel)); err == nil {
			fails = append(fails, rel+" should not exist")
		}
	}
	if c := f.Content; c != nil {
		rel, err := ro.render(where+".content.path", c.Path)
		if err != nil {
			return 0, err.Error()
		}
		// Through a Root: a symlink the model left must not lead out.
		b, err := readInside(dir, rel)
		if err != nil {
			fails = append(fails, rel+" cannot be read")
		} else {
			ok, detail, err := ro.checkText(where+".content", c.AnswerCheck, string(b))
			if err != nil {
				return 0, err.Error()
			}
			if !ok {
				fails = append(fails, rel+": "+detail)
			}
		}
	}
	if len(fails) > 0 {
		return 0, strings.Join(fails, "; ")
	}
	return 1, ""
}

// maxEnvAnswer is the longest answer also passed as RLM_ANSWER: the kernel
// refuses an environment string over 128 KiB, and the whole answer is on
// stdin anyway.
const maxEnvAnswer = 64 << 10

// runReward runs a host command. Like every host command it runs in the
// spec's folder with a scrubbed environment — never in the final working
// directory, which the model wrote: an interpreter would find the model's
// modules there first (`import json` would import its json.py). The final
// directory is passed as RLM_WORKDIR and as "workdir" in the rollout's JSON
// on stdin. A number printed on stdout is the score; otherwise exit status
// 0 scores 1 and anything else 0.
func (ro *rollout) runReward(where string, rw schema.Reward, dir string) (float64, string) {
	argv := rw.Run.Args()
	rendered := make([]string, len(argv))
	for i, a := range argv {
		r, err := ro.render(fmt.Sprintf("%s[%d]", where, i), a)
		if err != nil {
			return 0, err.Error()
		}
		rendered[i] = r
	}
	cmdDir := ro.env.spec.CommandDir(*rw.Run)
	if prog := rendered[0]; strings.Contains(prog, "/") && !filepath.IsAbs(prog) {
		rendered[0] = filepath.Join(cmdDir, prog)
	}
	in, _ := json.Marshal(map[string]any{
		"rollout": ro.inst.ID, "status": ro.res.Status, "answer": ro.answer.Content,
		"answer_ready": ro.answer.Ready, "vars": ro.inst.Rollout.Vars, "spec_dir": ro.env.spec.Dir,
		"workdir": dir,
	})
	extra := []string{"RLM_SPEC_DIR=" + ro.env.spec.Dir, "RLM_WORKDIR=" + dir}
	if len(ro.answer.Content) <= maxEnvAnswer {
		extra = append(extra, "RLM_ANSWER="+ro.answer.Content)
	}
	out := ro.env.spawner.Run(context.Background(), hostcmd.Call{
		Cmd: hostcmd.Cmd{
			Argv:  rendered,
			Dir:   cmdDir,
			Env:   hostcmd.Environ(os.Environ(), rw.PassEnv, rw.Env, extra...),
			Stdin: bytes.NewReader(in),
		},
		Timeout:    rw.Timeout.Duration,
		MaxStdout:  1 << 20,
		StderrTail: 4 << 10,
	})
	switch {
	case !out.Started:
		return 0, fmt.Sprintf("could not start: %v", out.Err)
	case out.TimedOut:
		return 0, fmt.Sprintf("timed out after %s", rw.Timeout.Duration)
	}
	text := strings.TrimSpace(string(out.Stdout))
	if v, err := strconv.ParseFloat(text, 64); err == nil && !math.IsNaN(v) && !math.IsInf(v, 0) {
		return v, ""
	}
	if out.Err != nil {
		detail := hostcmd.Describe(out.Err)
		if out.Stderr != "" {
			detail += ": " + out.Stderr
		}
		return 0, detail
	}
	return 1, ""
}

// checkExpectations compares the rollout with its `expect`.
func (ro *rollout) checkExpectations() {
	e := ro.inst.Rollout.Expect
	if e == nil {
		return
	}
	add := func(field, want, got string, met bool) {
		ro.res.Expect = append(ro.res.Expect, Expectation{Field: field, Expected: want, Got: got, Met: met})
	}
	if e.Status != nil {
		add("status", *e.Status, ro.res.Status, *e.Status == ro.res.Status)
	}
	if e.Answer != nil {
		want, err := ro.render(fmt.Sprintf("rollouts[%d].expect.answer", ro.inst.Rollout.Index), *e.Answer)
		if err != nil {
			want = "(" + err.Error() + ")"
		}
		add("answer", strconv.Quote(strings.TrimSpace(want)), strconv.Quote(strings.TrimSpace(ro.res.Answer)), strings.TrimSpace(want) == strings.TrimSpace(ro.res.Answer))
	}
	if e.Reward != nil {
		got := "none"
		met := false
		if ro.res.Reward != nil {
			got = strconv.FormatFloat(*ro.res.Reward, 'g', -1, 64)
			met = math.Abs(*ro.res.Reward-*e.Reward) < 1e-9
		}
		add("reward", strconv.FormatFloat(*e.Reward, 'g', -1, 64), got, met)
	}
}

// readInside reads rel under dir; symlinks are followed only while they stay
// inside dir.
func readInside(dir, rel string) ([]byte, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return root.ReadFile(rel)
}
