package schema

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

//go:embed spec.schema.json
var schemaJSON []byte

// JSON returns the JSON Schema (draft 2020-12) of spec format v1.
func JSON() []byte { return append([]byte(nil), schemaJSON...) }

// SchemaID is the $id of the embedded schema.
const SchemaID = "https://rlmrun.dev/schema/v1/spec.schema.json"

// Loader validates and loads specs. It holds the parsed schema, so reuse it
// when loading many files.
type Loader struct {
	raw map[string]any
	// Remote, when set, pulls the base of `extends: oci://REF` (REF
	// without the scheme). Without it such bases are a problem.
	Remote func(ref string) (RemoteBase, error)
}

// NewLoader parses the embedded schema.
func NewLoader() (*Loader, error) {
	var raw map[string]any
	if err := json.Unmarshal(schemaJSON, &raw); err != nil {
		return nil, fmt.Errorf("parse embedded schema: %w", err)
	}
	return &Loader{raw: raw}, nil
}

// Load reads, validates and loads the spec in file with a fresh Loader.
func Load(file string) (*Spec, error) {
	l, err := NewLoader()
	if err != nil {
		return nil, err
	}
	return l.Load(file)
}

// Load reads the spec in file. On failure the error lists every problem found,
// one per line as FILE:LINE:COL: PATH: message; use Problems to get them.
func (l *Loader) Load(file string) (*Spec, error) {
	data, err := readLimited(file, MaxSpecBytes)
	if errors.Is(err, errSpecTooLarge) {
		return nil, joinProblems(file, []Problem{{Pos: Pos{1, 1}, Message: fmt.Sprintf("the spec is larger than %d MiB; put large data in files (filesystem.context_dir)", MaxSpecBytes>>20)}})
	}
	if err != nil {
		msg := err.Error()
		var perr *fs.PathError
		if errors.As(err, &perr) {
			msg = perr.Err.Error()
		}
		if errors.Is(err, fs.ErrNotExist) {
			msg = "no such file"
		}
		return nil, joinProblems(file, []Problem{{Pos: Pos{1, 1}, Message: "cannot read spec: " + msg}})
	}
	dir, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("resolve folder of %s: %w", file, err)
	}
	return l.LoadBytes(file, dir, data)
}

// MaxSpecBytes bounds a spec file.
const MaxSpecBytes = 32 << 20

var errSpecTooLarge = errors.New("spec too large")

// readLimited reads at most limit bytes of file (which may be a pipe or a
// device that never ends).
func readLimited(file string, limit int64) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, errSpecTooLarge
	}
	return data, nil
}

// LoadBytes loads a spec from data; file names it in messages and dir is the
// folder relative paths start from.
func (l *Loader) LoadBytes(file, dir string, data []byte) (*Spec, error) {
	doc, probs := parseYAML(data)
	if len(probs) > 0 {
		return nil, joinProblems(file, probs)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, joinProblems(file, []Problem{{Pos: Pos{1, 1}, Message: "the file is empty; a spec needs at least version, name and rollouts"}})
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return nil, joinProblems(file, []Problem{{Pos: posOf(top), Message: fmt.Sprintf("a spec must be a mapping (key: value), not %s", describeNodeKind(top))}})
	}
	x := &extender{l: l, origin: map[*yaml.Node]string{}, chain: []string{canonicalFile(file)}, dirs: map[string]string{}}
	top, probs = x.extend(file, top)
	if len(probs) > 0 {
		return nil, joinProblems(file, probs)
	}
	b := &treeBuilder{ix: newPositionIx(), bad: map[string]bool{}, origin: x.origin}
	tree, _ := b.build(top, "", "", Pos{})
	if b.tooLarge {
		return nil, joinProblems(file, b.tooLargeProblem())
	}
	probs = append(probs, b.errs...)
	root, _ := tree.(map[string]any)

	// Values the builder rejected are nil in the tree; schema errors on them would
	// only repeat what was said, so drop errors at those pointers.
	v := &schemaValidator{raw: l.raw, ix: b.ix, root: root, bad: map[string]bool{}}
	for ptr := range b.bad {
		v.bad[ptr] = true
	}
	in := newInterp(l.raw)
	in.validate(l.raw, tree, "")
	for _, viol := range in.out {
		for _, p := range v.leaf(viol) {
			if !b.bad[p.ptr] {
				probs = append(probs, p)
			}
		}
	}
	for ptr := range v.bad {
		setPointer(root, ptr, nil)
	}
	// model: is a choice, not settings: defaults fill it only when given.
	_, hasModel := root["model"]
	applyDefaults(l.raw, l.raw, root)
	if !hasModel {
		delete(root, "model")
	}

	spec := &Spec{File: file, Dir: dir, positions: b.ix}
	raw, err := json.Marshal(root)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", file, err)
	}
	if err := json.Unmarshal(raw, spec); err != nil {
		// The schema admits only what the Go types accept; reaching here is a bug
		// in the schema, but the user still gets a located message.
		probs = append(probs, Problem{Pos: Pos{1, 1}, Message: "internal error decoding spec: " + err.Error()})
		return nil, joinProblems(file, probs)
	}
	spec.File, spec.Dir, spec.positions = file, dir, b.ix
	if d := spec.BaseDir; d != "" {
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		spec.Dir = filepath.Clean(d)
	}
	finishDecode(spec, root, b.ix)
	spec.Bases, spec.merged, spec.origin = x.bases, top, x.origin
	rebase(spec, b.ix, x.dirs, x.bases)

	sc := &semanticChecker{spec: spec, ix: b.ix, skip: v.bad}
	probs = append(probs, sc.check()...)
	if len(probs) > 0 {
		return nil, joinProblems(file, probs)
	}
	return spec, nil
}

// finishDecode fills what JSON decoding cannot know: key order, presence and
// the field paths of list items.
func finishDecode(s *Spec, root map[string]any, ix *positionIx) {
	lists := []struct {
		ptr   string
		tools []Tool
	}{{"/tools", s.Tools}, {"/root_tools", s.RootTools}, {"/sub_tools", s.SubTools}}
	for _, l := range lists {
		for i := range l.tools {
			if info := ix.byPointer[fmt.Sprintf("%s/%d/parameters/properties", l.ptr, i)]; info != nil {
				l.tools[i].ParamNames = append([]string(nil), info.Keys...)
			}
		}
	}
	if fsys, ok := root["filesystem"].(map[string]any); ok {
		_, s.Filesystem.HasContext = fsys["context"]
	}
	for i := range s.Filesystem.Mutations {
		s.Filesystem.Mutations[i].Path = fmt.Sprintf("filesystem.mutations[%d]", i)
	}
	for i := range s.SubLLM.Replies {
		s.SubLLM.Replies[i].Path = fmt.Sprintf("sub_llm.replies[%d]", i)
	}
	rolls, _ := root["rollouts"].([]any)
	for i := range s.Rollouts {
		r := &s.Rollouts[i]
		r.Index = i
		if i < len(rolls) {
			if m, ok := rolls[i].(map[string]any); ok {
				_, r.Scripted = m["turns"]
			}
		}
		for j := range r.Mutations {
			r.Mutations[j].Path = fmt.Sprintf("rollouts[%d].mutations[%d]", i, j)
		}
		for j := range r.SubLLMReplies {
			r.SubLLMReplies[j].Path = fmt.Sprintf("rollouts[%d].sub_llm_replies[%d]", i, j)
		}
	}
}

// schemaValidator turns JSON Schema errors into located, readable problems.
type schemaValidator struct {
	raw  map[string]any
	ix   *positionIx
	root map[string]any
	bad  map[string]bool // pointers whose values are unusable
}

func (v *schemaValidator) info(ptr string) *nodeInfo {
	if i := v.ix.byPointer[ptr]; i != nil {
		return i
	}
	return &nodeInfo{Pos: Pos{1, 1}}
}

// failure is one violation, located, as the keyword handlers see it.
type failure struct {
	viol violation
	info *nodeInfo
	val  any // the offending value
	hint string
}

// at is a problem at the failing value.
func (f failure) at(msg string) []Problem {
	return []Problem{{File: f.info.File, Pos: f.info.Pos, Path: f.info.Display, Message: msg, ptr: f.viol.ptr}}
}

// leaf turns one violation into readable, located problems.
func (v *schemaValidator) leaf(viol violation) []Problem {
	f := failure{viol: viol, info: v.info(viol.ptr), val: getPointer(v.root, viol.ptr)}
	f.hint, _ = viol.node["x-hint"].(string)
	handler := keywordProblem(viol.kw)
	if handler == nil {
		return f.at("does not satisfy " + viol.kw)
	}
	return handler(v, f)
}

// keywordProblem says, per JSON Schema keyword, what its violation means
// to someone editing a spec (nil: a keyword without a message of its own).
// Handlers that mark the value bad keep later checks from repeating the
// problem.
func keywordProblem(kw string) func(*schemaValidator, failure) []Problem {
	switch kw {
	case "propertyNames":
		return (*schemaValidator).propertyNameProblem
	case "required":
		return (*schemaValidator).requiredProblems
	case "additionalProperties":
		return (*schemaValidator).unknownKeyProblems
	case "type":
		return (*schemaValidator).typeProblem
	case "enum":
		return (*schemaValidator).enumProblem
	case "const":
		return (*schemaValidator).constProblem
	case "pattern":
		return (*schemaValidator).patternProblem
	case "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum":
		return (*schemaValidator).rangeProblem
	case "minLength":
		return func(v *schemaValidator, f failure) []Problem {
			v.bad[f.viol.ptr] = true
			return f.at("must not be empty")
		}
	case "minItems":
		return func(_ *schemaValidator, f failure) []Problem {
			return f.at(fmt.Sprintf("needs at least %v item(s)", f.viol.node["minItems"]))
		}
	case "minProperties", "maxProperties":
		return (*schemaValidator).propertyCountProblem
	}
	return nil
}

func (v *schemaValidator) propertyNameProblem(f failure) []Problem {
	return []Problem{{File: f.info.File, Pos: f.info.KeyPos, Path: f.info.Display, ptr: f.viol.ptr,
		Message: fmt.Sprintf("name %q must be an identifier (letters, digits and '_', not starting with a digit)", f.viol.prop)}}
}

func (v *schemaValidator) requiredProblems(f failure) []Problem {
	req, _ := f.viol.node["required"].([]any)
	obj, _ := f.val.(map[string]any)
	var out []Problem
	for _, r := range req {
		name, _ := r.(string)
		if _, ok := obj[name]; !ok {
			out = append(out, Problem{File: f.info.File, Pos: f.info.Pos, Path: displayPath(f.info.Display, name, -1), Message: "missing required key", ptr: f.viol.ptr})
		}
	}
	return out
}

func (v *schemaValidator) unknownKeyProblems(f failure) []Problem {
	ptr := f.viol.ptr
	props, _ := f.viol.node["properties"].(map[string]any)
	known := make([]string, 0, len(props))
	for k := range props {
		known = append(known, k)
	}
	sort.Strings(known)
	obj, _ := f.val.(map[string]any)
	var out []Problem
	for _, key := range f.info.Keys {
		if _, ok := props[key]; ok {
			continue
		}
		if _, ok := obj[key]; !ok {
			continue
		}
		kinfo := v.info(ptr + "/" + escapePointer(key))
		msg := fmt.Sprintf("unknown key %q", key)
		if s := suggest(key, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		} else if len(known) > 0 {
			msg += " (known keys: " + strings.Join(known, ", ") + ")"
		}
		out = append(out, Problem{File: kinfo.File, Pos: kinfo.KeyPos, Path: kinfo.Display, Message: msg, ptr: ptr})
		v.bad[ptr+"/"+escapePointer(key)] = true
	}
	return out
}

func (v *schemaValidator) typeProblem(f failure) []Problem {
	v.bad[f.viol.ptr] = true
	node := f.viol.node
	// A hint describes multi-type values (durations) better than a type list.
	want := typeWords(node["type"])
	if f.hint != "" {
		if _, multi := node["type"].([]any); multi {
			want = f.hint
		} else {
			want += " (" + f.hint + ")"
		}
	}
	msg := fmt.Sprintf("expected %s, got %s", want, describeValue(f.val))
	switch f.val.(type) {
	case int64, float64, bool:
		if node["type"] == "string" && f.hint == "" {
			msg += fmt.Sprintf("; quote it to make it text: \"%v\"", f.val)
		}
	}
	return f.at(msg)
}

func (v *schemaValidator) enumProblem(f failure) []Problem {
	v.bad[f.viol.ptr] = true
	opts, _ := f.viol.node["enum"].([]any)
	words := make([]string, len(opts))
	for i, o := range opts {
		words[i] = fmt.Sprint(o)
	}
	msg := fmt.Sprintf("must be one of %s, got %s", strings.Join(words, ", "), describeValue(f.val))
	if s, ok := f.val.(string); ok {
		if sug := suggest(s, words); sug != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", sug)
		}
	}
	return f.at(msg)
}

func (v *schemaValidator) constProblem(f failure) []Problem {
	v.bad[f.viol.ptr] = true
	c := f.viol.node["const"]
	if _, isStr := f.val.(string); isStr {
		return f.at(fmt.Sprintf("must be the number %v (unquoted), got %s", c, describeValue(f.val)))
	}
	if f.info.Display == "version" {
		return f.at(fmt.Sprintf("unsupported spec version %v; this rlmrun reads version 1", f.val))
	}
	return f.at(fmt.Sprintf("must be %v, got %s", c, describeValue(f.val)))
}

func (v *schemaValidator) patternProblem(f failure) []Problem {
	v.bad[f.viol.ptr] = true
	if f.hint != "" {
		return f.at(fmt.Sprintf("must be %s, got %s", f.hint, describeValue(f.val)))
	}
	return f.at(fmt.Sprintf("%s does not match pattern %v", describeValue(f.val), f.viol.node["pattern"]))
}

func (v *schemaValidator) rangeProblem(f failure) []Problem {
	v.bad[f.viol.ptr] = true
	kw := f.viol.kw
	op := map[string]string{"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kw]
	return f.at(fmt.Sprintf("must be %s %v, got %s", op, f.viol.node[kw], describeValue(f.val)))
}

func (v *schemaValidator) propertyCountProblem(f failure) []Problem {
	v.bad[f.viol.ptr] = true
	return f.at(propsHint(f.viol.node))
}

func propsHint(node map[string]any) string {
	props, _ := node["properties"].(map[string]any)
	names := make([]string, 0, len(props))
	for k, v := range props {
		// A modifier (x-modifier) goes with another key, never alone.
		if mod, _ := v.(map[string]any)["x-modifier"].(bool); k != "path" && !mod {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	list := strings.Join(names, ", ")
	minP, _ := node["minProperties"].(float64)
	maxP, hasMax := node["maxProperties"].(float64)
	_, hasPath := props["path"]
	switch {
	case hasPath && hasMax:
		return "needs path and exactly one of: " + list
	case hasMax && minP == maxP:
		return "needs exactly one of: " + list
	default:
		return "needs at least one of: " + list
	}
}

func splitPointer(ptr string) []string {
	if ptr == "" {
		return nil
	}
	parts := strings.Split(strings.TrimPrefix(ptr, "/"), "/")
	for i, p := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(p, "~1", "/"), "~0", "~")
	}
	return parts
}

func getPointer(root any, ptr string) any {
	cur := root
	for _, p := range splitPointer(ptr) {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(c) {
				return nil
			}
			cur = c[i]
		default:
			return nil
		}
	}
	return cur
}

func setPointer(root any, ptr string, val any) {
	parts := splitPointer(ptr)
	if len(parts) == 0 {
		return
	}
	parent := getPointer(root, "/"+strings.Join(escapeAll(parts[:len(parts)-1]), "/"))
	if len(parts) == 1 {
		parent = root
	}
	last := parts[len(parts)-1]
	switch c := parent.(type) {
	case map[string]any:
		if val == nil {
			delete(c, last)
		} else {
			c[last] = val
		}
	case []any:
		if i, err := strconv.Atoi(last); err == nil && i >= 0 && i < len(c) {
			c[i] = val
		}
	}
}

func escapeAll(parts []string) []string {
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = escapePointer(p)
	}
	return out
}

// applyDefaults fills absent keys from the schema's `default` annotations, so
// the schema an editor shows and the values rlmrun uses cannot drift apart.
func applyDefaults(root, node map[string]any, inst any) {
	node = resolveRef(root, node)
	switch x := inst.(type) {
	case map[string]any:
		props, _ := node["properties"].(map[string]any)
		for name, ps := range props {
			psm, _ := ps.(map[string]any)
			if psm == nil {
				continue
			}
			resolved := resolveRef(root, psm)
			if _, ok := x[name]; !ok {
				if d, ok := psm["default"]; ok {
					x[name] = cloneJSON(d)
				} else if d, ok := resolved["default"]; ok {
					x[name] = cloneJSON(d)
				} else if _, choice := resolved["required"]; !choice && hasDefaults(root, resolved, 0) {
					// A settings section left out entirely still gets its defaults;
					// objects with required keys are never invented.
					x[name] = map[string]any{}
				} else {
					continue
				}
			}
			applyDefaults(root, resolved, x[name])
		}
	case []any:
		items, _ := node["items"].(map[string]any)
		if items == nil {
			return
		}
		for _, el := range x {
			applyDefaults(root, items, el)
		}
	}
}

// hasDefaults reports whether an object schema sets a default anywhere below it.
func hasDefaults(root, node map[string]any, depth int) bool {
	if depth > 8 || node["type"] != "object" {
		return false
	}
	props, _ := node["properties"].(map[string]any)
	for _, ps := range props {
		psm, _ := ps.(map[string]any)
		if psm == nil {
			continue
		}
		if _, ok := psm["default"]; ok {
			return true
		}
		r := resolveRef(root, psm)
		if _, ok := r["default"]; ok {
			return true
		}
		if hasDefaults(root, r, depth+1) {
			return true
		}
	}
	return false
}

func resolveRef(root, node map[string]any) map[string]any {
	for i := 0; i < 10; i++ {
		ref, ok := node["$ref"].(string)
		if !ok || !strings.HasPrefix(ref, "#") {
			return node
		}
		next, _ := getPointer(root, ref[1:]).(map[string]any)
		if next == nil {
			return node
		}
		node = next
	}
	return node
}

func cloneJSON(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

func typeWords(t any) string {
	switch x := t.(type) {
	case string:
		return article(x)
	case []any:
		words := make([]string, len(x))
		for i, w := range x {
			words[i] = article(fmt.Sprint(w))
		}
		return strings.Join(words, " or ")
	}
	return "another type"
}

func article(t string) string {
	switch t {
	case "object":
		return "a mapping"
	case "array":
		return "a list"
	case "integer":
		return "an integer"
	case "null":
		return "null"
	}
	return "a " + t
}

func describeValue(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		s := x
		if len(s) > 60 {
			s = s[:57] + "..."
		}
		return "string " + strconv.Quote(s)
	case bool:
		return fmt.Sprintf("boolean %v", x)
	case int64:
		return fmt.Sprintf("integer %d", x)
	case float64:
		return "number " + strconv.FormatFloat(x, 'g', -1, 64)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%v", v)
}

func describeNodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		return fmt.Sprintf("the value %q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "this"
}
