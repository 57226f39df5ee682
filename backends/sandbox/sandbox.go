// Package sandbox runs each rollout's agent in an isolated sandbox. A
// Provider (bubblewrap, Docker, ...) only creates sandboxes, starts a process
// in one with a byte stream, deletes them, and lists them by label for orphan
// cleanup: files, cells, tools and sub-LLM calls all travel inside the agent's
// session over that one stream, exactly as with the local backend.
package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/procs"
)

// Labels rlmrun puts on every sandbox.
const (
	LabelManaged    = "rlmrun.managed"     // "true"
	LabelRun        = "rlmrun.run"         // the run id
	LabelRollout    = "rlmrun.rollout"     // the rollout id
	LabelOwnerPID   = "rlmrun.owner.pid"   // the runner's pid
	LabelOwnerStart = "rlmrun.owner.start" // the runner's start time (clock ticks since boot)
	LabelOwnerHost  = "rlmrun.owner.host"  // the runner's hostname
	// LabelExpired is set by a provider's List on a sandbox past its
	// lifetime: it is an orphan whoever owns it (on a shared cluster, the
	// sandboxes of other hosts end so).
	LabelExpired = "rlmrun.expired"
)

// Settings are what every provider's sandboxes get, from the spec's
// backend.sandbox section; a provider's own settings (an image, a
// namespace) are its Factory's to read.
type Settings struct {
	CPUCores    float64
	MemoryBytes int64
	DiskBytes   int64 // the working directory's room (its /tmp)
	PIDs        int
	// HostNetwork shares the host's network; otherwise only the tunnel
	// reaches out.
	HostNetwork bool
	// Lifetime bounds a sandbox's life (0: no bound).
	Lifetime time.Duration
	// Labels are put on every sandbox, besides rlmrun's own.
	Labels map[string]string
	// CreateRetries is how often a failed create is retried.
	CreateRetries int
}

// Factory makes a provider for a run. Config is the spec's backend.sandbox
// section as JSON, defaults applied: the provider decodes the keys it owns.
type Factory func(ctx context.Context, opts FactoryOptions) (Provider, error)

// FactoryOptions are what a Factory gets.
type FactoryOptions struct {
	// AgentPath is the rlmrun binary the provider puts into sandboxes.
	AgentPath string
	// Config is the spec's backend.sandbox section (nil: defaults; for
	// cleanup, which needs no settings).
	Config []byte
	// Progress receives progress a person may want to see (image pulls).
	Progress io.Writer
}

// Provider creates and finds sandboxes.
type Provider interface {
	// Name is "bwrap", "docker", ...
	Name() string
	// Create makes a sandbox ready to start processes in.
	Create(ctx context.Context, req CreateRequest) (Sandbox, error)
	// List returns the sandboxes carrying all the given labels.
	List(ctx context.Context, labels map[string]string) ([]Info, error)
	// Remove deletes a sandbox found by List, whatever runs in it.
	Remove(ctx context.Context, id string) error
	// Close releases what the provider holds for the run.
	Close() error
}

// CreateRequest describes a sandbox.
type CreateRequest struct {
	// Name is a readable, unique name (SandboxName).
	Name string
	// Settings are the sandbox's resources and network.
	Settings Settings
	// Labels to put on the sandbox.
	Labels map[string]string
	// Root is the rollout's directory inside the sandbox; it must be writable
	// by the sandbox's user (the agent creates Root/work and Root/agent).
	Root string
}

// Sandbox is one created sandbox.
type Sandbox interface {
	ID() string
	// Start runs argv inside the sandbox; the process's stdin and stdout are
	// the returned stream.
	Start(ctx context.Context, argv []string) (Process, error)
	// Delete kills everything in the sandbox and removes it.
	Delete(ctx context.Context) error
}

// Process is a process started in a sandbox.
type Process interface {
	io.ReadWriteCloser
	// Diagnostics returns what the process wrote on stderr, for messages.
	Diagnostics() string
}

// Info describes a sandbox found by List.
type Info struct {
	ID     string
	Labels map[string]string
}

// ErrNotInstalled is returned when a provider's tool is missing.
var ErrNotInstalled = errors.New("sandbox tool not installed")

// Options configure the executor.
type Options struct {
	Provider Provider
	// Settings apply to every sandbox of the run.
	Settings Settings
	// Sleep waits between create attempts (tests shorten it).
	Sleep func(ctx context.Context, d time.Duration) error
}

// Executor starts agents in sandboxes; it is a runner backend.
type Executor struct {
	opts  Options
	owner map[string]string
}

// NewExecutor returns an executor over a provider.
func NewExecutor(opts Options) (*Executor, error) {
	if opts.Sleep == nil {
		opts.Sleep = sleepCtx
	}
	owner, err := OwnerLabels()
	if err != nil {
		return nil, err
	}
	return &Executor{opts: opts, owner: owner}, nil
}

// Name is "sandbox".
func (e *Executor) Name() string { return "sandbox" }

// Provider is the executor's provider.
func (e *Executor) Provider() Provider { return e.opts.Provider }

// Close releases the provider.
func (e *Executor) Close() error { return e.opts.Provider.Close() }

// Backoff is the wait before create attempt n (n ≥ 1): 0.5 s doubling up to
// 30 s, with up to 25% random jitter, as the reference retried.
func Backoff(n int) time.Duration {
	d := 500 * time.Millisecond
	for i := 1; i < n && d < 30*time.Second; i++ {
		d *= 2
	}
	d = min(d, 30*time.Second)
	return d + time.Duration(rand.Int64N(int64(d)/4+1))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Start creates the rollout's sandbox (with retries), starts the agent in it
// and connects to it. Closing the session deletes the sandbox.
func (e *Executor) Start(ctx context.Context, req backends.StartRequest) (*client.Session, *backends.Facts, error) {
	set := e.opts.Settings
	labels := map[string]string{LabelManaged: "true", LabelRun: req.RunID, LabelRollout: req.RolloutID}
	for k, v := range e.owner {
		labels[k] = v
	}
	for k, v := range set.Labels {
		labels[k] = v
	}
	creq := CreateRequest{
		Name:     SandboxName(req.RunID, req.RolloutID),
		Settings: set,
		Labels:   labels,
		Root:     req.Root,
	}
	facts := &backends.Facts{Backend: "sandbox", Provider: e.opts.Provider.Name()}
	t0 := time.Now()
	var sb Sandbox
	var errs []string
	for attempt := 1; ; attempt++ {
		facts.CreateAttempts = attempt
		var err error
		sb, err = e.opts.Provider.Create(ctx, creq)
		if err == nil {
			break
		}
		errs = append(errs, err.Error())
		if errors.Is(err, ErrNotInstalled) || ctx.Err() != nil || attempt > set.CreateRetries {
			return nil, facts, fmt.Errorf("create %s sandbox (%d attempt(s)): %s", e.opts.Provider.Name(), attempt, strings.Join(errs, "; "))
		}
		if err := e.opts.Sleep(ctx, Backoff(attempt)); err != nil {
			return nil, facts, err
		}
	}
	facts.CreateMS = float64(time.Since(t0).Microseconds()) / 1000
	facts.SandboxID = sb.ID()
	argv := []string{AgentPathInside, "agent"}
	if req.Language != "" {
		argv = append(argv, "--language", req.Language, "--python", req.Python)
	}
	proc, err := sb.Start(ctx, argv)
	if err != nil {
		_ = sb.Delete(context.Background())
		return nil, facts, fmt.Errorf("start the agent in sandbox %s: %w", sb.ID(), err)
	}
	var life *time.Timer
	var sess *client.Session
	ready := make(chan struct{})
	if d := set.Lifetime; d > 0 {
		// The sandbox does not outlive its lifetime, whatever the rollout does.
		life = time.AfterFunc(d, func() {
			<-ready
			if sess != nil {
				sess.Ending(fmt.Sprintf("the sandbox reached its lifetime (%s) and was deleted", d))
			}
			_ = sb.Delete(context.Background())
		})
	}
	sess, err = client.New(client.Options{
		Conn: proc,
		Close: func(ctx context.Context) error {
			if life != nil {
				life.Stop()
			}
			_ = proc.Close()
			return sb.Delete(ctx)
		},
		Diagnostics: proc.Diagnostics,
	})
	close(ready)
	if err != nil {
		_ = proc.Close()
		_ = sb.Delete(context.Background())
		return nil, facts, err
	}
	hello, err := sess.Hello(ctx)
	if err != nil {
		_ = sess.Close(context.Background())
		return nil, facts, err
	}
	facts.AgentPID, facts.AgentUID, facts.Hostname = hello.PID, hello.UID, hello.Hostname
	return sess, facts, nil
}

// AgentPathInside is where providers put the rlmrun binary in a sandbox.
const AgentPathInside = "/.rlmrun/rlmrun"

// SandboxName names a rollout's sandbox: readable (the rollout id with
// characters outside [A-Za-z0-9._-] replaced) and unique (a hash of the
// exact id: "a#1" and "a_1" read alike, but are different rollouts).
func SandboxName(runID, rolloutID string) string {
	sum := sha256.Sum256([]byte(rolloutID))
	return "rlmrun-" + runID + "-" + sanitize(rolloutID) + "-" + hex.EncodeToString(sum[:4])
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
			return r
		}
		return '_'
	}, s)
}

// OwnerLabels identify this process as a sandbox's owner: pid, start time
// and host, so a later run can tell a dead owner from a live one (a pid alone
// may have been reused).
func OwnerLabels() (map[string]string, error) {
	start, err := procs.StartTime(os.Getpid())
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	return map[string]string{
		LabelOwnerPID:   strconv.Itoa(os.Getpid()),
		LabelOwnerStart: start,
		LabelOwnerHost:  host,
	}, nil
}

// OwnerAlive reports whether the process that labelled a sandbox still runs.
// Sandboxes of another host are treated as alive (their owner cannot be
// checked from here) until past their lifetime.
func OwnerAlive(labels map[string]string) bool {
	if labels[LabelExpired] == "true" {
		return false
	}
	host, _ := os.Hostname()
	if h := labels[LabelOwnerHost]; h != "" && h != host {
		return true
	}
	pid, err := strconv.Atoi(labels[LabelOwnerPID])
	return err == nil && procs.Alive(pid, labels[LabelOwnerStart])
}

// Orphan is a sandbox whose owner is gone.
type Orphan struct {
	Provider string
	Info
}

// FindOrphans lists the provider's rlmrun sandboxes whose owner is gone
// (optionally of one run only).
func FindOrphans(ctx context.Context, p Provider, runID string) ([]Orphan, error) {
	sel := map[string]string{LabelManaged: "true"}
	if runID != "" {
		sel[LabelRun] = runID
	}
	infos, err := p.List(ctx, sel)
	if err != nil {
		return nil, err
	}
	var out []Orphan
	for _, in := range infos {
		if !OwnerAlive(in.Labels) {
			out = append(out, Orphan{Provider: p.Name(), Info: in})
		}
	}
	return out, nil
}

// Root is where a rollout's directory lives inside its sandbox: in the
// sandbox's private /tmp, under the run directory's own name, so the model
// sees the same paths as with the local backend.
func (e *Executor) Root(runDir, rolloutID string) string {
	return path.Join("/tmp", filepath.Base(runDir), rolloutID)
}

// Leftovers lists the sandboxes of killed runs (their owner is gone), and
// what else the provider says those runs left (a backends.Sweeper).
func (e *Executor) Leftovers(ctx context.Context, runID string) ([]backends.Leftover, error) {
	return Leftovers(ctx, e.opts.Provider, runID)
}

// Leftovers is what killed runs left with provider p.
func Leftovers(ctx context.Context, p Provider, runID string) ([]backends.Leftover, error) {
	orphans, err := FindOrphans(ctx, p, runID)
	if err != nil {
		return nil, fmt.Errorf("list %s sandboxes: %w", p.Name(), err)
	}
	var out []backends.Leftover
	for _, o := range orphans {
		id := o.ID
		out = append(out, backends.Leftover{
			What:   fmt.Sprintf("%s sandbox %s (run %s)", p.Name(), id, o.Labels[LabelRun]),
			Remove: func(ctx context.Context) error { return p.Remove(ctx, id) },
		})
	}
	if sw, ok := p.(backends.Sweeper); ok {
		more, err := sw.Leftovers(ctx, runID)
		if err != nil {
			return out, err
		}
		out = append(out, more...)
	}
	return out, nil
}
