// Package backends holds what every way of reaching a REPL shares: the
// request to start an agent for one rollout and the facts a backend reports
// about where it ran. The local executor lives in backends/local, the sandbox
// executor and its providers in backends/sandbox, the agent and its workers in
// backends/agent and backends/worker.
package backends

import (
	"time"

	"github.com/rlmrun/rlmrun/schema"
)

// StartRequest asks a backend for an agent serving one rollout.
type StartRequest struct {
	RunID     string
	RolloutID string
	// Root is the rollout's directory as the agent sees it; the agent creates
	// Root/work (the REPL's working directory) and Root/agent.
	Root string
	// Language and Python let the agent spawn its worker as soon as it runs.
	Language string
	Python   string
	// Sandbox holds the spec's sandbox settings (resources, env, labels).
	Sandbox schema.Sandbox
	// StartupTimeout bounds creating the sandbox and starting the agent.
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
}
