package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/tunnel"
)

// maxToolOutput caps what a host tool may print as its result.
const maxToolOutput = 16 << 20

// toolList merges tool lists as the reference did: in order, an identical
// repeat dropped (the loader already refused two different tools with one name).
func toolList(lists ...[]schema.Tool) []schema.Tool {
	seen := map[string]bool{}
	var out []schema.Tool
	for _, l := range lists {
		for _, t := range l {
			if !seen[t.Name] {
				seen[t.Name] = true
				out = append(out, t)
			}
		}
	}
	return out
}

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
			return nil, &tunnel.BadRequest{Msg: fmt.Sprintf("%s() takes no positional arguments but %d were given", t.Name, len(args))}
		}
	} else if len(args) > len(names) {
		return nil, &tunnel.BadRequest{Msg: fmt.Sprintf("%s() takes %d positional argument(s) but %d were given", t.Name, len(names), len(args))}
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
			return nil, &tunnel.BadRequest{Msg: fmt.Sprintf("%s() got multiple values for argument '%s'", t.Name, k)}
		}
		if len(names) > 0 && !known[k] && (params.AdditionalProperties == nil || !*params.AdditionalProperties) {
			return nil, &tunnel.BadRequest{Msg: fmt.Sprintf("%s() got an unexpected keyword argument '%s'", t.Name, k)}
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
		return nil, &tunnel.BadRequest{Msg: fmt.Sprintf("%s() missing %d required argument(s): %s", t.Name, len(missing), strings.Join(missing, ", "))}
	}
	return out, nil
}

// runHostTool runs a tool's command: the call as JSON on stdin, its stdout
// the result (JSON when it parses, else the text), a non-zero exit or the
// tool's timeout an error carrying stderr. It runs in the spec's folder. cpu
// is what the tool's processes used (user + system), for the run's time
// split.
func runHostTool(ctx context.Context, t schema.Tool, dir string, call toolCall) (res any, cpu time.Duration, err error) {
	res, p, err := startHostTool(ctx, t, dir, call)
	if p != nil && p.State() != nil {
		cpu = p.State().UserTime() + p.State().SystemTime()
	}
	return res, cpu, err
}

func startHostTool(ctx context.Context, t schema.Tool, dir string, call toolCall) (any, *procs.Proc, error) {
	args, err := bindArgs(t, call.Args, call.Kwargs)
	if err != nil {
		return nil, nil, err
	}
	call.Arguments = args
	if call.Args == nil {
		call.Args = []any{}
	}
	in, err := json.Marshal(call)
	if err != nil {
		return nil, nil, &tunnel.BadRequest{Msg: fmt.Sprintf("arguments are not JSON: %v", err)}
	}
	timeout := t.Timeout.Duration
	argv := t.Run.Args()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	var stdout capped
	stdout.max = maxToolOutput
	stderr := procs.NewTail(16 << 10)
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	cmd.Env = append(os.Environ(), "RLM_TOOL_NAME="+t.Name, "RLM_TOOL_ROLE="+call.Role)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, nil, &tunnel.ToolError{Msg: fmt.Sprintf("tool %s could not start: %v", t.Name, err)}
	}
	p := procs.Watch(cmd)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.Exited():
	case <-timer.C:
		p.Kill()
		<-p.Exited()
		return nil, p, &tunnel.ToolError{Msg: fmt.Sprintf("tool %s timed out after %s%s", t.Name, t.Timeout.Duration, stderrSuffix(stderr.String()))}
	case <-ctx.Done():
		p.Kill()
		<-p.Exited()
		return nil, p, ctx.Err()
	}
	if err := p.Err(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, p, &tunnel.ToolError{Msg: fmt.Sprintf("tool %s failed (%s)%s", t.Name, ee.ProcessState.String(), stderrSuffix(stderr.String()))}
		}
		return nil, p, &tunnel.ToolError{Msg: fmt.Sprintf("tool %s failed: %v", t.Name, err)}
	}
	if stdout.over {
		return nil, p, &tunnel.ToolError{Msg: fmt.Sprintf("tool %s printed more than %d bytes", t.Name, maxToolOutput)}
	}
	return parseResult(stdout.buf.Bytes()), p, nil
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

// capped is a buffer that stops growing at max.
type capped struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room < len(p) {
		c.over = true
		if room > 0 {
			c.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return c.buf.Write(p)
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
