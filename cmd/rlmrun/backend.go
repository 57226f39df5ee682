package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/backends/sandbox/docker"
	"github.com/rlmrun/rlmrun/backends/sandbox/kubernetes"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
)

// providers are the sandbox providers this binary has, by the name a spec
// gives them (backend.sandbox.provider). Adding one is a line here.
func providers() map[string]sandbox.Factory {
	return map[string]sandbox.Factory{
		"bwrap":      bwrap.Factory,
		"docker":     docker.Factory,
		"kubernetes": kubernetes.Factory,
	}
}

// providerNames lists the providers, sorted.
func providerNames() []string {
	var names []string
	for n := range providers() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

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
func newBackend(ctx context.Context, spec *schema.Spec, agent string) (backend, error) {
	switch spec.Backend.Type {
	case "local":
		ex, err := local.New(local.Options{
			AgentPath:   agent,
			Confinement: spec.Backend.Local.Confinement,
			Network:     spec.Backend.Local.Network == "host",
		})
		if err != nil {
			return nil, err
		}
		return localBackend{ex}, nil
	case "sandbox":
		name := spec.Backend.Sandbox.Provider
		factory, ok := providers()[name]
		if !ok {
			return nil, fmt.Errorf("unknown sandbox provider %q", name)
		}
		p, err := factory(ctx, sandbox.FactoryOptions{AgentPath: agent, Config: runner.SandboxConfig(spec.Backend.Sandbox), Progress: os.Stderr})
		if err != nil {
			return nil, err
		}
		return sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: runner.SandboxSettings(spec.Backend.Sandbox)})
	}
	return nil, fmt.Errorf("unknown backend %q", spec.Backend.Type)
}

// sweepers are every backend and provider that can find leftovers here:
// the local backend, and each provider that is installed (a missing one
// has nothing to find). close releases them.
func sweepers(ctx context.Context) (list []backends.Sweeper, close func()) {
	var closers []func() error
	if ex, err := local.New(local.Options{}); err == nil {
		list = append(list, ex)
	}
	for _, name := range providerNames() {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		p, err := providers()[name](pctx, sandbox.FactoryOptions{})
		cancel()
		if err != nil {
			continue
		}
		closers = append(closers, p.Close)
		list = append(list, providerSweeper{p})
	}
	return list, func() {
		for _, c := range closers {
			_ = c()
		}
	}
}

// providerSweeper finds a provider's orphaned sandboxes and extras.
type providerSweeper struct{ p sandbox.Provider }

func (s providerSweeper) Leftovers(ctx context.Context, runID string) ([]backends.Leftover, error) {
	return sandbox.Leftovers(ctx, s.p, runID)
}

// removeLeftovers removes what killed runs left behind (their run
// directories, and what the sweepers find; never a live run's). With dryRun
// it only lists them. runID limits it to one run.
func removeLeftovers(ctx context.Context, sws []backends.Sweeper, runID string, dryRun bool, out io.Writer) (int, error) {
	var leftovers []backends.Leftover
	for _, dir := range runner.StaleRunDirs(os.TempDir(), runID) {
		leftovers = append(leftovers, backends.Leftover{
			What:   "run directory " + dir,
			Remove: func(context.Context) error { return os.RemoveAll(dir) },
		})
	}
	var firstErr error
	for _, sw := range sws {
		more, err := sw.Leftovers(ctx, runID)
		if err != nil {
			fmt.Fprintf(out, "%v\n", err)
			if firstErr == nil {
				firstErr = err
			}
		}
		leftovers = append(leftovers, more...)
	}
	for _, l := range leftovers {
		if dryRun {
			fmt.Fprintf(out, "would remove %s\n", l.What)
			continue
		}
		if err := l.Remove(ctx); err != nil {
			fmt.Fprintf(out, "failed to remove %s: %v\n", l.What, err)
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		fmt.Fprintf(out, "removed %s\n", l.What)
	}
	return len(leftovers), firstErr
}
