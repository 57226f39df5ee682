package bwrap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/sandbox"
)

// cgroups place a sandbox in its own cgroup for memory, pids and CPU limits,
// when this process may create cgroups (root, or a delegated cgroup v2
// subtree). Otherwise limits fall back to rlimits (box.rlimits).
//
// Layout, per controller (v1) or once (v2):
//
//	rlmrun/owner-PID-START/SANDBOX
//
// The owner level names the runner process (pid and start time), so a
// cgroup outlives nothing unnoticed: cleanup finds the cgroups of dead
// owners even when their sandbox's state directory is gone.
type cgroups struct {
	v2    bool
	bases []string // v2: one rlmrun directory; v1: one per controller
	owner string   // owner-PID-START
}

// cgroupMount is where cgroup file systems are mounted.
const cgroupMount = "/sys/fs/cgroup"

// removeWait bounds how long removing one sandbox's cgroups may take: its
// processes must be gone before the kernel lets the directory go.
const removeWait = 10 * time.Second

// detectCgroups finds a cgroup hierarchy rlmrun can create sandboxes in.
func detectCgroups() *cgroups {
	start, err := procs.StartTime(os.Getpid())
	if err != nil {
		return nil
	}
	owner := fmt.Sprintf("owner-%d-%s", os.Getpid(), start)
	if _, err := os.Stat(filepath.Join(cgroupMount, "cgroup.controllers")); err == nil {
		// cgroup v2: sandboxes go under /sys/fs/cgroup/rlmrun, whose parent
		// must delegate the memory, pids and cpu controllers.
		base := filepath.Join(cgroupMount, "rlmrun")
		if err := os.MkdirAll(base, 0o755); err != nil {
			return nil
		}
		ctrl, _ := os.ReadFile(filepath.Join(cgroupMount, "cgroup.subtree_control"))
		for _, c := range []string{"memory", "pids", "cpu"} {
			if !strings.Contains(string(ctrl), c) {
				_ = os.WriteFile(filepath.Join(cgroupMount, "cgroup.subtree_control"), []byte("+"+c), 0o644)
			}
		}
		_ = os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+memory +pids +cpu"), 0o644)
		return &cgroups{v2: true, bases: []string{base}, owner: owner}
	}
	var bases []string
	for _, c := range []string{"memory", "pids", "cpu"} {
		dir := filepath.Join(cgroupMount, c, "rlmrun")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil
		}
		bases = append(bases, dir)
	}
	return &cgroups{bases: bases, owner: owner}
}

// limits are what a sandbox may use.
type limits struct {
	memoryBytes int64
	pids        int
	cpuCores    float64
}

// create makes the sandbox's cgroups and returns the cgroup.procs files the
// sandbox's first process must join.
func (c *cgroups) create(id string, l limits) ([]string, error) {
	var errs *multierror.Error
	write := func(dir, file, val string) {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0o644); err != nil {
			errs = multierror.Append(errs, fmt.Errorf("cgroup %s: %w", file, err))
		}
	}
	period := 100000
	quota := strconv.Itoa(int(l.cpuCores * float64(period)))
	var procFiles []string
	for _, base := range c.bases {
		parent := filepath.Join(base, c.owner)
		if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return procFiles, fmt.Errorf("cgroup: %w", err)
		}
		dir := filepath.Join(parent, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return procFiles, fmt.Errorf("cgroup: %w", err)
		}
		switch ctrl := filepath.Base(filepath.Dir(base)); {
		case c.v2:
			write(dir, "memory.max", strconv.FormatInt(l.memoryBytes, 10))
			write(dir, "memory.swap.max", "0")
			write(dir, "pids.max", strconv.Itoa(l.pids))
			write(dir, "cpu.max", quota+" "+strconv.Itoa(period))
		case ctrl == "memory":
			write(dir, "memory.limit_in_bytes", strconv.FormatInt(l.memoryBytes, 10))
			// Without swap accounting this file is absent: memory alone then.
			if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
				write(dir, "memory.memsw.limit_in_bytes", strconv.FormatInt(l.memoryBytes, 10))
			}
		case ctrl == "pids":
			write(dir, "pids.max", strconv.Itoa(l.pids))
		case ctrl == "cpu":
			write(dir, "cpu.cfs_period_us", strconv.Itoa(period))
			write(dir, "cpu.cfs_quota_us", quota)
		}
		procFiles = append(procFiles, filepath.Join(dir, "cgroup.procs"))
	}
	return procFiles, errs.ErrorOrNil()
}

// remove kills what is left in the sandbox's cgroups (whichever owner made
// them) and removes them, retrying until the kernel lets go, and verifies
// they are gone.
func (c *cgroups) remove(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, removeWait)
	defer cancel()
	var errs *multierror.Error
	for _, base := range c.bases {
		owners, _ := filepath.Glob(filepath.Join(base, "owner-*"))
		for _, owner := range owners {
			dir := filepath.Join(owner, id)
			if _, err := os.Lstat(dir); err != nil {
				continue
			}
			if err := removeCgroup(ctx, dir); err != nil {
				errs = multierror.Append(errs, err)
			}
		}
	}
	return errs.ErrorOrNil()
}

// removeCgroup empties one cgroup and removes it.
func removeCgroup(ctx context.Context, dir string) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		pids := strings.Fields(string(b))
		for _, f := range pids {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if len(pids) == 0 {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				if _, serr := os.Lstat(dir); errors.Is(serr, fs.ErrNotExist) {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cgroup %s could not be removed (%d process(es) left): rlmrun cleanup removes it later", dir, len(pids))
		case <-tick.C:
		}
	}
}

// list returns the sandbox cgroups of owners that are gone, with labels
// that say so (the owner's pid and start time, from the directory's name).
func (c *cgroups) list() map[string]map[string]string {
	host, _ := os.Hostname()
	out := map[string]map[string]string{}
	for _, base := range c.bases {
		owners, _ := filepath.Glob(filepath.Join(base, "owner-*"))
		for _, owner := range owners {
			pid, start, ok := strings.Cut(strings.TrimPrefix(filepath.Base(owner), "owner-"), "-")
			if !ok {
				continue
			}
			entries, _ := os.ReadDir(owner)
			for _, e := range entries {
				if !e.IsDir() {
					continue
				}
				out[e.Name()] = map[string]string{
					sandbox.LabelManaged:    "true",
					sandbox.LabelRun:        runOf(e.Name()),
					sandbox.LabelOwnerPID:   pid,
					sandbox.LabelOwnerStart: start,
					sandbox.LabelOwnerHost:  host,
				}
			}
		}
	}
	return out
}

// runOf reads the run id back from a sandbox name (rlmrun-RUNID-ROLLOUT),
// where run ids look like 20261126-120000-a1b2c3.
func runOf(name string) string {
	parts := strings.SplitN(strings.TrimPrefix(name, "rlmrun-"), "-", 4)
	if len(parts) < 3 {
		return ""
	}
	return strings.Join(parts[:3], "-")
}

// close removes this owner's directories once they are empty, and those of
// owners that are gone.
func (c *cgroups) close() {
	for _, base := range c.bases {
		owners, _ := filepath.Glob(filepath.Join(base, "owner-*"))
		for _, owner := range owners {
			_ = os.Remove(owner) // only succeeds when empty
		}
	}
}
