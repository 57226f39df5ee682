package schema

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/go-multierror"
)

// Problem is one thing wrong with a spec, located in its file.
type Problem struct {
	File    string
	Pos     Pos
	Path    string // field path, e.g. rollouts[2].turns[0].code; empty for the whole document
	Message string
	ptr     string // JSON pointer of the offending value, when known
}

// Error formats the problem as FILE:LINE:COL: PATH: message.
func (p *Problem) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d:%d: ", p.File, p.Pos.Line, p.Pos.Col)
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	// One problem is one line, whatever text from the spec the message quotes.
	b.WriteString(strings.ReplaceAll(p.Message, "\n", `\n`))
	return b.String()
}

// Problems returns every *Problem in err (as returned by Load), in file order.
func Problems(err error) []*Problem {
	var out []*Problem
	var merr *multierror.Error
	if errors.As(err, &merr) {
		for _, e := range merr.Errors {
			var p *Problem
			if errors.As(e, &p) {
				out = append(out, p)
			}
		}
		return out
	}
	var p *Problem
	if errors.As(err, &p) {
		out = append(out, p)
	}
	return out
}

// joinProblems turns problems into one error that prints one problem per line.
// A problem without a file is file's; the loaded spec's problems come
// first, then each base's, each file's in line order.
func joinProblems(file string, probs []Problem) error {
	if len(probs) == 0 {
		return nil
	}
	for i := range probs {
		if probs[i].File == "" {
			probs[i].File = file
		}
	}
	sort.SliceStable(probs, func(i, j int) bool {
		fa, fb := probs[i].File, probs[j].File
		if fa != fb {
			if fa == file || fb == file {
				return fa == file
			}
			return fa < fb
		}
		a, b := probs[i].Pos, probs[j].Pos
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	var merr *multierror.Error
	seen := map[string]bool{}
	for i := range probs {
		p := probs[i]
		if seen[p.Error()] {
			continue
		}
		seen[p.Error()] = true
		merr = multierror.Append(merr, &p)
	}
	merr.ErrorFormat = func(es []error) string {
		lines := make([]string, len(es))
		for i, e := range es {
			lines[i] = e.Error()
		}
		return strings.Join(lines, "\n")
	}
	return merr
}
