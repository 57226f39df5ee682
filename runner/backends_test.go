package runner

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/schema"
)

// deterministic is a result without its volatile part, as JSON.
func deterministic(t *testing.T, r *Result) []byte {
	t.Helper()
	c := *r
	c.Volatile = Volatile{}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestExamplesSameOnEveryBackend runs every example on the local backend
// and in a bubblewrap sandbox: the deterministic part of every result must
// be byte-identical, paths shown to the model included.
func TestExamplesSameOnEveryBackend(t *testing.T) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("bubblewrap is not installed (scripts/test installs it)")
	}
	specs, _ := filepath.Glob("../examples/*.yaml")
	more, _ := filepath.Glob("../examples/*/*.yaml")
	specs = append(specs, more...)
	if len(specs) < 6 {
		t.Fatalf("only %d examples", len(specs))
	}
	state, err := os.MkdirTemp("/tmp", "rlmrun-test-state-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	if err := os.Chmod(state, 0o711); err != nil {
		t.Fatal(err)
	}
	for _, path := range specs {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			results := map[string]map[string][]byte{}
			for _, be := range []string{"local", "sandbox"} {
				spec, err := schema.Load(path)
				if err != nil {
					t.Fatal(err)
				}
				spec.Backend.Type = be
				spec.Retention.Filesystem = false
				var b Backend
				if be == "local" {
					b, err = local.New(local.Options{AgentPath: agentBin})
				} else {
					p, perr := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: state})
					if perr != nil {
						t.Fatal(perr)
					}
					defer p.Close()
					b, err = sandbox.NewExecutor(sandbox.Options{Provider: p, AgentPath: agentBin})
				}
				if err != nil {
					t.Fatal(err)
				}
				rep := runSpec(t, spec, func(o *Options) { o.Backend = b })
				results[be] = map[string][]byte{}
				for _, r := range rep.Results {
					if !r.Passed {
						t.Errorf("%s on %s did not pass: %s %+v", r.ID, be, r.Error, r.Expect)
					}
					if be == "sandbox" && r.Volatile.Facts != nil && r.Volatile.Facts.Backend != "sandbox" {
						t.Errorf("%s ran on %s", r.ID, r.Volatile.Facts.Backend)
					}
					results[be][r.ID] = deterministic(t, r)
				}
			}
			for id, l := range results["local"] {
				if s := results["sandbox"][id]; !bytes.Equal(l, s) {
					t.Errorf("%s differs between backends:\n local   %s\n sandbox %s", id, l, s)
				}
			}
		})
	}
}

// TestFailedSyncBackIsAnError: when the working directory cannot be
// downloaded, the rollout errors and is not scored on stale files (the
// reference only logged a warning).
func TestFailedSyncBackIsAnError(t *testing.T) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("bubblewrap is not installed (scripts/test installs it)")
	}
	state, err := os.MkdirTemp("/tmp", "rlmrun-test-state-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	_ = os.Chmod(state, 0o711)
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: state})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, AgentPath: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	spec := loadSpec(t, `version: 1
name: sync-fails
backend: {type: sandbox}
rewards:
  - {name: file, files: {exists: [unreadable.txt]}}
rollouts:
  - id: r
    turns:
      - code: "echo secret > unreadable.txt; chmod 000 unreadable.txt; export RLM_CONTENT=done RLM_READY=1"
`, nil)
	r := runSpec(t, spec, func(o *Options) { o.Backend = ex }).Results[0]
	if r.Status != StatusError || r.Reward != nil || r.Answer != "done" {
		t.Fatalf("result: status %s reward %v answer %q error %q", r.Status, r.Reward, r.Answer, r.Error)
	}
	if want := "sync the working directory back"; !bytes.Contains([]byte(r.Error), []byte(want)) {
		t.Fatalf("error %q lacks %q", r.Error, want)
	}
}
