package bwrap_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/internal/ownerdir"
)

// A local user who creates rlmrun's state directory first, with links to
// files they want overwritten, must get nothing: rlmrun refuses a state root
// it did not make, and never writes through a link.
func TestPlantedStateRootIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to play another user")
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	planted, err := os.MkdirTemp("/tmp", "rlmrun-planted-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(planted) })
	start, _ := procs.StartTime(os.Getpid())
	// Links where rlmrun writes the agent copy, then and now.
	for _, link := range []string{
		fmt.Sprintf("agent-%d-%s.tmp", os.Getpid(), start),
		fmt.Sprintf("agent-%d-%s", os.Getpid(), start),
	} {
		if err := os.Symlink(victim, filepath.Join(planted, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Dir(victim), filepath.Join(planted, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(planted, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(planted, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: planted})
	if err == nil {
		// The old behaviour: the state root was accepted and the agent copy
		// written through the planted link.
		ex, _ := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: settings()})
		if sess, _, err := ex.Start(context.Background(), backends.StartRequest{RunID: "planted", RolloutID: "r", Root: ex.Root("/tmp/rlmrun-planted", "r"), StartupTimeout: 30 * time.Second}); err == nil {
			sess.Close(context.Background())
		}
		p.Close()
		t.Errorf("a state root owned by another user was accepted")
	} else if !errors.Is(err, ownerdir.ErrNotOwned) || !strings.Contains(err.Error(), "uid 65534") {
		t.Errorf("error = %v", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("the victim file was overwritten: %.40q", b)
	}
	// Our own directory, but writable by others, or a link: refused too.
	mine := t.TempDir()
	if err := os.Chmod(mine, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: mine}); !errors.Is(err, ownerdir.ErrNotOwned) {
		t.Errorf("a world-writable state root: %v", err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(stateRoot(t), link); err != nil {
		t.Fatal(err)
	}
	if _, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: link}); !errors.Is(err, ownerdir.ErrNotOwned) {
		t.Errorf("a symlinked state root: %v", err)
	}
}

// Private state is private: the sandboxes' directory is 0700 and its files
// 0600; the default root is not in /tmp when rlmrun is root.
func TestStateIsPrivate(t *testing.T) {
	if os.Geteuid() == 0 && bwrap.DefaultStateRoot() != "/run/rlmrun" {
		t.Errorf("DefaultStateRoot() = %s", bwrap.DefaultStateRoot())
	}
	root := stateRoot(t)
	sess, p, facts := sandboxedIn(t, root, settings())
	_ = sess
	_ = p
	dir := filepath.Join(root, "sandboxes")
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("sandboxes dir: %v %v", fi.Mode(), err)
	}
	for _, name := range []string{"labels.json", "pid"} {
		fi, err := os.Stat(filepath.Join(dir, facts.SandboxID, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", name, fi, err)
		}
	}
}

// A sandbox cgroup whose state directory is gone, left by an owner that is
// gone, is found by cleanup and removed, even with a process still in it.
func TestOrphanCgroupIsFoundAndRemoved(t *testing.T) {
	base := "/sys/fs/cgroup/pids/rlmrun"
	if os.Geteuid() != 0 {
		t.Skip("needs root for cgroups")
	}
	if _, err := os.Stat("/sys/fs/cgroup/pids"); err != nil {
		t.Skip("no cgroup v1 pids hierarchy here")
	}
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: stateRoot(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	name := "rlmrun-20261126-000000-dead00-r"
	dir := filepath.Join(base, "owner-999999999-1", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir); os.Remove(filepath.Dir(dir)) })
	sleeper := exec.Command("sleep", "1000")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	exited := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(exited) }()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	orphans, err := sandbox.FindOrphans(context.Background(), p, "")
	if err != nil {
		t.Fatal(err)
	}
	var found *sandbox.Orphan
	for i := range orphans {
		if orphans[i].ID == name {
			found = &orphans[i]
		}
	}
	if found == nil {
		t.Fatalf("orphan cgroup not found: %+v", orphans)
	}
	if found.Labels[sandbox.LabelRun] != "20261126-000000-dead00" {
		t.Errorf("labels: %v", found.Labels)
	}
	if err := p.Remove(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup left: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Errorf("the process in the cgroup survived")
	}
}
