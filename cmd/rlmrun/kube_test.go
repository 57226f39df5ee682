package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/kubernetes"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// needKube is the test cluster's provider (scripts/test starts the cluster
// and sets RLMRUN_KUBECONFIG).
func needKube(t *testing.T) (*kubernetes.Provider, string) {
	t.Helper()
	kc := os.Getenv("RLMRUN_KUBECONFIG")
	testbin.Need(t, kc != "", "a Kubernetes cluster (scripts/test starts one with scripts/kube-test-cluster and sets RLMRUN_KUBECONFIG)")
	p, err := kubernetes.New(context.Background(), kubernetes.Options{Config: kubernetes.Config{Kubernetes: kubernetes.Settings{Kubeconfig: kc, Namespace: "default"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p, kc
}

// kubeSpec is a spec on the test cluster.
func kubeSpec(t *testing.T, kc, rollouts string) string {
	return writeSpec(t, fmt.Sprintf(`version: 1
name: kube
backend:
  type: sandbox
  sandbox:
    provider: kubernetes
    image: %s
    pull: never
    cpu_cores: 0.05
    memory_gb: 0.125
    disk_size_gb: 0.05
    kubernetes: {kubeconfig: %q, namespace: default}
rollouts:
%s`, dockerTestImage, kc, rollouts))
}

// TestKubernetesSIGKILLAndCleanup: a runner killed with SIGKILL leaves pods
// that end (their agent's stream dropped) and that `rlmrun cleanup`
// removes, with the run's NetworkPolicy: nothing is left.
func TestKubernetesSIGKILLAndCleanup(t *testing.T) {
	p, kc := needKube(t)
	spec := kubeSpec(t, kc, "  - id: slow\n    turns: [{code: 'sleep 1000'}]\n")
	cmd := exec.Command(rlmrunBin, "run", "--out-dir", t.TempDir(), spec)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var runID string
	if !testbin.Within(60*time.Second, func() bool {
		infos, _ := p.List(context.Background(), map[string]string{sandbox.LabelOwnerPID: fmt.Sprint(cmd.Process.Pid)})
		if len(infos) == 1 {
			runID = infos[0].Labels[sandbox.LabelRun]
			return true
		}
		return false
	}) {
		_ = cmd.Process.Kill()
		t.Fatal("the rollout's pod never appeared")
	}
	time.Sleep(2 * time.Second) // the cell runs
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	t.Setenv("KUBECONFIG", kc)
	code, out, errOut := runCLI(t, "cleanup", "--run", runID)
	if code != 0 || !strings.Contains(out, "removed kubernetes sandbox") || !strings.Contains(out, "removed kubernetes NetworkPolicy") {
		t.Fatalf("cleanup: exit %d\n%s%s", code, out, errOut)
	}
	if infos, _ := p.List(context.Background(), map[string]string{sandbox.LabelRun: runID}); len(infos) != 0 {
		t.Errorf("pods left: %+v", infos)
	}
	left, _ := sandbox.Leftovers(context.Background(), p, runID)
	if len(left) != 0 {
		t.Errorf("leftovers after cleanup: %v", left)
	}
}

// TestKubernetesManyRollouts: -j 32 on the test cluster, every rollout
// through, every pod gone at the end.
func TestKubernetesManyRollouts(t *testing.T) {
	if testing.Short() {
		t.Skip("32 pods")
	}
	p, kc := needKube(t)
	spec := kubeSpec(t, kc, `  - id: r
    repeat: 32
    turns:
      - code: 'echo hello from $(hostname) > note.txt; export RLM_CONTENT=$(cat note.txt | cut -d" " -f1-2) RLM_READY=1'
    expect: {status: completed, answer: hello from}
`)
	out := t.TempDir()
	code, stdout, stderr := runCLI(t, "run", "--agent-binary", rlmrunBin, "-j", "32", "--out-dir", out, spec)
	if code != 0 || !strings.Contains(stdout, "32 rollout(s): 32 completed") {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	results, _ := filepath.Glob(filepath.Join(out, "*", "results.jsonl"))
	run := filepath.Base(filepath.Dir(results[0]))
	if infos, _ := p.List(context.Background(), map[string]string{sandbox.LabelRun: run}); len(infos) != 0 {
		t.Errorf("pods left: %d", len(infos))
	}
}
