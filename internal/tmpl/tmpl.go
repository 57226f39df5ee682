// Package tmpl is the template engine of specs: Go's text/template with a
// few functions (json, shq, lower, upper, trim), missing keys as errors, and
// limits that keep any template cheap to run. The runner renders with it,
// the scripted sub-LLM renders its steps with it, and the validator uses its
// analysis (the fields a template refers to, its cost) to check specs
// before they run.
package tmpl

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
)

// Limits that keep a template cheap whatever it says: what it renders is
// capped (a spec is the author's, but reply templates render model text),
// and so are its loops and printf widths; it cannot call itself.
const (
	// MaxRendered is the most a template may render.
	MaxRendered = 16 << 20
	// maxIterations bounds the iterations of a template's nested loops;
	// a loop over data (not a number literal) counts as dataIterations.
	maxIterations  = 1_000_000
	dataIterations = 10_000
	// maxWidth bounds printf widths and precisions.
	maxWidth = 4096
)

// ErrTooLarge is a render past MaxRendered.
var ErrTooLarge = fmt.Errorf("renders more than %d bytes", MaxRendered)

// Funcs are the functions spec templates may call besides Go's builtins.
func Funcs() template.FuncMap {
	return template.FuncMap{
		// printf as the builtin, but a width or precision may not make one
		// call render megabytes.
		"printf": func(format string, args ...any) (string, error) {
			if err := checkWidths(format); err != nil {
				return "", err
			}
			return fmt.Sprintf(format, args...), nil
		},
		"json": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		// shq quotes a value for POSIX shells: abc -> 'abc', it's -> 'it'\''s'.
		"shq":   func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" },
		"lower": strings.ToLower,
		"upper": strings.ToUpper,
		"trim":  strings.TrimSpace,
	}
}

// IsTemplate reports whether text has actions at all; other text renders
// as itself.
func IsTemplate(text string) bool { return strings.Contains(text, "{{") }

// Escape returns a template that renders as text: every "{{" becomes
// {{"{{"}}. (A "}}" outside an action is plain text already.)
func Escape(text string) string {
	return strings.ReplaceAll(text, "{{", `{{"{{"}}`)
}

// Render executes text as a spec template over data. A missing map key is an
// error, not "<no value>".
func Render(name, text string, data map[string]any) (string, error) {
	if !IsTemplate(text) {
		return text, nil
	}
	t, err := Parse(name, text)
	if err != nil {
		return "", err
	}
	return t.Execute(data)
}

// Template is a parsed spec template.
type Template struct{ t *template.Template }

// Parse parses text. A template that defines or calls templates, or whose
// loops run too long, is an error here, before it runs.
func Parse(name, text string) (*Template, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs(Funcs()).Parse(text)
	if err != nil {
		return nil, err
	}
	if msg := checkCost(t); msg != "" {
		return nil, &CostError{Msg: msg}
	}
	return &Template{t: t}, nil
}

// CostError is a template refused for what running it could cost (loops,
// templates calling templates), not for its syntax.
type CostError struct{ Msg string }

func (e *CostError) Error() string { return e.Msg }

// Execute renders the template over data, at most MaxRendered bytes.
func (t *Template) Execute(data map[string]any) (string, error) {
	b := &cappedBuilder{max: MaxRendered}
	if err := t.t.Execute(b, data); err != nil {
		if errors.Is(err, ErrTooLarge) {
			return "", ErrTooLarge
		}
		return "", err
	}
	return b.String(), nil
}

// cappedBuilder fails a write past max: text/template then stops.
type cappedBuilder struct {
	strings.Builder
	max int
}

func (c *cappedBuilder) Write(p []byte) (int, error) {
	if c.Len()+len(p) > c.max {
		return 0, ErrTooLarge
	}
	return c.Builder.Write(p)
}

var widthRe = regexp.MustCompile(`%[-+# 0]*(\*|\d+)?(?:\.(\*|\d+))?`)

// checkWidths refuses printf verbs whose width or precision could render
// more than maxWidth characters.
func checkWidths(format string) error {
	for _, m := range widthRe.FindAllStringSubmatch(format, -1) {
		for _, n := range m[1:] {
			if n == "*" {
				return errors.New("printf: a width or precision from an argument (*) is not allowed")
			}
			if v, err := strconv.Atoi(n); n != "" && (err != nil || v > maxWidth) {
				return fmt.Errorf("printf: width or precision %s is over %d", n, maxWidth)
			}
		}
	}
	return nil
}

// checkCost returns a message when t defines or calls templates (which may
// recurse), or nests loops past maxIterations.
func checkCost(t *template.Template) string {
	if len(t.Templates()) > 1 {
		return "template defines templates (define, block): not supported in specs"
	}
	var msg string
	var visit func(n parse.Node, iterations int64)
	visit = func(n parse.Node, iterations int64) {
		if msg != "" {
			return
		}
		switch x := n.(type) {
		case *parse.ListNode:
			if x == nil {
				return
			}
			for _, c := range x.Nodes {
				visit(c, iterations)
			}
		case *parse.TemplateNode:
			msg = fmt.Sprintf("template calls template %q: not supported in specs", x.Name)
		case *parse.IfNode:
			visit(x.List, iterations)
			visit(x.ElseList, iterations)
		case *parse.WithNode:
			visit(x.List, iterations)
			visit(x.ElseList, iterations)
		case *parse.RangeNode:
			n := rangeCount(x.Pipe)
			total := iterations * n
			if n > maxIterations || total > maxIterations {
				msg = fmt.Sprintf("its loops run %d times: at most %d iterations in all", max(n, total), maxIterations)
				return
			}
			visit(x.List, max(total, iterations))
			visit(x.ElseList, iterations)
		}
	}
	if t.Tree != nil {
		visit(t.Tree.Root, 1)
	}
	return msg
}

// rangeCount is how often a range runs: its number when it ranges over a
// literal, else dataIterations.
func rangeCount(p *parse.PipeNode) int64 {
	if p != nil && len(p.Cmds) == 1 && len(p.Cmds[0].Args) == 1 {
		if num, ok := p.Cmds[0].Args[0].(*parse.NumberNode); ok && num.IsInt {
			return max(num.Int64, 0)
		}
	}
	return dataIterations
}

// RolloutData is the template data of strings evaluated once per rollout:
// .vars, .rollout (its id, "id#2" for repeats) and .repeat (from 1).
func RolloutData(id string, repeat int, vars map[string]string) map[string]any {
	v := make(map[string]string, len(vars))
	for k, val := range vars {
		v[k] = val
	}
	return map[string]any{"vars": v, "rollout": id, "repeat": repeat}
}

// RolloutFields are the fields of RolloutData; StepFields those a scripted
// sub-LLM step sees besides them.
func RolloutFields() []string { return []string{"repeat", "rollout", "vars"} }

// StepFields are the fields of a scripted sub-LLM step's data.
func StepFields() []string {
	return []string{"groups", "prompt", "repeat", "rollout", "tool_result", "tool_results", "vars"}
}

// Refs returns the data fields the template refers to from the top-level
// dot, each as its path (.vars.x is ["vars", "x"]); inside with/range the
// dot moves, so those bodies are skipped.
func (tt *Template) Refs() [][]string {
	t := tt.t
	var refs [][]string
	var visit func(n parse.Node, dotIsRoot bool)
	visit = func(n parse.Node, dotIsRoot bool) {
		switch x := n.(type) {
		case nil:
		case *parse.ListNode:
			if x == nil {
				return
			}
			for _, c := range x.Nodes {
				visit(c, dotIsRoot)
			}
		case *parse.ActionNode:
			visit(x.Pipe, dotIsRoot)
		case *parse.PipeNode:
			if x == nil {
				return
			}
			for _, c := range x.Cmds {
				visit(c, dotIsRoot)
			}
		case *parse.CommandNode:
			for _, a := range x.Args {
				visit(a, dotIsRoot)
			}
		case *parse.FieldNode:
			if dotIsRoot {
				refs = append(refs, x.Ident)
			}
		case *parse.VariableNode:
			if len(x.Ident) > 1 && x.Ident[0] == "$" {
				refs = append(refs, x.Ident[1:])
			}
		case *parse.ChainNode:
			visit(x.Node, dotIsRoot)
		case *parse.IfNode:
			visit(x.Pipe, dotIsRoot)
			visit(x.List, dotIsRoot)
			visit(x.ElseList, dotIsRoot)
		case *parse.RangeNode:
			visit(x.Pipe, dotIsRoot)
			visit(x.List, false)
			visit(x.ElseList, dotIsRoot)
		case *parse.WithNode:
			visit(x.Pipe, dotIsRoot)
			visit(x.List, false)
			visit(x.ElseList, dotIsRoot)
		case *parse.TemplateNode:
			visit(x.Pipe, dotIsRoot)
		}
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			visit(tt.Tree.Root, true)
		}
	}
	return refs
}
