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
	"github.com/rlmrun/rlmrun/backends/sandbox/docker"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

const dockerTestImage = "rlmrun-test:latest"

func needDocker(t *testing.T) *docker.Provider {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := docker.New(ctx, docker.Options{AgentPath: rlmrunBin, Config: docker.Config{Image: dockerTestImage, Pull: "never"}})
	testbin.Need(t, err == nil, fmt.Sprintf("a Docker daemon (%v)", err))
	if exec.Command("docker", "image", "inspect", dockerTestImage).Run() != nil {
		if out, err := exec.Command("../../scripts/docker-test-image", dockerTestImage).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", dockerTestImage, err, out)
		}
	}
	return p
}

func containers(t *testing.T, p *docker.Provider, runID string) []sandbox.Info {
	t.Helper()
	infos, err := p.List(context.Background(), map[string]string{sandbox.LabelRun: runID})
	if err != nil {
		t.Fatal(err)
	}
	return infos
}

// TestDockerSIGKILL: a runner killed with SIGKILL takes its containers with
// it (the agent's stream drops, the container's init stops, Docker removes
// the container).
func TestDockerSIGKILL(t *testing.T) {
	p := needDocker(t)
	dir := t.TempDir()
	spec := filepath.Join(dir, "spec.yaml")
	marker := fmt.Sprintf("rlmrun-docker-killed-%d", os.Getpid())
	body := fmt.Sprintf("version: 1\nname: killed\nbackend: {type: sandbox, sandbox: {provider: docker, image: %q, pull: never}}\nrollouts:\n  - id: slow\n    turns: [{code: 'exec -a %s sleep 1000'}]\n", dockerTestImage, marker)
	if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(rlmrunBin, "run", "--out-dir", filepath.Join(dir, "out"), spec)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var runID string
	waitFor(t, "the rollout's container", func() bool {
		infos, _ := p.List(context.Background(), map[string]string{sandbox.LabelOwnerPID: fmt.Sprint(cmd.Process.Pid)})
		if len(infos) == 1 {
			runID = infos[0].Labels[sandbox.LabelRun]
			return true
		}
		return false
	})
	waitFor(t, "the cell to run", func() bool { return len(testbin.Procs(marker)) > 0 })
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitFor(t, "the killed run's container to go", func() bool { return len(containers(t, p, runID)) == 0 })
}

// TestDockerCleanup: `rlmrun cleanup` removes the containers of a run whose
// owner is gone (by run when asked), and never a live owner's.
func TestDockerCleanup(t *testing.T) {
	p := needDocker(t)
	ctx := context.Background()
	live, err := sandbox.OwnerLabels()
	if err != nil {
		t.Fatal(err)
	}
	dead := map[string]string{sandbox.LabelOwnerPID: live[sandbox.LabelOwnerPID], sandbox.LabelOwnerStart: "1", sandbox.LabelOwnerHost: live[sandbox.LabelOwnerHost]}
	stamp := time.Now().UnixNano()
	create := func(runID string, owner map[string]string) {
		labels := map[string]string{sandbox.LabelManaged: "true", sandbox.LabelRun: runID, sandbox.LabelRollout: "r"}
		for k, v := range owner {
			labels[k] = v
		}
		s := dockerSettings()
		sb, err := p.Create(ctx, sandbox.CreateRequest{Name: fmt.Sprintf("rlmrun-%s", runID), Settings: s, Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sb.Delete(context.Background()) })
	}
	deadA, deadB, alive := fmt.Sprintf("deada%d", stamp), fmt.Sprintf("deadb%d", stamp), fmt.Sprintf("alive%d", stamp)
	create(deadA, dead)
	create(deadB, dead)
	create(alive, live)

	out := func(args ...string) string {
		c := exec.Command(rlmrunBin, append([]string{"cleanup"}, args...)...)
		b, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("cleanup %v: %v\n%s", args, err, b)
		}
		return string(b)
	}
	listed := out("--dry-run")
	for _, id := range []string{deadA, deadB} {
		if !strings.Contains(listed, "would remove docker sandbox") || !strings.Contains(listed, "(run "+id+")") {
			t.Errorf("dry run does not list %s:\n%s", id, listed)
		}
	}
	if strings.Contains(listed, alive) {
		t.Errorf("dry run lists the live owner's container:\n%s", listed)
	}
	if n := len(containers(t, p, deadA)); n != 1 {
		t.Fatalf("dry run removed something (%d left)", n)
	}
	one := out("--run", deadA)
	if !strings.Contains(one, "(run "+deadA+")") || strings.Contains(one, deadB) {
		t.Errorf("--run %s removed:\n%s", deadA, one)
	}
	if len(containers(t, p, deadA)) != 0 || len(containers(t, p, deadB)) != 1 {
		t.Fatal("--run removed the wrong containers")
	}
	out()
	if len(containers(t, p, deadB)) != 0 {
		t.Error("cleanup left the dead run's container")
	}
	if len(containers(t, p, alive)) != 1 {
		t.Error("cleanup removed the live owner's container")
	}
}

func dockerSettings() sandbox.Settings {
	return sandbox.Settings{CPUCores: 1, MemoryBytes: 512 << 20, DiskBytes: 50 << 20, PIDs: 64, Lifetime: time.Hour}
}
