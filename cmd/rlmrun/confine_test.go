package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/rlmrun/rlmrun/backends/confine"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// TestLocalSecretsStayPut: two rollouts at once on the local backend (-j
// 2); one looks through /proc for the runner's OPENAI_API_KEY and for the
// other's RLM_SECRET. Confined, it finds neither; with confinement off it
// finds them (so the probe works).
func TestLocalSecretsStayPut(t *testing.T) {
	testbin.Need(t, confine.ABI() >= 6, "Landlock ABI >= 6")
	probe := `sleep 3; n=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -e sk-runner-key-0123456789 -e '^RLM_SECRET=' | grep -v -x "RLM_SECRET=$RLM_SECRET" | sort -u | wc -l); export RLM_CONTENT="found $n" RLM_READY=1`
	for _, c := range []struct{ confinement, want string }{
		{confine.BestEffort, "found 0"},
		{confine.Off, "found 2"},
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
				if r.ID == "mine" && r.Answer != c.want {
					t.Errorf("confinement %s: %q, want %q", c.confinement, r.Answer, c.want)
				}
			}
		})
	}
}
