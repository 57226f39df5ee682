package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rlmrun/rlmrun/backends/confine"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// TestLocalSecretsStayPut: two rollouts at once on the local backend (-j
// 2); one looks through /proc for the runner's OPENAI_API_KEY and for the
// other's RLM_SECRET. Confined, it finds neither; with confinement off it
// finds them (so the probe works).
func TestLocalSecretsStayPut(t *testing.T) {
	testbin.Need(t, confine.KernelABI() >= 6, "Landlock ABI >= 6")
	probe := `sleep 3; n=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -e sk-runner-key-0123456789 -e '^RLM_SECRET=' | grep -v -x "RLM_SECRET=$RLM_SECRET" | sort -u | wc -l); export RLM_CONTENT="found $n" RLM_READY=1`
	// Unconfined, the probe finds at least the runner's key and the other
	// rollout's secret (more when other tests' rollouts run meanwhile, as
	// under scripts/test's parallel race run); confined, nothing.
	for _, c := range []struct {
		confinement string
		ok          func(n int) bool
		want        string
	}{
		{confine.BestEffort, func(n int) bool { return n == 0 }, "found 0"},
		{confine.Off, func(n int) bool { return n >= 2 }, "found 2 or more"},
	} {
		t.Run(c.confinement, func(t *testing.T) {
			spec := writeSpec(t, `version: 1
name: secrets
backend: {type: local, local: {confinement: `+c.confinement+`}}
rollouts:
  - id: theirs
    turns: [{code: 'sleep 8'}]
  - id: mine
    turns:
      - code: |
          `+probe+`
`)
			out := t.TempDir()
			cmd := exec.Command(rlmrunBin, "run", "-q", "-j", "2", "--out-dir", out, spec)
			cmd.Env = append(os.Environ(), "OPENAI_API_KEY=sk-runner-key-0123456789")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v\n%s", err, b)
			}
			results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
			if len(results) != 1 {
				t.Fatalf("results: %v", results)
			}
			f, err := os.Open(results[0])
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<24)
			for sc.Scan() {
				var r struct {
					ID     string `json:"id"`
					Answer string `json:"answer"`
				}
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					t.Fatal(err)
				}
				var n int
				if r.ID == "mine" {
					if _, err := fmt.Sscanf(r.Answer, "found %d", &n); err != nil || !c.ok(n) {
						t.Errorf("confinement %s: %q, want %s", c.confinement, r.Answer, c.want)
					}
				}
			}
		})
	}
}

// TestCgoBuildRunsUnconfined: rlmrun built with cgo (a plain `go install`
// where gcc is found) cannot confine its agent; it runs rollouts
// unconfined and says so (best-effort), and refuses `required` with the fix.
func TestCgoBuildRunsUnconfined(t *testing.T) {
	_, err := exec.LookPath("gcc")
	testbin.Need(t, err == nil, "gcc (for a cgo build)")
	bin := filepath.Join(t.TempDir(), "rlmrun-cgo")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cgo build: %v\n%s", err, out)
	}
	env := filepath.Join(t.TempDir(), "env")
	if out, err := exec.Command(bin, "init", env).CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	out := t.TempDir()
	if b, err := exec.Command(bin, "run", "-q", "--out-dir", out, filepath.Join(env, "spec.yaml")).CombinedOutput(); err != nil {
		t.Fatalf("run with a cgo build: %v\n%s", err, b)
	}
	results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
	if len(results) != 1 {
		t.Fatalf("results: %v", results)
	}
	for _, r := range readResults(t, results[0]) {
		backend, _ := r["volatile"].(map[string]any)["backend"].(map[string]any)
		if r["passed"] != true || backend["confinement"] != "none" {
			t.Errorf("passed %v, confinement %v: want a passing, unconfined rollout", r["passed"], backend["confinement"])
		}
	}
	spec := writeSpec(t, "version: 1\nname: strict\nbackend: {type: local, local: {confinement: required}}\nrollouts: [{id: r, turns: [{code: 'true'}]}]\n")
	b, err := exec.Command(bin, "run", "-q", "--out-dir", t.TempDir(), spec).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "built with cgo") || !strings.Contains(string(b), "CGO_ENABLED=0") {
		t.Errorf("confinement: required with a cgo build: %v\n%s", err, b)
	}
}
