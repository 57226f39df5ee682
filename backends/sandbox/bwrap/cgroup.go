package bwrap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroups place a sandbox in its own cgroup for memory, pids and CPU limits,
// when this process may create cgroups (root, or a delegated cgroup v2
// subtree). Otherwise limits fall back to rlimits (see limits.go).
type cgroups struct {
	v2   bool
	base string // v2: the parent cgroup; v1: unused
	v1   map[string]string
}

// cgroupMount is where cgroup file systems are mounted.
const cgroupMount = "/sys/fs/cgroup"

// detectCgroups finds a cgroup hierarchy rlmrun can create sandboxes in.
func detectCgroups() *cgroups {
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
		return &cgroups{v2: true, base: base}
	}
	v1 := map[string]string{}
	for _, c := range []string{"memory", "pids", "cpu"} {
		dir := filepath.Join(cgroupMount, c, "rlmrun")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil
		}
		v1[c] = dir
	}
	return &cgroups{v1: v1}
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
	write := func(dir, file, val string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: %w", file, err)
		}
		return nil
	}
	period := 100000
	quota := strconv.Itoa(int(l.cpuCores * float64(period)))
	if c.v2 {
		dir := filepath.Join(c.base, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		err := errors.Join(
			write(dir, "memory.max", strconv.FormatInt(l.memoryBytes, 10)),
			write(dir, "memory.swap.max", "0"),
			write(dir, "pids.max", strconv.Itoa(l.pids)),
			write(dir, "cpu.max", quota+" "+strconv.Itoa(period)),
		)
		return []string{filepath.Join(dir, "cgroup.procs")}, err
	}
	var procs []string
	var errs []error
	for ctrl, parent := range c.v1 {
		dir := filepath.Join(parent, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return procs, err
		}
		switch ctrl {
		case "memory":
			errs = append(errs, write(dir, "memory.limit_in_bytes", strconv.FormatInt(l.memoryBytes, 10)))
			// Without swap accounting this file is absent: memory alone then.
			if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
				errs = append(errs, write(dir, "memory.memsw.limit_in_bytes", strconv.FormatInt(l.memoryBytes, 10)))
			}
		case "pids":
			errs = append(errs, write(dir, "pids.max", strconv.Itoa(l.pids)))
		case "cpu":
			errs = append(errs, write(dir, "cpu.cfs_period_us", strconv.Itoa(period)), write(dir, "cpu.cfs_quota_us", quota))
		}
		procs = append(procs, filepath.Join(dir, "cgroup.procs"))
	}
	return procs, errors.Join(errs...)
}

// remove kills what is left in the sandbox's cgroups and removes them.
func (c *cgroups) remove(id string) {
	var dirs []string
	if c.v2 {
		dirs = []string{filepath.Join(c.base, id)}
	} else {
		for _, parent := range c.v1 {
			dirs = append(dirs, filepath.Join(parent, id))
		}
	}
	for _, dir := range dirs {
		for i := 0; i < 50; i++ {
			b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil || strings.TrimSpace(string(b)) == "" {
				break
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		_ = os.Remove(dir)
	}
}
