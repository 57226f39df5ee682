// Package toolcmd is the REPL's side of a root tool called from Bash: it
// reads the command line the way the reference's helper did (positional
// JSON-decoded arguments, --json PAYLOAD or JSON on stdin, and for llm_batch
// several prompts, --lines or a JSON object), calls the tool through the
// interception server, and prints the result or "Error: ..." with exit
// status 1. The agent runs it for the Bash functions of the tools; the
// rlmrun binary runs it when started under a tool's name from PATH.
package toolcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// modelMessage is an error whose text the model reads verbatim: the
// reference's wording, capital letter and full stop included.
type modelMessage string

func (m modelMessage) Error() string { return string(m) }

// Caller performs one root-tool call.
type Caller func(ctx context.Context, tool string, args []any, kwargs map[string]any) (result any, printLines []string, err error)

// parsed is a tool command line.
type parsed struct {
	lines   bool
	json    bool
	payload *string
	args    []string
}

func parse(argv []string) parsed {
	var p parsed
	for i := 0; i < len(argv); i++ {
		switch a := argv[i]; a {
		case "--lines":
			p.lines = true
		case "--json":
			p.json = true
			if i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "--") {
				payload := argv[i+1]
				p.payload = &payload
				i++
			}
		default:
			p.args = append(p.args, a)
		}
	}
	return p
}

// NeedsStdin says whether a command line reads stdin: --lines, --json
// without a payload, and llm_batch without prompts. Other tools never read it,
// so `yes | tool x` does not hang.
func NeedsStdin(tool string, argv []string) bool {
	p := parse(argv)
	if p.lines || (p.json && p.payload == nil) {
		return true
	}
	return tool == wire.ReservedToolName && !p.json && len(p.args) == 0
}

// Result is what a command prints and its exit status.
type Result struct {
	Stdout string
	Stderr string
	Code   int
}

func failure(err error) Result {
	return Result{Stderr: "Error: " + err.Error() + "\n", Code: 1}
}

// Run interprets one command line. stdin is read only when NeedsStdin says so.
func Run(ctx context.Context, tool string, argv []string, stdin func() (string, error), call Caller) Result {
	p := parse(argv)
	readStdin := func() (string, error) {
		if stdin == nil {
			return "", nil
		}
		return stdin()
	}
	loadJSON := func() (any, error) {
		raw := ""
		if p.payload != nil {
			raw = *p.payload
		} else {
			s, err := readStdin()
			if err != nil {
				return nil, err
			}
			raw = strings.TrimSpace(s)
		}
		if raw == "" {
			return nil, modelMessage("Missing JSON payload.")
		}
		v, err := decodeJSON(raw)
		if err != nil {
			return nil, modelMessage(fmt.Sprintf("Invalid JSON payload: %v", err))
		}
		return v, nil
	}
	if tool == wire.ReservedToolName {
		return runBatch(ctx, p, loadJSON, readStdin, call)
	}
	args := []any{}
	kwargs := map[string]any{}
	if p.json {
		if len(p.args) > 0 {
			return failure(modelMessage("--json does not accept extra args."))
		}
		data, err := loadJSON()
		if err != nil {
			return failure(err)
		}
		args, kwargs, err = coerceArgsKwargs(data)
		if err != nil {
			return failure(err)
		}
	} else {
		for _, a := range p.args {
			args = append(args, decodeArg(a))
		}
	}
	res, lines, err := call(ctx, tool, args, kwargs)
	if err != nil {
		return failure(err)
	}
	var out strings.Builder
	printLines(&out, lines)
	printResult(&out, res)
	return Result{Stdout: out.String()}
}

func runBatch(ctx context.Context, p parsed, loadJSON func() (any, error), readStdin func() (string, error), call Caller) Result {
	prompts, err := batchPrompts(p, loadJSON, readStdin)
	if err != nil {
		return failure(err)
	}
	res, lines, err := call(ctx, wire.ReservedToolName, []any{prompts}, map[string]any{})
	if err != nil {
		return failure(err)
	}
	return Result{Stdout: formatBatch(res, lines)}
}

// batchPrompts reads llm_batch's prompts from its command line: --json
// (a list, {"prompts": [...]} or {"args"/"kwargs"}), --lines (one per stdin
// line), one JSON list argument, several arguments, or stdin.
func batchPrompts(p parsed, loadJSON func() (any, error), readStdin func() (string, error)) (any, error) {
	switch {
	case p.json:
		if len(p.args) > 0 {
			return nil, modelMessage("llm_batch --json does not accept extra args.")
		}
		data, err := loadJSON()
		if err != nil {
			return nil, err
		}
		return jsonPrompts(data)
	case p.lines:
		s, err := readStdin()
		if err != nil {
			return nil, err
		}
		lines := []any{}
		for _, l := range splitLines(s) {
			lines = append(lines, l)
		}
		return lines, nil
	case len(p.args) == 1:
		raw := strings.TrimSpace(p.args[0])
		if strings.HasPrefix(raw, "{") || strings.HasPrefix(raw, "[") {
			if v, err := decodeJSON(raw); err == nil {
				return coercePrompts(v), nil
			}
		}
		return []any{p.args[0]}, nil
	case len(p.args) > 1:
		list := make([]any, len(p.args))
		for i, a := range p.args {
			list[i] = a
		}
		return list, nil
	}
	s, err := readStdin()
	if err != nil {
		return nil, err
	}
	raw := strings.TrimSpace(s)
	if raw == "" {
		return []any{}, nil
	}
	if v, err := decodeJSON(raw); err == nil {
		return coercePrompts(v), nil
	}
	return []any{raw}, nil
}

// jsonPrompts reads the prompts of `llm_batch --json PAYLOAD`.
func jsonPrompts(data any) (any, error) {
	m, isMap := data.(map[string]any)
	switch {
	case isMap && m["prompts"] != nil:
		return m["prompts"], nil
	case isMap && (m["args"] != nil || m["kwargs"] != nil):
		args, kwargs, err := coerceArgsKwargs(data)
		if err != nil {
			return nil, err
		}
		if kp, ok := kwargs["prompts"]; ok {
			return kp, nil
		}
		if len(args) > 0 {
			return args, nil
		}
		return nil, modelMessage("llm_batch --json requires 'prompts' or non-empty 'args'.")
	}
	return coercePrompts(data), nil
}

// formatBatch prints a batch's answers as the reference did: its summary
// lines, then per item a header with the item's summary and its content.
func formatBatch(res any, lines []string) string {
	var out strings.Builder
	summary, perItem := splitBatchLines(lines)
	printLines(&out, summary)
	items, isList := res.([]any)
	if !isList {
		printLines(&out, lines)
		printResult(&out, res)
		return out.String()
	}
	for i, item := range items {
		if i > 0 {
			out.WriteString("\n")
		}
		header := fmt.Sprintf("----- %s[%d]", wire.ReservedToolName, i)
		if meta, ok := perItem[i]; ok {
			header += " (" + meta + ")"
		}
		out.WriteString(header + " -----\n")
		text, isStr := item.(string)
		if !isStr {
			text = PythonJSON(item)
		}
		out.WriteString(text)
		if !strings.HasSuffix(text, "\n") {
			out.WriteString("\n")
		}
	}
	return out.String()
}

// splitLines splits like Python's str.splitlines for \n and \r\n.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.TrimSuffix(s, "\n")
	return strings.Split(s, "\n")
}

// splitBatchLines separates summary lines from per-item lines "[i]: meta".
func splitBatchLines(lines []string) (summary []string, perItem map[int]string) {
	perItem = map[int]string{}
	for _, l := range lines {
		text := strings.TrimSpace(l)
		if strings.HasPrefix(text, "[") {
			if end := strings.Index(text, "]:"); end > 0 {
				if idx, err := strconv.Atoi(text[1:end]); err == nil {
					perItem[idx] = strings.TrimSpace(text[end+2:])
					continue
				}
			}
		}
		summary = append(summary, text)
	}
	return summary, perItem
}

func coercePrompts(data any) any {
	switch x := data.(type) {
	case map[string]any:
		if p, ok := x["prompts"]; ok {
			return p
		}
		if p, ok := x["messages"]; ok {
			return p
		}
		if p, ok := x["prompt"]; ok {
			return []any{p}
		}
		return []any{x}
	case []any:
		return x
	}
	return []any{data}
}

func coerceArgsKwargs(data any) ([]any, map[string]any, error) {
	var args any = []any{}
	var kwargs any = map[string]any{}
	switch x := data.(type) {
	case map[string]any:
		_, hasArgs := x["args"]
		_, hasKwargs := x["kwargs"]
		if hasArgs || hasKwargs {
			if hasArgs {
				args = x["args"]
			}
			if hasKwargs {
				kwargs = x["kwargs"]
			}
		} else {
			kwargs = x
		}
	case []any:
		args = x
	default:
		args = []any{data}
	}
	a, ok := args.([]any)
	if !ok {
		return nil, nil, modelMessage("JSON args must be a list.")
	}
	k, ok := kwargs.(map[string]any)
	if !ok {
		return nil, nil, modelMessage("JSON kwargs must be an object.")
	}
	return a, k, nil
}

// decodeArg JSON-decodes a positional argument when it parses, else keeps it.
func decodeArg(raw string) any {
	if v, err := decodeJSON(raw); err == nil {
		return v
	}
	return raw
}

func decodeJSON(raw string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("extra data after JSON value")
	}
	return v, nil
}

func printLines(b *strings.Builder, lines []string) {
	for _, l := range lines {
		b.WriteString(l)
		if !strings.HasSuffix(l, "\n") {
			b.WriteString("\n")
		}
	}
}

// printResult prints strings raw (with a newline), anything else as JSON.
func printResult(b *strings.Builder, v any) {
	if s, ok := v.(string); ok {
		b.WriteString(s)
		if !strings.HasSuffix(s, "\n") {
			b.WriteString("\n")
		}
		return
	}
	b.WriteString(PythonJSON(v))
	b.WriteString("\n")
}

// PythonJSON encodes v as Python's json.dumps does by default (", " and ": "
// separators, non-ASCII escaped), so printed results match the reference.
func PythonJSON(v any) string {
	var b strings.Builder
	writePy(&b, v)
	return b.String()
}

func writePy(b *strings.Builder, v any) {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case json.Number:
		b.WriteString(x.String())
	case float64:
		b.WriteString(strconv.FormatFloat(x, 'g', -1, 64))
	case int:
		b.WriteString(strconv.Itoa(x))
	case string:
		writePyString(b, x)
	case []any:
		b.WriteString("[")
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			writePy(b, e)
		}
		b.WriteString("]")
	case map[string]any:
		// Python keeps insertion order; JSON objects arriving here have lost
		// it, so keys are sorted for a stable rendering.
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("{")
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			writePyString(b, k)
			b.WriteString(": ")
			writePy(b, x[k])
		}
		b.WriteString("}")
	default:
		raw, _ := json.Marshal(x)
		b.Write(raw)
	}
}

func writePyString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			// Everything outside printable ASCII is escaped (ensure_ascii).
			switch {
			case r >= 0x10000:
				r -= 0x10000
				fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
			case r < 0x20 || r >= 0x7f:
				fmt.Fprintf(b, `\u%04x`, r)
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// HTTPCaller posts calls to a rollout's tools route with its secret. An
// error reply's "error" field becomes the error message.
func HTTPCaller(client *http.Client, url, secret string) Caller {
	return func(ctx context.Context, tool string, args []any, kwargs map[string]any) (any, []string, error) {
		if url == "" {
			return nil, nil, modelMessage("Root tool URL not configured")
		}
		if args == nil {
			args = []any{}
		}
		body, err := json.Marshal(wire.ToolRequest{ToolName: tool, Args: args, Kwargs: kwargs})
		if err != nil {
			return nil, nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := client.Do(req)
		if err != nil {
			var ue interface{ Timeout() bool }
			if errors.As(err, &ue) && ue.Timeout() {
				return nil, nil, fmt.Errorf("tool call timed out after %s", client.Timeout)
			}
			return nil, nil, err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return nil, nil, err
		}
		var reply wire.ToolResponse
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&reply); err != nil {
			return nil, nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
		}
		if reply.Error != nil {
			return nil, nil, errors.New(*reply.Error)
		}
		if resp.StatusCode != http.StatusOK {
			return nil, nil, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return reply.Result, reply.PrintLines, nil
	}
}
