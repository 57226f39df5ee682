package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/testbin"
	"github.com/rlmrun/rlmrun/runner"
)

// ciSpec has a rollout that passes, one that misses its expected answer,
// one whose agent dies (an error), and one repeated twice.
const ciSpec = `version: 1
name: ci
repl: {language: bash}
backend: {sandbox: {disk_size_gb: 0.001}}
rollouts:
  - id: good
    turns:
      - code: "echo hello; export RLM_CONTENT=42 RLM_READY=1"
    expect: {status: completed, answer: "42"}
  - id: wrong
    turns:
      - code: "export RLM_CONTENT=41 RLM_READY=1"
    expect: {answer: "42"}
  - id: broken
    turns:
      # More than disk_size_gb: the sync-back fails, the rollout errors.
      - code: "head -c 2000000 /dev/zero > big"
  - id: rep
    repeat: 2
    turns:
      - code: "export RLM_CONTENT=$((6*7)) RLM_READY=1"
`

func runIDs(t *testing.T, resultsFile string) []string {
	t.Helper()
	var ids []string
	for _, r := range readResults(t, resultsFile) {
		ids = append(ids, r["id"].(string))
	}
	sort.Strings(ids)
	return ids
}

func TestFilterAndRepeatIDs(t *testing.T) {
	spec := writeSpec(t, ciSpec)
	cases := []struct {
		name    string
		filters []string
		want    []string
	}{
		{"all", nil, []string{"broken", "good", "rep#1", "rep#2", "wrong"}},
		{"one repeat", []string{"rep#2"}, []string{"rep#2"}},
		{"globs", []string{"rep#*", "g*"}, []string{"good", "rep#1", "rep#2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "results.jsonl")
			args := []string{"run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), "-o", out}
			for _, f := range tc.filters {
				args = append(args, "--filter", f)
			}
			runCLI(t, append(args, spec)...)
			if got := runIDs(t, out); strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("ran %v, want %v", got, tc.want)
			}
		})
	}
	code, _, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), "--filter", "nothing*", spec)
	if code != exitUsage || !strings.Contains(stderr, "--filter matches no rollout") {
		t.Errorf("a filter matching nothing: exit %d\n%s", code, stderr)
	}
	code, _, stderr = runCLI(t, "run", "--agent-binary", rlmrunBin, "--filter", "[", spec)
	if code != exitUsage || !strings.Contains(stderr, `--filter "["`) {
		t.Errorf("a bad glob: exit %d\n%s", code, stderr)
	}
}

// TestExitCodeSummaryAndReports: a failing rollout exits 1; the table, the
// plain progress lines (no terminal), --json and --junit all say which.
func TestExitCodeSummaryAndReports(t *testing.T) {
	spec := writeSpec(t, ciSpec)
	junit := filepath.Join(t.TempDir(), "report.xml")
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), "-j", "3", "--json", "--junit", junit, spec)
	if code != exitFailed {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitFailed, stdout, stderr)
	}

	// Progress: one plain line per finished rollout, numbered in finishing order.
	for i := 1; i <= 5; i++ {
		if !strings.Contains(stderr, fmt.Sprintf("[%d/5] ", i)) {
			t.Errorf("no progress line %d/5 in:\n%s", i, stderr)
		}
	}
	if !regexp.MustCompile(`(?m)^\[\d/5\] wrong: completed \(\d+\.\d\ds\) FAILED$`).MatchString(stderr) {
		t.Errorf("the failing rollout's progress line is missing:\n%s", stderr)
	}
	if strings.Contains(stderr, "\r") {
		t.Errorf("a live line was drawn without a terminal:\n%q", stderr)
	}
	// With --json the table goes to stderr.
	if !strings.Contains(stderr, "digest: sha256:") {
		t.Errorf("no digest in:\n%s", stderr)
	}

	var sum jsonSummary
	if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, stdout)
	}
	if sum.Rollouts != 5 || sum.Passed != 3 || sum.Failed != 2 || sum.Backend != "local" || !strings.HasPrefix(sum.Digest, "sha256:") {
		t.Errorf("summary: %+v", sum)
	}
	if strings.Join(sum.FailedIDs, " ") != "wrong broken" && strings.Join(sum.FailedIDs, " ") != "broken wrong" {
		t.Errorf("failed ids: %v", sum.FailedIDs)
	}
	if sum.Statuses["completed"] != 4 || sum.Statuses["error"] != 1 {
		t.Errorf("statuses: %v", sum.Statuses)
	}
	if _, err := os.Stat(sum.Results); err != nil {
		t.Errorf("results path: %v", err)
	}

	raw, err := os.ReadFile(junit)
	if err != nil {
		t.Fatal(err)
	}
	var suites struct {
		Suites []struct {
			Name     string `xml:"name,attr"`
			Tests    int    `xml:"tests,attr"`
			Failures int    `xml:"failures,attr"`
			Errors   int    `xml:"errors,attr"`
			Cases    []struct {
				Name    string `xml:"name,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
					Body    string `xml:",chardata"`
				} `xml:"failure"`
				Error *struct {
					Message string `xml:"message,attr"`
				} `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(raw, &suites); err != nil {
		t.Fatalf("JUnit XML: %v\n%s", err, raw)
	}
	if len(suites.Suites) != 1 {
		t.Fatalf("suites: %s", raw)
	}
	s := suites.Suites[0]
	if s.Name != "ci" || s.Tests != 5 || s.Failures+s.Errors != 2 || len(s.Cases) != 5 {
		t.Errorf("suite: %+v\n%s", s, raw)
	}
	for _, c := range s.Cases {
		switch c.Name {
		case "wrong":
			if c.Failure == nil || !strings.Contains(c.Failure.Message, `answer: expected "42", got "41"`) {
				t.Errorf("wrong's failure should say expected versus got:\n%s", raw)
			}
		case "broken":
			if c.Error == nil || c.Error.Message == "" {
				t.Errorf("broken is not reported as an error:\n%s", raw)
			}
		default:
			if c.Failure != nil || c.Error != nil {
				t.Errorf("%s is reported as failing:\n%s", c.Name, raw)
			}
		}
	}
}

func TestQuietPrintsOnlyTheVerdict(t *testing.T) {
	spec := writeSpec(t, ciSpec)
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), "-q", spec)
	if code != exitFailed {
		t.Fatalf("exit %d", code)
	}
	if strings.Contains(stderr, "[1/5]") || strings.Contains(stdout, "[1/5]") {
		t.Errorf("-q printed progress:\n%s%s", stdout, stderr)
	}
	if !strings.Contains(stdout, "5 rollout(s)") || !strings.Contains(stdout, "wrong") || !strings.Contains(stdout, "digest: sha256:") {
		t.Errorf("-q should print the summary line, the problems and the digest:\n%s", stdout)
	}
}

func TestLiveProgressLine(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, 3, false, true)
	p.started("a")
	p.started("b")
	reward := 1.0
	p.finished(&runner.Result{ID: "a", Status: runner.StatusCompleted, Passed: true, Reward: &reward})
	p.finished(&runner.Result{ID: "b", Status: runner.StatusError})
	p.close()
	out := buf.String()
	if !strings.Contains(out, "\r\033[K[2/3] done 2, failed 1, running 0, ") || !strings.Contains(out, " elapsed, ETA ") {
		t.Errorf("live line: %q", out)
	}
	if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("the live line should end with one newline when done: %q", out)
	}
	if last := out[strings.LastIndex(out, "\r"):]; strings.Contains(last, "ETA ?") {
		t.Errorf("no ETA once rollouts have finished: %q", last)
	}
}

const goldenSpec = `version: 1
name: golden
repl: {language: bash}
rollouts:
  - id: count
    repeat: 2
    turns:
      - code: "seq 1 3; export RLM_CONTENT=%s RLM_READY=1"
`

func TestGoldenFile(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "ci.golden")
	spec := filepath.Join(dir, "spec.yaml")
	write := func(answer string) {
		if err := os.WriteFile(spec, []byte(fmt.Sprintf(goldenSpec, answer)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (int, string, string) {
		return runCLI(t, append(append([]string{"run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir()}, args...), spec)...)
	}
	write("three")

	code, stdout, stderr := run("--golden", golden)
	if code != exitFailed || !strings.Contains(stdout+stderr, "read golden file") {
		t.Errorf("a missing golden file: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := run("--update-golden"); code != exitUsage || !strings.Contains(stderr, "--update-golden needs --golden") {
		t.Errorf("--update-golden alone: exit %d\n%s", code, stderr)
	}
	code, stdout, _ = run("--golden", golden, "--update-golden")
	if code != 0 || !strings.Contains(stdout, "golden: wrote") {
		t.Fatalf("--update-golden: exit %d\n%s", code, stdout)
	}
	lines, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(lines), "\n"); n != 2 || strings.Contains(string(lines), "volatile") {
		t.Errorf("golden file should hold 2 deterministic records:\n%s", lines)
	}
	digest := regexp.MustCompile(`digest: (sha256:[0-9a-f]{64})`)
	first := digest.FindStringSubmatch(stdout)

	code, stdout, _ = run("--golden", golden)
	if code != 0 || !strings.Contains(stdout, "golden: matches") {
		t.Fatalf("an unchanged spec should match: exit %d\n%s", code, stdout)
	}
	if again := digest.FindStringSubmatch(stdout); first == nil || again == nil || first[1] != again[1] {
		t.Errorf("digests differ across runs: %v %v", first, again)
	}

	write("four")
	code, stdout, _ = run("--golden", golden)
	if code != exitFailed {
		t.Fatalf("a changed result should exit %d, got %d\n%s", exitFailed, code, stdout)
	}
	for _, want := range []string{
		"golden: 4 difference(s)",
		"count#1: answer:\n    expected \"three\"\n    got      \"four\"",
		"count#2: turns[0].code:",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("diff lacks %q:\n%s", want, stdout)
		}
	}
	if d := digest.FindStringSubmatch(stdout); d == nil || d[1] == first[1] {
		t.Errorf("a changed result kept the digest: %v", d)
	}
}

// TestBackendOverrides runs one local spec on every backend from the
// command line: the rollouts really run there, and the digest is the same.
func TestBackendOverrides(t *testing.T) {
	spec := writeSpec(t, "version: 1\nname: over\nrepl: {language: python}\nrollouts:\n  - id: a\n    turns:\n      - code: \"import os\\nprint(sorted(os.listdir('.')))\\nanswer['content'] = str(6*7); answer['ready'] = True\"\n    expect: {answer: '42'}\n")
	_, err := exec.LookPath("bwrap")
	testbin.Need(t, err == nil, "bubblewrap")
	cases := []struct {
		flags    []string
		provider string
	}{
		{nil, ""},
		{[]string{"--provider", "bwrap"}, "bwrap"},
		{[]string{"--backend", "sandbox"}, "bwrap"},
		{[]string{"--provider", "docker", "--image", dockerTestImage}, "docker"},
	}
	digests := map[string]bool{}
	for _, tc := range cases {
		if tc.provider == "docker" {
			needDocker(t).Close()
		}
		out := filepath.Join(t.TempDir(), "r.jsonl")
		args := append([]string{"run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), "-o", out, "--json"}, tc.flags...)
		code, stdout, stderr := runCLI(t, append(args, spec)...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", tc.flags, code, stdout, stderr)
		}
		var sum jsonSummary
		if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
			t.Fatal(err)
		}
		digests[sum.Digest] = true
		res := readResults(t, out)
		facts := res[0]["volatile"].(map[string]any)["backend"].(map[string]any)
		if p, _ := facts["provider"].(string); p != tc.provider {
			t.Errorf("%v: ran on %v, want provider %q", tc.flags, facts, tc.provider)
		}
	}
	if len(digests) != 1 {
		t.Errorf("digests differ across backends: %v", digests)
	}
	if code, _, stderr := runCLI(t, "run", "--provider", "vm", spec); code != exitUsage || !strings.Contains(stderr, "--provider must be one of bwrap, docker") {
		t.Errorf("bad provider: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "run", "--backend", "cloud", spec); code != exitUsage || !strings.Contains(stderr, "--backend must be local or sandbox") {
		t.Errorf("bad backend: exit %d\n%s", code, stderr)
	}
}

// TestCtrlC: Ctrl-C once stops starting rollouts and lets the running one
// finish; twice cancels it. Both exit 130 and leave nothing behind.
func TestCtrlC(t *testing.T) {
	for _, twice := range []bool{false, true} {
		t.Run(fmt.Sprintf("twice=%v", twice), func(t *testing.T) {
			dir := t.TempDir()
			spec := filepath.Join(dir, "spec.yaml")
			marker := fmt.Sprintf("rlmrun-ctrlc-%d-%v", os.Getpid(), twice)
			release := filepath.Join(dir, "release")
			// The running rollout waits for the release file (or, cancelled,
			// is killed); the last one must never start.
			body := fmt.Sprintf(`version: 1
name: ctrlc
rollouts:
  - id: first
    turns: [{code: 'export RLM_CONTENT=1 RLM_READY=1'}]
  - id: running
    turns: [{code: 'bash -c "exec -a %s sleep 1000" & while [ ! -e %s ]; do sleep 0.05; done; kill $!; export RLM_CONTENT=2 RLM_READY=1'}]
  - id: never
    turns: [{code: 'export RLM_CONTENT=3 RLM_READY=1'}]
`, marker, release)
			if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			tmp := t.TempDir()
			out := filepath.Join(dir, "out")
			junit := filepath.Join(dir, "report.xml")
			cmd := exec.Command(rlmrunBin, "run", "-j", "1", "--json", "--junit", junit, "--out-dir", out, spec)
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			var stdout, stderr syncBuffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the running rollout", func() bool { return len(testbin.Procs(marker)) > 0 })
			_ = cmd.Process.Signal(syscall.SIGINT)
			waitFor(t, "the drain message", func() bool { return strings.Contains(stderr.String(), "no new rollouts") })
			if twice {
				_ = cmd.Process.Signal(syscall.SIGINT)
			} else {
				// Draining: the running rollout goes on until released.
				time.Sleep(300 * time.Millisecond)
				if len(testbin.Procs(marker)) == 0 {
					t.Error("Ctrl-C once killed the running rollout")
				}
				if err := os.WriteFile(release, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_ = cmd.Wait()
			if code := cmd.ProcessState.ExitCode(); code != exitInterrupted {
				t.Fatalf("exit %d, want %d\n%s", code, exitInterrupted, stderr.String())
			}
			if left := testbin.Procs(marker); len(left) > 0 {
				t.Errorf("processes left behind: %v", left)
			}
			if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
				t.Errorf("temp files left behind: %v", entries)
			}
			var sum jsonSummary
			if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
				t.Fatalf("--json: %v\n%s", err, stdout.String())
			}
			if !sum.Interrupted || sum.NotStarted != 1 || sum.Rollouts != 2 {
				t.Errorf("summary: %+v", sum)
			}
			// The rollout that never started is a skipped test case.
			raw, err := os.ReadFile(junit)
			if err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`tests="3" failures="\d+" errors="\d+" skipped="1"`).Match(raw) ||
				!regexp.MustCompile(`<testcase name="never"[^>]*>\s*<skipped message="not started`).Match(raw) {
				t.Errorf("JUnit report:\n%s", raw)
			}
			got := statuses(t, out)
			want := map[string]string{"first": "completed", "running": "completed"}
			if twice {
				want["running"] = "error"
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("statuses %v, want %v", got, want)
			}
		})
	}
}

// Report flags never overwrite the spec or a file it uses, are checked
// before the first rollout (exit 2), and are written whole.
func TestReportsNeverOverwriteInputs(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"ctx/a.txt":  "context",
		"tools/t.sh": "#!/bin/sh\necho tool\n",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec := filepath.Join(dir, "spec.yaml")
	body := "version: 1\nname: reports\nfilesystem: {context_dir: ctx}\nroot_tools: [{name: t, run: [tools/t.sh]}]\nrollouts:\n  - id: r\n    turns: [{code: 'export RLM_CONTENT=1 RLM_READY=1'}]\n"
	if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	cases := []struct {
		name string
		args []string
		msg  string
	}{
		{"output is the spec", []string{"--output", spec}, "--output " + spec + " would overwrite " + spec},
		{"junit in the context dir", []string{"--junit", filepath.Join(dir, "ctx", "report.xml")}, "which the spec uses"},
		{"golden is a tool", []string{"--golden", filepath.Join(dir, "tools", "t.sh"), "--update-golden"}, "which the spec uses"},
		{"two reports, one file", []string{"--output", filepath.Join(dir, "x"), "--junit", filepath.Join(dir, "x")}, "name the same file"},
		{"unwritable folder", []string{"--junit", filepath.Join(dir, "missing", "r.xml")}, "cannot be written"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"run", "--agent-binary", rlmrunBin, "--out-dir", out}, tc.args...)
			code, stdout, stderr := runCLI(t, append(args, spec)...)
			if code != exitUsage || !strings.Contains(stderr, tc.msg) {
				t.Fatalf("exit %d, want 2 with %q:\n%s%s", code, tc.msg, stdout, stderr)
			}
			if entries, _ := os.ReadDir(out); len(entries) != 0 {
				t.Errorf("a rollout ran before the report paths were checked: %v", entries)
			}
		})
	}
	if b, _ := os.ReadFile(spec); string(b) != body {
		t.Fatal("the spec was overwritten")
	}
	// A good run writes its reports whole, leaving no temporary file.
	reports := t.TempDir()
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", out,
		"--output", filepath.Join(reports, "r.jsonl"), "--junit", filepath.Join(reports, "r.xml"),
		"--golden", filepath.Join(reports, "g.jsonl"), "--update-golden", spec)
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	entries, _ := os.ReadDir(reports)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "g.jsonl r.jsonl r.xml" {
		t.Errorf("report folder: %v", names)
	}
}

// Model-controlled text (answers, errors, file names) reaches the terminal
// escaped: no escape sequence of the model's is ever emitted.
func TestTerminalOutputIsEscaped(t *testing.T) {
	spec := writeSpec(t, `version: 1
name: escapes
backend: {sandbox: {disk_size_gb: 0.001}}
rollouts:
  - id: answer
    turns: [{code: "export RLM_CONTENT=$'\\e]0;pwned\\a\\e[2J\\u009b31mred\\u202e' RLM_READY=1"}]
    expect: {answer: "x"}
  - id: names
    turns: [{code: "ln -s /etc $'\\e[31mevil\\e[0m'; export RLM_READY=1"}]
`)
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "--out-dir", t.TempDir(), spec)
	if code != exitFailed {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	all := stdout + stderr
	for _, bad := range []string{"\x1b", "\x07", "\u009b", "\u202e"} {
		if strings.Contains(all, bad) {
			t.Errorf("output holds %q:\n%q", bad, all)
		}
	}
	if !strings.Contains(all, `\x1b]0;pwned\x07`) || !strings.Contains(all, `\x1b[31mevil\x1b[0m -> /etc (an absolute symlink)`) {
		t.Errorf("escaped forms missing:\n%s", all)
	}
}
