package schema

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Pos is a 1-based line and column in the spec file.
type Pos struct{ Line, Col int }

// nodeInfo is what the loader remembers about one node of the document.
type nodeInfo struct {
	Pos     Pos    // the value's position
	KeyPos  Pos    // the key's position when the value sits in a mapping
	Display string // field path as shown to users: rollouts[2].turns[0].code
	Keys    []string
	// File is the spec file that wrote the value: the loaded spec's, or
	// that of a base it extends.
	File string
}

// positionIx maps JSON pointers (as used by JSON Schema) to node facts.
type positionIx struct {
	byPointer map[string]*nodeInfo
	byDisplay map[string]Pos
	// fileByDisplay names the file of values a base wrote (absent: the
	// loaded spec's own).
	fileByDisplay map[string]string
}

func newPositionIx() *positionIx {
	return &positionIx{byPointer: map[string]*nodeInfo{}, byDisplay: map[string]Pos{}, fileByDisplay: map[string]string{}}
}

func (ix *positionIx) add(ptr string, info *nodeInfo) {
	ix.byPointer[ptr] = info
	ix.byDisplay[info.Display] = info.Pos
	if info.File != "" {
		ix.fileByDisplay[info.Display] = info.File
	} else {
		delete(ix.fileByDisplay, info.Display)
	}
}

// fileOf names the file that wrote the value at a display path, or at its
// closest parent that exists ("" for the loaded spec).
func (ix *positionIx) fileOf(path string) string {
	if ix == nil {
		return ""
	}
	for p := path; ; {
		if _, ok := ix.byDisplay[p]; ok {
			return ix.fileByDisplay[p]
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return ""
		}
		p = p[:i]
	}
}

// Limits that keep hostile documents cheap: aliases can expand a small file
// exponentially ("billion laughs"), so nodes reached through an alias have a
// budget of their own, far below what any real spec needs.
const (
	maxNodes      = 5_000_000
	maxAliasNodes = 100_000
)

// treeBuilder converts a yaml.v3 node tree into plain JSON-like values
// (map[string]any, []any, string, int64, float64, bool, nil), recording positions
// and collecting every problem it meets instead of stopping at the first.
type treeBuilder struct {
	ix         *positionIx
	errs       []Problem
	bad        map[string]bool // pointers of values that could not be converted
	nodes      int
	aliasNodes int
	inAlias    int
	depth      int
	tooLarge   bool
	// alias is the outermost alias being expanded, for messages.
	alias                *yaml.Node
	aliasPath            string
	tooLargeProblemIndex int
	// origin names the base file of nodes a base wrote (extends); file is
	// the file of the node being built ("" for the loaded spec).
	origin map[*yaml.Node]string
	file   string
}

// tooLargeProblem is the one problem to report for a document over the
// limits: what else was found is a consequence of the cut.
func (b *treeBuilder) tooLargeProblem() []Problem {
	return []Problem{b.errs[b.tooLargeProblemIndex]}
}

func (b *treeBuilder) problem(pos Pos, path, format string, args ...any) {
	b.errs = append(b.errs, Problem{File: b.file, Pos: pos, Path: path, Message: fmt.Sprintf(format, args...)})
}

func displayPath(parent, key string, index int) string {
	if index >= 0 {
		return fmt.Sprintf("%s[%d]", parent, index)
	}
	if !identRe.MatchString(key) {
		key = strconv.Quote(key)
		if parent == "" {
			return "[" + key + "]"
		}
		return parent + "[" + key + "]"
	}
	if parent == "" {
		return key
	}
	return parent + "." + key
}

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func posOf(n *yaml.Node) Pos { return Pos{Line: n.Line, Col: n.Column} }

// build converts n, stored at pointer ptr with display path disp.
func (b *treeBuilder) build(n *yaml.Node, ptr, disp string, keyPos Pos) (any, bool) {
	b.nodes++
	if b.inAlias > 0 {
		b.aliasNodes++
	}
	if b.nodes > maxNodes || b.aliasNodes > maxAliasNodes {
		if !b.tooLarge {
			b.tooLarge = true
			b.tooLargeProblemIndex = len(b.errs)
			if b.aliasNodes > maxAliasNodes && b.alias != nil {
				// Where the expansion is written, not somewhere inside it.
				b.problem(posOf(b.alias), b.aliasPath, "document too large: aliases expand to more than %d nodes (here, at *%s)", maxAliasNodes, b.alias.Value)
			} else {
				b.problem(posOf(n), disp, "document too large: more than %d nodes", maxNodes)
			}
		}
		return nil, false
	}
	if f, ok := b.origin[n]; ok && f != b.file {
		prev := b.file
		b.file = f
		defer func() { b.file = prev }()
	}
	b.depth++
	defer func() { b.depth-- }()
	if b.depth > 200 {
		b.problem(posOf(n), disp, "nesting deeper than 200 levels")
		return nil, false
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			b.problem(posOf(n), disp, "unknown alias *%s", n.Value)
			return nil, false
		}
		// The value sits where the alias is written; problems inside it point
		// at the anchored text they come from.
		if b.inAlias == 0 {
			b.alias, b.aliasPath = n, disp
		}
		b.inAlias++
		v, ok := b.build(n.Alias, ptr, disp, keyPos)
		b.inAlias--
		if info := b.ix.byPointer[ptr]; info != nil {
			info.Pos = posOf(n)
			b.ix.byDisplay[disp] = info.Pos
		}
		return v, ok
	}
	info := &nodeInfo{Pos: posOf(n), KeyPos: keyPos, Display: disp, File: b.file}
	b.ix.add(ptr, info)
	switch n.Kind {
	case yaml.MappingNode:
		return b.mapping(n, ptr, disp, info)
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		ok := true
		for i, c := range n.Content {
			v, cok := b.build(c, ptr+"/"+strconv.Itoa(i), displayPath(disp, "", i), Pos{})
			ok = ok && cok
			out = append(out, v)
		}
		return out, ok
	case yaml.ScalarNode:
		v, ok := b.scalar(n, disp)
		if !ok {
			b.bad[ptr] = true
		}
		return v, ok
	default:
		b.problem(posOf(n), disp, "unexpected YAML node")
		return nil, false
	}
}

func (b *treeBuilder) mapping(n *yaml.Node, ptr, disp string, info *nodeInfo) (any, bool) {
	out := make(map[string]any, len(n.Content)/2)
	firstAt := map[string]Pos{}
	ok := true
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			what := map[string]string{"!!int": "an integer", "!!float": "a number", "!!bool": "a boolean", "!!null": "null", "!!timestamp": "a timestamp"}[k.ShortTag()]
			if what == "" {
				what = "not a plain string"
			}
			if k.Kind != yaml.ScalarNode {
				what = "not a plain string"
			}
			b.problem(posOf(k), disp, "mapping key %q is %s; keys must be strings (quote it)", k.Value, what)
			ok = false
			continue
		}
		key := k.Value
		if prev, dup := firstAt[key]; dup {
			b.problem(posOf(k), displayPath(disp, key, -1), "duplicate key %q (first at line %d)", key, prev.Line)
			ok = false
			continue
		}
		firstAt[key] = posOf(k)
		info.Keys = append(info.Keys, key)
		val, vok := b.build(v, ptr+"/"+escapePointer(key), displayPath(disp, key, -1), posOf(k))
		ok = ok && vok
		out[key] = val
	}
	// Merge keys (<<: *defaults) add the keys the mapping does not set itself.
	for _, m := range merges {
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = m.Content
		}
		for _, src := range srcs {
			target := src
			if target.Kind == yaml.AliasNode {
				target = target.Alias
			}
			if target == nil || target.Kind != yaml.MappingNode {
				b.problem(posOf(src), disp, "a merge key (<<) needs a mapping or a list of mappings")
				ok = false
				continue
			}
			for i := 0; i+1 < len(target.Content); i += 2 {
				k, v := target.Content[i], target.Content[i+1]
				if k.ShortTag() != "!!str" {
					continue
				}
				if _, set := firstAt[k.Value]; set {
					continue
				}
				firstAt[k.Value] = posOf(src)
				info.Keys = append(info.Keys, k.Value)
				b.inAlias++
				val, vok := b.build(v, ptr+"/"+escapePointer(k.Value), displayPath(disp, k.Value, -1), posOf(src))
				b.inAlias--
				ok = ok && vok
				out[k.Value] = val
			}
		}
	}
	return out, ok
}

func (b *treeBuilder) scalar(n *yaml.Node, disp string) (any, bool) {
	tag := n.ShortTag()
	switch tag {
	case "!!str":
		return n.Value, true
	case "!!null":
		return nil, true
	case "!!bool":
		var v bool
		if err := n.Decode(&v); err != nil {
			b.problem(posOf(n), disp, "invalid boolean %q", n.Value)
			return nil, false
		}
		return v, true
	case "!!int":
		var v int64
		if err := n.Decode(&v); err != nil {
			b.problem(posOf(n), disp, "integer %s is out of range", n.Value)
			return nil, false
		}
		return v, true
	case "!!float":
		var v float64
		if err := n.Decode(&v); err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
			b.problem(posOf(n), disp, "%s is not a finite number (quote it if it is text)", n.Value)
			return nil, false
		}
		return v, true
	case "!!timestamp":
		b.problem(posOf(n), disp, "unquoted timestamp %s: quote it (\"%s\") to make it a string", n.Value, n.Value)
		return nil, false
	case "!!binary":
		b.problem(posOf(n), disp, "!!binary values are not supported; use a string")
		return nil, false
	default:
		b.problem(posOf(n), disp, "YAML tag %s is not supported; use plain strings, numbers, booleans, lists and mappings", tag)
		return nil, false
	}
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML reads one YAML document. Syntax problems come back as Problems.
func parseYAML(data []byte) (doc *yaml.Node, probs []Problem) {
	root, extra, err := decodeYAML(data)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, []Problem{{Pos: Pos{1, 1}, Message: "the file is empty; a spec needs at least version, name and rollouts"}}
		}
		return nil, []Problem{yamlProblem(data, err)}
	}
	if extra != nil {
		return nil, []Problem{{Pos: posOf(extra), Message: "more than one YAML document ('---'); a spec is a single document"}}
	}
	return root, nil
}

// decodeYAML decodes the first document of data and, if there is one, the
// start of a second.
func decodeYAML(data []byte) (root, extra *yaml.Node, err error) {
	defer func() {
		// yaml.v3 is third-party code: a panic on hostile input becomes an error.
		if r := recover(); r != nil {
			root, extra, err = nil, nil, fmt.Errorf("yaml: YAML parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		return nil, nil, err
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		return &doc, &next, nil
	} else if !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	return &doc, nil, nil
}

// syntaxMessage is a syntax error's message without yaml.v3's "line N:"
// (which names the line where the enclosing construct starts, counted from
// zero, not where the problem is).
func syntaxMessage(err error) string {
	msg := err.Error()
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		return m[2]
	}
	return strings.TrimPrefix(msg, "yaml: ")
}

// yamlProblem locates a syntax error. The parser stops at the first
// problem, so the shortest prefix of the document that fails with the same
// message ends where the problem is: found by bisection, first over lines,
// then within the line. Only failed parses pay for it.
func yamlProblem(data []byte, err error) Problem {
	msg := syntaxMessage(err)
	same := func(prefix []byte) bool {
		_, _, perr := decodeYAML(prefix)
		return perr != nil && !errors.Is(perr, io.EOF) && syntaxMessage(perr) == msg
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	ends := make([]int, len(lines)) // byte offset after each line
	off := 0
	for i, l := range lines {
		off += len(l)
		ends[i] = off
	}
	// The first line count whose prefix fails the same way.
	n := sort.Search(len(lines), func(i int) bool { return same(data[:ends[i]]) })
	if n == len(lines) {
		// Not reproducible on a prefix: fall back on yaml.v3's line.
		line := 1
		if m := yamlLineRe.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
			line = max(line, 1)
		}
		return Problem{Pos: Pos{line, 1}, Message: "YAML syntax error: " + msg}
	}
	start := 0
	if n > 0 {
		start = ends[n-1]
	}
	text := lines[n]
	// The first byte of the line that makes the prefix fail.
	c := sort.Search(len(text), func(j int) bool { return same(data[:start+j+1]) })
	col := utf8.RuneCount(text[:min(c, len(text))]) + 1
	if c >= len(text) {
		col = utf8.RuneCount(bytes.TrimRight(text, "\r\n")) + 1
	}
	return Problem{Pos: Pos{n + 1, col}, Message: "YAML syntax error: " + msg}
}
