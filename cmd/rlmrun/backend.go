package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/backends/sandbox/docker"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
)

// backend is what a run needs from its backend, plus its cleanup.
type backend interface {
	runner.Backend
	Close() error
}

type localBackend struct{ *local.Executor }

func (localBackend) Close() error { return nil }

// agentBinary is the rlmrun binary agents run: this one, unless told.
func agentBinary(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the rlmrun binary: %w", err)
	}
	return self, nil
}

// newBackend builds the spec's backend.
func newBackend(spec *schema.Spec, agent string) (backend, error) {
	switch spec.Backend.Type {
	case "local":
		ex, err := local.New(local.Options{AgentPath: agent})
		if err != nil {
			return nil, err
		}
		return localBackend{ex}, nil
	case "sandbox":
		p, err := newProvider(spec.Backend.Sandbox.Provider, agent)
		if err != nil {
			return nil, err
		}
		return sandbox.NewExecutor(sandbox.Options{Provider: p, AgentPath: agent})
	}
	return nil, fmt.Errorf("unknown backend %q", spec.Backend.Type)
}

func newProvider(name, agent string) (sandbox.Provider, error) {
	switch name {
	case "bwrap":
		return bwrap.New(bwrap.Options{AgentPath: agent})
	case "docker":
		return docker.New(context.Background(), docker.Options{AgentPath: agent, Progress: os.Stderr})
	}
	return nil, fmt.Errorf("unknown sandbox provider %q", name)
}

// removeLeftovers removes what killed runs left behind (their run
// directories and sandboxes; never a live run's). With dryRun it only lists
// them. runID limits it to one run.
func removeLeftovers(ctx context.Context, providers []sandbox.Provider, runID string, dryRun bool, out io.Writer) (int, error) {
	n := 0
	var firstErr error
	note := func(what string, err error) {
		n++
		verb := "removed"
		if dryRun {
			verb = "would remove"
		}
		if err != nil {
			fmt.Fprintf(out, "failed to remove %s: %v\n", what, err)
			if firstErr == nil {
				firstErr = err
			}
			return
		}
		fmt.Fprintf(out, "%s %s\n", verb, what)
	}
	if runID == "" {
		for _, pid := range local.StaleProcesses() {
			var err error
			if !dryRun {
				err = syscall.Kill(pid, syscall.SIGKILL)
			}
			note(fmt.Sprintf("process %d left by a killed local run", pid), err)
		}
	}
	for _, dir := range runner.StaleRunDirs(os.TempDir(), runID) {
		var err error
		if !dryRun {
			err = os.RemoveAll(dir)
		}
		note("run directory "+dir, err)
	}
	for _, p := range providers {
		orphans, err := sandbox.FindOrphans(ctx, p, runID)
		if err != nil {
			fmt.Fprintf(out, "list %s sandboxes: %v\n", p.Name(), err)
			continue
		}
		for _, o := range orphans {
			var err error
			if !dryRun {
				err = p.Remove(ctx, o.ID)
			}
			note(fmt.Sprintf("%s sandbox %s (run %s)", p.Name(), o.ID, o.Labels[sandbox.LabelRun]), err)
		}
		if bw, ok := p.(*bwrap.Provider); ok && runID == "" {
			for _, f := range bw.StaleAgentCopies() {
				var err error
				if !dryRun {
					err = bw.RemoveAgentCopy(f)
				}
				note("agent copy "+f, err)
			}
		}
	}
	return n, firstErr
}
