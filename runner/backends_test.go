package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/fakellm"
	"github.com/rlmrun/rlmrun/internal/testbin"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/backends/sandbox/docker"
	"github.com/rlmrun/rlmrun/backends/sandbox/kubernetes"
	"github.com/rlmrun/rlmrun/schema"
)

// deterministic is a result without its volatile part, as the golden file
// and the digest see it.
func deterministic(t *testing.T, r *Result) []byte {
	t.Helper()
	b, err := Deterministic(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newBwrap is a bubblewrap sandbox executor, with the spec's sandbox
// settings, on a state root of its own (removed when the test ends). The
// provider is returned to be closed early by tests that check what is left
// after it.
func newBwrap(t testing.TB, spec *schema.Spec) (*sandbox.Executor, *bwrap.Provider, string) {
	t.Helper()
	_, err := exec.LookPath("bwrap")
	testbin.Need(t, err == nil, "bubblewrap")
	state, err := os.MkdirTemp("/tmp", "rlmrun-test-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: SandboxSettings(spec.Backend.Sandbox)})
	if err != nil {
		t.Fatal(err)
	}
	return ex, p, state
}

// newDocker is a Docker sandbox executor with the spec's settings and the
// test image.
func newDocker(t testing.TB, spec *schema.Spec) *sandbox.Executor {
	t.Helper()
	spec.Backend.Type = "sandbox"
	spec.Backend.Sandbox.Provider = "docker"
	spec.Backend.Sandbox.Image, spec.Backend.Sandbox.Pull = dockerTestImage, "never"
	p, err := docker.Factory(context.Background(), sandbox.FactoryOptions{AgentPath: agentBin, Config: SandboxConfig(spec.Backend.Sandbox)})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: SandboxSettings(spec.Backend.Sandbox)})
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// kubeReady says whether the test cluster is there (scripts/test starts
// it and sets RLMRUN_KUBECONFIG; under it, its absence fails the test).
func kubeReady(t *testing.T) bool {
	ok := os.Getenv("RLMRUN_KUBECONFIG") != ""
	if !ok && testbin.Required() {
		t.Fatal("RLMRUN_KUBECONFIG is not set, and RLMRUN_REQUIRE_ALL is: scripts/test starts the test cluster")
	}
	return ok
}

// newKube is a kubernetes sandbox executor on the test cluster, with the
// spec's settings (less CPU: the cluster is one small node) and the test
// image.
func newKube(t testing.TB, spec *schema.Spec) *sandbox.Executor {
	t.Helper()
	spec.Backend.Type = "sandbox"
	spec.Backend.Sandbox.Provider = "kubernetes"
	spec.Backend.Sandbox.Image, spec.Backend.Sandbox.Pull = dockerTestImage, "never"
	spec.Backend.Sandbox.CPUCores = 0.2
	spec.Backend.Sandbox.Kubernetes = &schema.Kubernetes{Kubeconfig: os.Getenv("RLMRUN_KUBECONFIG"), Namespace: "default"}
	p, err := kubernetes.Factory(context.Background(), sandbox.FactoryOptions{AgentPath: agentBin, Config: SandboxConfig(spec.Backend.Sandbox)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: SandboxSettings(spec.Backend.Sandbox)})
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// TestExamplesSameOnEveryBackend runs every example on the local backend
// and in a bubblewrap sandbox: the deterministic part of every result must
// be byte-identical, paths shown to the model included.
func TestExamplesSameOnEveryBackend(t *testing.T) {
	_, err := exec.LookPath("bwrap")
	testbin.Need(t, err == nil, "bubblewrap")
	specs, _ := filepath.Glob("../examples/*.yaml")
	more, _ := filepath.Glob("../examples/*/*.yaml")
	specs = append(specs, more...)
	if len(specs) < 6 {
		t.Fatalf("only %d examples", len(specs))
	}
	backendsToTry := []string{"local", "sandbox"}
	if dockerReady(t) {
		backendsToTry = append(backendsToTry, "docker")
	}
	if kubeReady(t) {
		backendsToTry = append(backendsToTry, "kubernetes")
	}
	srv := fakellm.Start(fakellm.Options{Policy: fakellm.Secrets})
	defer srv.Close()
	for _, path := range specs {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			results := map[string]map[string][]byte{}
			for _, be := range backendsToTry {
				spec, err := schema.Load(path)
				if err != nil {
					t.Fatal(err)
				}
				spec.Backend.Type = be
				spec.Retention.Filesystem = false
				if spec.Model != nil {
					spec.Model.BaseURL = srv.URL
				}
				var b Backend
				switch be {
				case "local":
					b, err = local.New(local.Options{AgentPath: agentBin})
				case "docker":
					b = newDocker(t, spec)
				case "kubernetes":
					b = newKube(t, spec)
				default:
					b, _, _ = newBwrap(t, spec)
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
					if r.Model != "" {
						// A model's conversation carries Python's execution
						// times, its token counts and its servers' call ids:
						// what the model did is compared.
						delete(r.Metrics, "root_llm_prompt_tokens")
						b, _ := json.Marshal([]any{r.Status, r.StopReason, r.Answer, r.Reward, r.Turns, r.Metrics})
						results[be][r.ID] = b
						continue
					}
					results[be][r.ID] = deterministic(t, r)
				}
			}
			for _, be := range backendsToTry[1:] {
				for id, l := range results["local"] {
					if s := results[be][id]; !bytes.Equal(l, s) {
						t.Errorf("%s differs between local and %s:\n local %s\n %s %s", id, be, l, be, s)
					}
				}
			}
		})
	}
}

// TestFailedSyncBackIsAnError: when the working directory cannot be
// downloaded, the rollout errors and is not scored on stale files (the
// reference only logged a warning).
func TestFailedSyncBackIsAnError(t *testing.T) {
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
	ex, _, _ := newBwrap(t, spec)
	r := runSpec(t, spec, func(o *Options) { o.Backend = ex }).Results[0]
	if r.Status != StatusError || r.Reward != nil || r.Answer != "done" {
		t.Fatalf("result: status %s reward %v answer %q error %q", r.Status, r.Reward, r.Answer, r.Error)
	}
	if want := "sync the working directory back: could not read 1 entry of the working directory: unreadable.txt: permission denied"; !strings.Contains(r.Error, want) {
		t.Fatalf("error %q lacks %q", r.Error, want)
	}
	if r.Volatile.Seconds > 10 {
		t.Errorf("a failed sync-back took %.1fs to end (the polite shutdown waits 15 s)", r.Volatile.Seconds)
	}
}

// dockerTestImage is built by scripts/docker-test-image.
const dockerTestImage = "rlmrun-test:latest"

// dockerReady reports whether a Docker daemon with the test image answers;
// without one the Docker leg is skipped (or fails, when required).
func dockerReady(t *testing.T) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := docker.Factory(ctx, sandbox.FactoryOptions{}); err != nil {
		if testbin.Required() {
			t.Fatalf("no Docker daemon (%v), and RLMRUN_REQUIRE_ALL is set", err)
		}
		t.Logf("no Docker daemon (%v): the Docker leg is skipped", err)
		return false
	}
	if exec.Command("docker", "image", "inspect", dockerTestImage).Run() != nil {
		if out, err := exec.Command("../scripts/docker-test-image", dockerTestImage).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", dockerTestImage, err, out)
		}
	}
	return true
}

// TestSandboxNamesAreUnique runs rollouts whose ids read alike once made
// safe for a sandbox name ("a#1" from repeat, and "a_1") side by side, in
// bubblewrap and in Docker: each gets its own sandbox.
func TestSandboxNamesAreUnique(t *testing.T) {
	body := `version: 1
name: alike
backend: {type: sandbox}
rollouts:
  - id: a
    repeat: 2
    turns: [{code: "sleep 1; export RLM_CONTENT=$RLM_WORKDIR RLM_READY=1"}]
  - id: a_1
    turns: [{code: "sleep 1; export RLM_CONTENT=$RLM_WORKDIR RLM_READY=1"}]
`
	try := map[string]func(*schema.Spec) Backend{
		"bwrap": func(spec *schema.Spec) Backend { ex, _, _ := newBwrap(t, spec); return ex },
	}
	if dockerReady(t) {
		try["docker"] = func(spec *schema.Spec) Backend { return newDocker(t, spec) }
	}
	for name, backend := range try {
		t.Run(name, func(t *testing.T) {
			spec := loadSpec(t, body, nil)
			b := backend(spec)
			rep := runSpec(t, spec, func(o *Options) { o.Backend = b; o.Concurrency = 3 })
			ids := map[string]bool{}
			for _, r := range rep.Results {
				if r.Status != StatusCompleted || r.Volatile.Facts == nil {
					t.Fatalf("%s: %s %s", r.ID, r.Status, r.Error)
				}
				ids[r.Volatile.Facts.SandboxID] = true
			}
			if len(ids) != 3 {
				t.Errorf("3 rollouts ran in %d sandboxes: %v", len(ids), ids)
			}
		})
	}
}

// TestSyncBackKeepsLinksAndReportsSkipped: symlinks that stay inside come
// back as symlinks; what cannot (links out, FIFOs, sockets) is reported, the
// same on every backend, never dropped silently.
func TestSyncBackKeepsLinksAndReportsSkipped(t *testing.T) {
	body := `version: 1
name: special-files
retention: {filesystem: true}
rewards:
  - {name: link, files: {exists: [link, sub/up], content: {path: link, equals: "kept"}}}
rollouts:
  - id: r
    turns:
      - code: |
          echo kept > target.txt
          ln -s target.txt link
          mkdir sub && ln -s ../target.txt sub/up
          ln -s /etc/passwd abs
          ln -s ../../../../etc out
          mkfifo pipe
          /usr/bin/python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("sock")'
          export RLM_READY=1
`
	want := []string{"abs -> /etc/passwd (an absolute symlink)", "out -> ../../../../etc (a symlink that leads out of the working directory)", "pipe (a named pipe)", "sock (a socket)"}
	var got [][]byte
	for _, be := range []string{"local", "bwrap"} {
		t.Run(be, func(t *testing.T) {
			spec := loadSpec(t, body, nil)
			var mod func(*Options)
			if be == "bwrap" {
				ex, _, _ := newBwrap(t, spec)
				spec.Backend.Type = "sandbox"
				mod = func(o *Options) { o.Backend = ex }
			}
			r := runSpec(t, spec, func(o *Options) {
				if mod != nil {
					mod(o)
				}
			}).Results[0]
			if r.Status != StatusCompleted || r.Reward == nil || *r.Reward != 1 {
				t.Fatalf("status %s reward %v %+v %s", r.Status, r.Reward, r.Rewards, r.Error)
			}
			skipped := append([]string(nil), r.Skipped...)
			sort.Strings(skipped)
			if strings.Join(skipped, "\n") != strings.Join(want, "\n") {
				t.Errorf("skipped:\n%s\nwant:\n%s", strings.Join(skipped, "\n"), strings.Join(want, "\n"))
			}
			if target, err := os.Readlink(filepath.Join(r.Volatile.RetainedDir, "link")); err != nil || target != "target.txt" {
				t.Errorf("retained link: %q %v", target, err)
			}
			got = append(got, deterministic(t, r))
		})
	}
	if len(got) == 2 && !bytes.Equal(got[0], got[1]) {
		t.Errorf("local and bwrap differ:\n%s\n%s", got[0], got[1])
	}
}

// TestFailedSyncBackFailsFastAndKeepsNothing: a download over its limit is
// an error that names the limit, ends promptly (no polite shutdown of an
// agent that cannot answer), and no partial tree is kept as the result.
func TestFailedSyncBackFailsFastAndKeepsNothing(t *testing.T) {
	// Local: in a sandbox the tmpfs of disk_size_gb refuses the writes first.
	spec := loadSpec(t, `version: 1
name: too-big
backend: {sandbox: {disk_size_gb: 0.01}}
retention: {filesystem: true}
rollouts:
  - id: r
    turns:
      - code: "for i in $(seq 1 20); do head -c 1000000 /dev/zero > f$i; done; export RLM_READY=1"
`, nil)
	r := runSpec(t, spec).Results[0]
	if r.Status != StatusError || !strings.Contains(r.Error, "more than 10737418 bytes (the limits: disk_size_gb 0.01, 1000000 files and directories)") {
		t.Fatalf("status %s error %q", r.Status, r.Error)
	}
	if r.Volatile.RetainedDir != "" {
		t.Errorf("a failed sync-back was retained as the result: %s", r.Volatile.RetainedDir)
	}
	t.Logf("rollout took %.1fs", r.Volatile.Seconds)
	if r.Volatile.Seconds > 10 {
		t.Errorf("a failed sync-back took %.1fs to end (the polite shutdown waits 15 s)", r.Volatile.Seconds)
	}
}

// TestSyncBackOfManyFiles: 300,000 files come back whole (the old fixed
// 30 s deadline failed them).
func TestSyncBackOfManyFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("a 300,000-file sync-back")
	}
	spec := loadSpec(t, `version: 1
name: many-files
backend: {type: sandbox}
repl: {language: python}
rewards:
  - {name: all, files: {glob: "d/*", count: 300000}}
rollouts:
  - id: r
    turns:
      - code: |
          import os
          os.mkdir("d")
          for i in range(300000):
              open(f"d/{i}", "w").close()
          answer["ready"] = True
`, nil)
	ex, _, _ := newBwrap(t, spec)
	r := runSpec(t, spec, func(o *Options) { o.Backend = ex }).Results[0]
	t.Logf("rollout %.1fs, download %.1fs", r.Volatile.Seconds, r.Volatile.DownloadMS/1000)
	if r.Status != StatusCompleted || r.Reward == nil || *r.Reward != 1 {
		t.Fatalf("status %s reward %v error %q", r.Status, r.Reward, r.Error)
	}
}
