// Package wire is the contract between a REPL and the host: how the worker
// finds its way out (environment variables), the routes it calls, the JSON
// it sends and gets back, the errors it may meet, the reserved tool name and
// the timeouts. Every end of the tunnel uses these definitions: the agent
// that sets up the worker, the Bash tool command, the interception server,
// the sub-LLM batch; the embedded Python worker is checked against them by
// a test (backends/worker).
package wire

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Environment of the REPL worker: how it reaches the host.
const (
	// EnvRootToolURL is the root tools route (POST a ToolRequest).
	EnvRootToolURL = "RLM_ROOT_TOOL_URL"
	// EnvInterceptionURL is the sub-LLM route (POST a chat completion).
	EnvInterceptionURL = "RLM_INTERCEPTION_URL"
	// EnvSecret is the rollout's bearer secret.
	EnvSecret = "RLM_SECRET"
	// EnvToolTimeoutMS bounds one tool call made by the worker.
	EnvToolTimeoutMS = "RLM_TOOL_TIMEOUT_MS"
	// EnvRootToolNames lists the root tools (a JSON list of names).
	EnvRootToolNames = "RLM_ROOT_TOOL_NAMES"
	// EnvWorkdir is the REPL's working directory.
	EnvWorkdir = "RLM_WORKDIR"
)

// The Bash REPL's answer: RLM_CONTENT holds it, and RLM_READY set to one of
// 1/true/yes/y/on finishes the rollout.
const (
	EnvAnswerContent = "RLM_CONTENT"
	EnvAnswerReady   = "RLM_READY"
)

// Routes, under the rollout's prefix (RolloutPrefix).
const (
	ToolsRoute = "/v1/rlm/tools"
	ChatRoute  = "/v1/chat/completions"
)

// RolloutPrefix is where a rollout's routes live under base (the tunnel's
// loopback address, or interception_url).
func RolloutPrefix(base, key string) string {
	return strings.TrimSuffix(base, "/") + "/rollout/" + key
}

// ReservedToolName is the root tool every REPL has: it fans prompts out to
// sub-LLMs.
const ReservedToolName = "llm_batch"

// DefaultToolTimeout bounds a tool call from the REPL when no cell timeout
// says otherwise.
const DefaultToolTimeout = 300 * time.Second

// ToolRequest is the body of a root tool call.
type ToolRequest struct {
	ToolName string         `json:"tool_name"`
	Args     []any          `json:"args"`
	Kwargs   map[string]any `json:"kwargs"`
	// Serialization is "json" (or empty); the reference's "pickle" is refused.
	Serialization string `json:"serialization,omitempty"`
}

// ToolResponse is its answer: Result, or Error (with HTTP 400, 404 or 500).
type ToolResponse struct {
	Result any `json:"result"`
	// PrintLines are printed by the REPL before the result (llm_batch's
	// summary).
	PrintLines []string `json:"print_lines,omitempty"`
	Error      *string  `json:"error,omitempty"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// ToolError is a tool that failed (HTTP 500).
type ToolError struct{ Msg string }

func (e *ToolError) Error() string { return e.Msg }

// BadRequest is a call a tool cannot take (HTTP 400).
type BadRequest struct{ Msg string }

func (e *BadRequest) Error() string { return e.Msg }

// BadRequestf builds a BadRequest.
func BadRequestf(format string, args ...any) error {
	return &BadRequest{Msg: fmt.Sprintf(format, args...)}
}

// Timeouts derive from the cell's timeout T, as in the reference.

// CallTimeout bounds one sub-LLM API call: max(min(10 s, T-1 s), 0.8T), at
// most T-1 s.
func CallTimeout(t time.Duration) time.Duration {
	d := max(min(10*time.Second, t-time.Second), t*8/10)
	if t > 2*time.Second {
		d = min(d, t-time.Second)
	}
	return d
}

// WorkerToolTimeout bounds one tool call made by the worker: 0.9T, at most
// T-1 s.
func WorkerToolTimeout(t time.Duration) time.Duration {
	d := t * 9 / 10
	if t > 2*time.Second {
		d = min(d, t-time.Second)
	}
	return d
}

// ToolTimeout reads EnvToolTimeoutMS's value: DefaultToolTimeout when unset
// or invalid.
func ToolTimeout(ms string) time.Duration {
	n, err := strconv.Atoi(ms)
	if err != nil || n <= 0 {
		return DefaultToolTimeout
	}
	return time.Duration(n) * time.Millisecond
}

// Env is the worker's way out, as the agent sets it: the routes of the
// rollout key under base, its secret, and the tool call timeout.
func Env(base, key, secret string, toolTimeout time.Duration) map[string]string {
	prefix := RolloutPrefix(base, key)
	env := map[string]string{
		EnvInterceptionURL: prefix + ChatRoute,
		EnvRootToolURL:     prefix + ToolsRoute,
		EnvSecret:          secret,
	}
	if toolTimeout > 0 {
		env[EnvToolTimeoutMS] = strconv.FormatInt(toolTimeout.Milliseconds(), 10)
	}
	return env
}
