// Package backends holds what every way of reaching a REPL shares: the
// request to start an agent for one rollout, the facts a backend reports
// about where it ran, and the leftovers of killed runs a backend can find.
// The local executor lives in backends/local, the sandbox executor and its
// providers in backends/sandbox, the agent and its workers in
// backends/agent and backends/worker.
package backends

import (
	"context"
	"time"
)

// StartRequest asks a backend for an agent serving one rollout.
type StartRequest struct {
	RunID     string
	RolloutID string
	// Root is the rollout's directory as the agent sees it (the backend's
	// Root); the agent creates Root/work (the REPL's working directory) and
	// Root/agent.
	Root string
	// Language and Python let the agent spawn its worker as soon as it runs.
	Language string
	Python   string
	// StartupTimeout bounds creating a sandbox and starting the agent.
	StartupTimeout time.Duration
}

// Facts describe where a rollout ran; they vary between runs and machines.
type Facts struct {
	Backend        string  `json:"backend"`
	Provider       string  `json:"provider,omitempty"`
	SandboxID      string  `json:"sandbox_id,omitempty"`
	CreateAttempts int     `json:"create_attempts,omitempty"`
	CreateMS       float64 `json:"create_ms,omitempty"`
	AgentPID       int     `json:"agent_pid,omitempty"`
	AgentUID       int     `json:"agent_uid"`
	Hostname       string  `json:"hostname,omitempty"`
	// Containment says how the rollout's processes were kept together on
	// the local backend (a PID namespace, or only a process group).
	Containment string `json:"containment,omitempty"`
	// Confinement says what confined a local rollout's REPL:
	// "landlock-abi-N" or "none".
	Confinement string `json:"confinement,omitempty"`
}

// Leftover is something a killed run left behind (a sandbox, a process, a
// file), found by a Sweeper; never a live run's.
type Leftover struct {
	// What names it for people: "bwrap sandbox rlmrun-... (run ...)".
	What string
	// Remove deletes it.
	Remove func(ctx context.Context) error
}

// Sweeper is a backend (or a sandbox provider) that can find what killed
// runs left behind: `rlmrun cleanup` and the start of every run ask it.
type Sweeper interface {
	// Leftovers lists the leftovers of run runID, or of every run when it
	// is empty.
	Leftovers(ctx context.Context, runID string) ([]Leftover, error)
}
