package main

import (
	"fmt"
	"github.com/rlmrun/rlmrun/internal/testbin"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sandboxSpec writes a sandboxed spec whose only cell runs `sleep 1000`
// under the process name marker.
func sandboxSpec(t *testing.T, dir, marker string) string {
	t.Helper()
	p := filepath.Join(dir, marker+".yaml")
	body := fmt.Sprintf("version: 1\nname: killed\nbackend: {type: sandbox}\nrollouts:\n  - id: slow\n    turns: [{code: 'exec -a %s sleep 1000'}]\n", marker)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testbin.Eventually(t, what, 20*time.Second, cond)
}

// TestSIGKILLLeavesNoProcessAndCleanupFindsTheRest kills a sandboxed run
// with SIGKILL: its sandbox dies with it (nothing keeps running), what is
// left on disk is found by `rlmrun cleanup` and removed, and a live
// concurrent run's sandbox is never touched.
func TestSIGKILLLeavesNoProcessAndCleanupFindsTheRest(t *testing.T) {
	_, err := exec.LookPath("bwrap")
	testbin.Need(t, err == nil, "bubblewrap")
	tmp, err := os.MkdirTemp("/tmp", "rlmrun-test-tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o711); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "TMPDIR="+tmp, "RLMRUN_STATE_DIR="+filepath.Join(tmp, "state"))
	dir := t.TempDir()
	start := func(marker string) *exec.Cmd {
		cmd := exec.Command(rlmrunBin, "run", "--out-dir", filepath.Join(dir, "out"), sandboxSpec(t, dir, marker))
		cmd.Env = env
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, marker+" to run in its sandbox", func() bool { return len(testbin.Procs(marker)) > 0 })
		return cmd
	}
	killed := fmt.Sprintf("rlmrun-killed-%d", os.Getpid())
	live := fmt.Sprintf("rlmrun-live-%d", os.Getpid())
	victim := start(killed)
	survivor := start(live)
	defer func() {
		_ = survivor.Process.Signal(syscall.SIGTERM)
		_ = survivor.Wait()
	}()

	_ = victim.Process.Kill()
	_ = victim.Wait()
	// bwrap's --die-with-parent takes the whole sandbox down with the runner.
	waitFor(t, "the killed run's sandbox to die", func() bool { return len(testbin.Procs(killed)) == 0 })

	cleanup := func(args ...string) string {
		cmd := exec.Command(rlmrunBin, append([]string{"cleanup"}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("cleanup %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	listed := cleanup("--dry-run")
	if !strings.Contains(listed, "would remove bwrap sandbox rlmrun-") || strings.Count(listed, "bwrap sandbox") != 1 {
		t.Fatalf("dry run should list exactly the killed run's sandbox:\n%s", listed)
	}
	if !strings.Contains(listed, "would remove run directory") {
		t.Errorf("dry run should list the killed run's directory:\n%s", listed)
	}
	removed := cleanup()
	if !strings.Contains(removed, "removed bwrap sandbox") {
		t.Fatalf("cleanup removed nothing:\n%s", removed)
	}
	if again := cleanup("--dry-run"); !strings.Contains(again, "nothing to clean up") {
		t.Fatalf("something is left:\n%s", again)
	}
	// The live run still runs, in its sandbox.
	if len(testbin.Procs(live)) == 0 {
		t.Fatal("cleanup touched the live run's sandbox")
	}
	states, _ := filepath.Glob(filepath.Join(tmp, "state", "sandboxes", "rlmrun-*"))
	if len(states) != 1 {
		t.Fatalf("sandbox states: %v (want the live run's only)", states)
	}
	// And the live run, stopped, cleans up after itself.
	_ = survivor.Process.Signal(syscall.SIGTERM)
	_ = survivor.Wait()
	waitFor(t, "the live run's sandbox to go", func() bool { return len(testbin.Procs(live)) == 0 })
	if states, _ := filepath.Glob(filepath.Join(tmp, "state", "sandboxes", "*")); len(states) != 0 {
		t.Fatalf("left after a clean stop: %v", states)
	}
}

// TestSIGKILLLocalRunLeavesNoProcess kills a local run with SIGKILL while
// its cell's processes have left the worker's session: they die with the
// agent's PID namespace, and cleanup then finds only the run directory.
func TestSIGKILLLocalRunLeavesNoProcess(t *testing.T) {
	tmp, err := os.MkdirTemp("/tmp", "rlmrun-test-tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	env := append(os.Environ(), "TMPDIR="+tmp, "RLMRUN_STATE_DIR="+filepath.Join(tmp, "state"))
	dir := t.TempDir()
	tag := fmt.Sprintf("rlmrun-sigkill-local-%d", os.Getpid())
	spec := filepath.Join(dir, "spec.yaml")
	body := fmt.Sprintf(`version: 1
name: killed-local
rollouts:
  - id: slow
    turns:
      - code: "setsid bash -c 'exec -a %[1]s-setsid sleep 1000' &"
      - code: "setsid -f bash -c 'exec -a %[1]s-setsid-f sleep 1000'"
      - code: "exec -a %[1]s-cell sleep 1000"
`, tag)
	if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(rlmrunBin, "run", "--out-dir", filepath.Join(dir, "out"), spec)
	cmd.Env = env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the cell to run", func() bool { return len(testbin.Procs(tag+"-cell")) > 0 })
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitFor(t, "every process of the killed run to end", func() bool {
		return len(testbin.Procs(tag+"-cell"))+len(testbin.Procs(tag+"-setsid"))+len(testbin.Procs(tag+"-setsid-f")) == 0
	})
	c := exec.Command(rlmrunBin, "cleanup", "--dry-run")
	c.Env = env
	if out, _ := c.CombinedOutput(); !strings.Contains(string(out), "would remove run directory") || strings.Contains(string(out), "process") {
		t.Errorf("cleanup --dry-run after the killed local run:\n%s", out)
	}
}
