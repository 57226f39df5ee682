package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/runner/hostcmd"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// maxToolOutput caps what a host tool may print as its result.
const maxToolOutput = 16 << 20

// toolCall is one call of a host command tool.
type toolCall struct {
	Tool      string            `json:"tool"`
	Role      string            `json:"role"` // root | sub
	Rollout   string            `json:"rollout"`
	Args      []any             `json:"args"`
	Kwargs    map[string]any    `json:"kwargs"`
	Arguments map[string]any    `json:"arguments"`
	Vars      map[string]string `json:"vars"`
}

// bindArgs maps positional arguments to the declared parameters (in their
// declaration order) and checks them like a function signature would.
func bindArgs(t schema.Tool, args []any, kwargs map[string]any) (map[string]any, error) {
	out := map[string]any{}
	names := t.ParamNames
	var params struct {
		Required             []string `json:"required"`
		AdditionalProperties *bool    `json:"additionalProperties"`
	}
	_ = json.Unmarshal(t.Parameters, &params)
	if len(names) == 0 {
		if len(args) > 0 && len(t.Parameters) > 0 {
			return nil, &wire.BadRequest{Msg: fmt.Sprintf("%s() takes no positional arguments but %d were given", t.Name, len(args))}
		}
	} else if len(args) > len(names) {
		return nil, &wire.BadRequest{Msg: fmt.Sprintf("%s() takes %d positional argument(s) but %d were given", t.Name, len(names), len(args))}
	}
	for i, a := range args {
		if i < len(names) {
			out[names[i]] = a
		}
	}
	known := map[string]bool{}
	for _, n := range names {
		known[n] = true
	}
	for k, v := range kwargs {
		if _, dup := out[k]; dup {
			return nil, &wire.BadRequest{Msg: fmt.Sprintf("%s() got multiple values for argument '%s'", t.Name, k)}
		}
		if len(names) > 0 && !known[k] && (params.AdditionalProperties == nil || !*params.AdditionalProperties) {
			return nil, &wire.BadRequest{Msg: fmt.Sprintf("%s() got an unexpected keyword argument '%s'", t.Name, k)}
		}
		out[k] = v
	}
	var missing []string
	for _, r := range params.Required {
		if _, ok := out[r]; !ok {
			missing = append(missing, "'"+r+"'")
		}
	}
	if len(missing) > 0 {
		return nil, &wire.BadRequest{Msg: fmt.Sprintf("%s() missing %d required argument(s): %s", t.Name, len(missing), strings.Join(missing, ", "))}
	}
	return out, nil
}

// runHostTool runs a tool's command: the call as JSON on stdin, its stdout
// the result (JSON when it parses, else the text), a non-zero exit or the
// tool's timeout an error carrying stderr. It runs in the spec's folder
// with a scrubbed environment (hostcmd), and nothing it starts outlives it.
// cpu is what the tool's processes used (user + system), for the run's
// time split.
// hostTools runs the spec's tool commands: from its folder (dir), each
// contained by the run's spawner.
type hostTools struct {
	spawner *hostcmd.Spawner
	dir     string
}

func (h hostTools) run(ctx context.Context, t schema.Tool, call toolCall) (res any, cpu time.Duration, err error) {
	sp, dir := h.spawner, h.dir
	if t.Run.Dir != "" {
		dir = t.Run.Dir // a base's tool runs from the base's folder
	}
	args, err := bindArgs(t, call.Args, call.Kwargs)
	if err != nil {
		return nil, 0, err
	}
	call.Arguments = args
	if call.Args == nil {
		call.Args = []any{}
	}
	in, err := json.Marshal(call)
	if err != nil {
		return nil, 0, &wire.BadRequest{Msg: fmt.Sprintf("arguments are not JSON: %v", err)}
	}
	out := sp.Run(ctx, hostcmd.Call{
		Cmd: hostcmd.Cmd{
			Argv:  t.Run.Args(),
			Dir:   dir,
			Env:   hostcmd.Environ(os.Environ(), t.PassEnv, t.Env, "RLM_TOOL_NAME="+t.Name, "RLM_TOOL_ROLE="+call.Role),
			Stdin: bytes.NewReader(in),
		},
		Timeout:    t.Timeout.Duration,
		MaxStdout:  maxToolOutput,
		StderrTail: 16 << 10,
	})
	cpu = out.CPU
	switch {
	case !out.Started:
		return nil, 0, &wire.ToolError{Msg: fmt.Sprintf("tool %s could not start: %v", t.Name, out.Err)}
	case out.TimedOut:
		return nil, cpu, &wire.ToolError{Msg: fmt.Sprintf("tool %s timed out after %s%s", t.Name, t.Timeout.Duration, stderrSuffix(out.Stderr))}
	case ctx.Err() != nil:
		return nil, cpu, ctx.Err()
	case out.Err != nil:
		return nil, cpu, &wire.ToolError{Msg: fmt.Sprintf("tool %s failed (%s)%s", t.Name, hostcmd.Describe(out.Err), stderrSuffix(out.Stderr))}
	case out.StdoutOver:
		return nil, cpu, &wire.ToolError{Msg: fmt.Sprintf("tool %s printed more than %d bytes", t.Name, maxToolOutput)}
	}
	return parseResult(out.Stdout), cpu, nil
}

func stderrSuffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

// parseResult reads a tool's stdout: JSON when it parses, else the text
// without its final newline.
func parseResult(out []byte) any {
	trimmed := bytes.TrimSpace(out)
	if len(trimmed) > 0 {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err == nil && !dec.More() {
			return v
		}
	}
	s := string(out)
	s = strings.TrimSuffix(s, "\n")
	return strings.TrimSuffix(s, "\r")
}

// resultText is a tool result as a sub-LLM's tool message sees it.
func resultText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
