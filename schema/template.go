package schema

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/rlmrun/rlmrun/internal/tmpl"
)

// tmplScope tells the checker what a template may refer to.
type tmplScope struct {
	fields []string
	vars   map[string]bool // nil: any var (checked per rollout elsewhere)
	groups map[string]bool // regex groups of the reply's match, for steps
}

// checkTemplate parses text and returns a message when it does not parse,
// costs too much, or refers to a field the scope lacks, with the vars it
// uses. t is nil for plain text.
func checkTemplate(text string, sc tmplScope) (t *tmpl.Template, msg string, varsUsed []string) {
	if !tmpl.IsTemplate(text) {
		return nil, "", nil
	}
	t, err := tmpl.Parse("t", text)
	if err != nil {
		var cost *tmpl.CostError
		if errors.As(err, &cost) {
			return nil, cost.Msg, nil
		}
		m := err.Error()
		m = strings.TrimPrefix(m, "template: ")
		m = strings.TrimPrefix(m, "t:")
		return nil, "template does not parse: " + m, nil
	}
	msg, varsUsed = checkRefs(t.Refs(), sc)
	return t, msg, varsUsed
}

func checkRefs(refs [][]string, sc tmplScope) (msg string, varsUsed []string) {
	for _, path := range refs {
		root := path[0]
		if !contains(sc.fields, root) {
			known := make([]string, len(sc.fields))
			for i, f := range sc.fields {
				known[i] = "." + f
			}
			hint := ""
			if s := suggest(root, sc.fields); s != "" {
				hint = fmt.Sprintf(" (did you mean .%s?)", s)
			}
			return fmt.Sprintf("template uses unknown field .%s%s; known fields: %s", strings.Join(path, "."), hint, strings.Join(known, ", ")), nil
		}
		switch root {
		case "vars":
			if len(path) > 1 {
				varsUsed = append(varsUsed, path[1])
				if sc.vars != nil && !sc.vars[path[1]] {
					return fmt.Sprintf("template uses .vars.%s, but the rollout defines no var %q%s", path[1], path[1], didYouMean(path[1], sc.vars)), nil
				}
			}
		case "groups":
			if len(path) > 1 && sc.groups != nil && !sc.groups[path[1]] {
				names := make([]string, 0, len(sc.groups))
				for g := range sc.groups {
					names = append(names, g)
				}
				sort.Strings(names)
				return fmt.Sprintf("template uses .groups.%s, but the match regex has no group %q (it has: %s)", path[1], path[1], strings.Join(names, ", ")), nil
			}
		case "rollout", "repeat", "prompt", "tool_result", "tool_results":
			if len(path) > 1 {
				return fmt.Sprintf("template uses .%s, but .%s has no fields", strings.Join(path, "."), root), nil
			}
		}
	}
	return "", varsUsed
}

// didYouMean is " (did you mean "x"?)" when name is a likely typo of one
// of the known names, else "".
func didYouMean(name string, known map[string]bool) string {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	if s := suggest(name, names); s != "" {
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
