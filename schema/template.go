package schema

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
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

// errTooLarge is a render past MaxRendered.
var errTooLarge = fmt.Errorf("renders more than %d bytes", MaxRendered)

// TemplateFuncs are the functions spec templates may call besides Go's builtins.
func TemplateFuncs() template.FuncMap {
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

// Render executes text as a spec template over data. A missing map key is an
// error, not "<no value>".
func Render(name, text string, data map[string]any) (string, error) {
	if !strings.Contains(text, "{{") {
		return text, nil
	}
	t, err := parseTemplate(name, text)
	if err != nil {
		return "", err
	}
	return execute(t, data)
}

func parseTemplate(name, text string) (*template.Template, error) {
	return template.New(name).Option("missingkey=error").Funcs(TemplateFuncs()).Parse(text)
}

func execute(t *template.Template, data map[string]any) (string, error) {
	if t == nil {
		return "", nil
	}
	if msg := checkCost(t); msg != "" {
		return "", errors.New(msg)
	}
	b := &cappedBuilder{max: MaxRendered}
	if err := t.Execute(b, data); err != nil {
		if errors.Is(err, errTooLarge) {
			return "", errTooLarge
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
		return 0, errTooLarge
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

// RolloutData is the template data of strings evaluated once per rollout.
func RolloutData(inst Instance) map[string]any {
	vars := map[string]string{}
	for k, v := range inst.Rollout.Vars {
		vars[k] = v
	}
	return map[string]any{"vars": vars, "rollout": inst.ID, "repeat": inst.RepeatIndex}
}

// Fields available to templates, by where the template is evaluated.
var (
	rolloutFields = []string{"repeat", "rollout", "vars"}
	stepFields    = []string{"groups", "prompt", "repeat", "rollout", "tool_result", "tool_results", "vars"}
)

// tmplScope tells the checker what a template may refer to.
type tmplScope struct {
	fields []string
	vars   map[string]bool // nil: any var (checked per rollout elsewhere)
	groups map[string]bool // regex groups of the reply's match, for steps
}

// fieldRef is a reference to .a.b found in a template.
type fieldRef struct{ path []string }

// templateRefs returns the data fields t refers to from the top-level dot
// (inside with/range the dot moves, so those bodies are skipped).
func templateRefs(t *template.Template) []fieldRef {
	var refs []fieldRef
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
				refs = append(refs, fieldRef{path: x.Ident})
			}
		case *parse.VariableNode:
			if len(x.Ident) > 1 && x.Ident[0] == "$" {
				refs = append(refs, fieldRef{path: x.Ident[1:]})
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

// checkTemplate parses text and returns a message when it does not parse or
// refers to a field the scope lacks, with the vars it uses. t is nil for
// plain text.
func checkTemplate(text string, sc tmplScope) (t *template.Template, msg string, varsUsed []string) {
	if !strings.Contains(text, "{{") {
		return nil, "", nil
	}
	t, err := parseTemplate("t", text)
	if err != nil {
		m := err.Error()
		m = strings.TrimPrefix(m, "template: ")
		m = strings.TrimPrefix(m, "t:")
		return nil, "template does not parse: " + m, nil
	}
	if msg := checkCost(t); msg != "" {
		return nil, msg, nil
	}
	msg, varsUsed = checkRefs(templateRefs(t), sc)
	return t, msg, varsUsed
}

func checkRefs(refs []fieldRef, sc tmplScope) (msg string, varsUsed []string) {
	for _, r := range refs {
		root := r.path[0]
		if !contains(sc.fields, root) {
			known := make([]string, len(sc.fields))
			for i, f := range sc.fields {
				known[i] = "." + f
			}
			hint := ""
			if s := suggest(root, sc.fields); s != "" {
				hint = fmt.Sprintf(" (did you mean .%s?)", s)
			}
			return fmt.Sprintf("template uses unknown field .%s%s; known fields: %s", strings.Join(r.path, "."), hint, strings.Join(known, ", ")), nil
		}
		switch root {
		case "vars":
			if len(r.path) > 1 {
				varsUsed = append(varsUsed, r.path[1])
				if sc.vars != nil && !sc.vars[r.path[1]] {
					return fmt.Sprintf("template uses .vars.%s, but the rollout defines no var %q%s", r.path[1], r.path[1], varHint(r.path[1], sc.vars)), nil
				}
			}
		case "groups":
			if len(r.path) > 1 && sc.groups != nil && !sc.groups[r.path[1]] {
				names := make([]string, 0, len(sc.groups))
				for g := range sc.groups {
					names = append(names, g)
				}
				sort.Strings(names)
				return fmt.Sprintf("template uses .groups.%s, but the match regex has no group %q (it has: %s)", r.path[1], r.path[1], strings.Join(names, ", ")), nil
			}
		case "rollout", "repeat", "prompt", "tool_result", "tool_results":
			if len(r.path) > 1 {
				return fmt.Sprintf("template uses .%s, but .%s has no fields", strings.Join(r.path, "."), root), nil
			}
		}
	}
	return "", varsUsed
}

func varHint(name string, vars map[string]bool) string {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	if s := suggest(name, keys); s != "" {
		return fmt.Sprintf(" (did you mean %q?)", s)
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// suggest returns the candidate closest to s when it is close enough to be a
// likely typo.
func suggest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	for _, c := range candidates {
		d := levenshtein(strings.ToLower(s), strings.ToLower(c))
		if d < bestD {
			best, bestD = c, d
		}
	}
	limit := 2
	if len(s) <= 3 {
		limit = 1
	}
	if bestD <= limit || (best != "" && (strings.HasPrefix(best, s) || strings.HasPrefix(s, best)) && len(s) >= 3) {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
