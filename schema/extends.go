package schema

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Base is a spec another spec extends (directly or through a chain), in the
// order of the chain: the loaded spec's own base first.
type Base struct {
	// File is the base's spec file on this machine (for an oci:// base, in
	// the cache it was pulled into).
	File string
	// Dir is where the base's relative paths start and its host commands
	// run: its folder, or its own base_dir.
	Dir string
	// Ref and Digest name a base pulled from a registry (oci://REF).
	Ref, Digest string
}

// RemoteBase is what a Loader's Remote hook returns for `extends: oci://REF`:
// the pulled spec file and where it came from.
type RemoteBase struct {
	File   string
	Ref    string
	Digest string
}

// maxExtendsDepth bounds a chain of bases.
const maxExtendsDepth = 16

// OCIScheme starts a registry reference in `extends` and on the command line.
const OCIScheme = "oci://"

// extender resolves the bases of one spec.
type extender struct {
	l      *Loader
	origin map[*yaml.Node]string
	chain  []string // canonical names of the files being extended, outermost first
	bases  []Base
	// dirs maps every file of the chain to where its relative paths start.
	dirs map[string]string
}

// extend returns top merged over its bases (all of them, recursively),
// without extends and with base_dir only from the loaded spec. Nodes that a
// base wrote are marked with its file in x.origin.
func (x *extender) extend(file string, top *yaml.Node) (*yaml.Node, []Problem) {
	extKey, extVal := mappingPair(top, "extends")
	if extVal == nil {
		return top, nil
	}
	top = withoutKeys(top, "extends")
	at := func(format string, args ...any) []Problem {
		return []Problem{{File: x.fileName(file), Pos: posOf(extVal), Path: "extends", Message: fmt.Sprintf(format, args...)}}
	}
	if extVal.Kind != yaml.ScalarNode || extVal.ShortTag() != "!!str" || strings.TrimSpace(extVal.Value) == "" {
		return nil, at("expected a path or oci://REF of the spec to extend, got %s", describeNodeKind(extVal))
	}
	_ = extKey
	ref := extVal.Value
	if len(x.chain) > maxExtendsDepth {
		return nil, at("more than %d bases in a chain of extends", maxExtendsDepth)
	}
	var base Base
	if strings.HasPrefix(ref, OCIScheme) {
		if x.l.Remote == nil {
			return nil, at("%s bases need the rlmrun command (this loader cannot pull from registries)", OCIScheme)
		}
		rb, err := x.l.Remote(strings.TrimPrefix(ref, OCIScheme))
		if err != nil {
			return nil, at("cannot pull %s: %v", ref, err)
		}
		base = Base{File: rb.File, Ref: rb.Ref, Digest: rb.Digest}
	} else {
		// Named as the user would reach it from here, for messages.
		p := ref
		if !filepath.IsAbs(p) {
			p = filepath.Join(filepath.Dir(file), p)
		}
		base = Base{File: filepath.Clean(p)}
	}
	key := canonicalFile(base.File)
	for i, seen := range x.chain {
		if seen == key {
			names := make([]string, 0, len(x.chain)-i+1)
			for _, c := range x.chain[i:] {
				names = append(names, x.short(c))
			}
			return nil, at("a cycle: %s → %s", strings.Join(names, " → "), x.short(key))
		}
	}
	data, err := readLimited(base.File, MaxSpecBytes)
	if err != nil {
		msg := err.Error()
		switch {
		case errors.Is(err, errSpecTooLarge):
			msg = fmt.Sprintf("larger than %d MiB", MaxSpecBytes>>20)
		case errors.Is(err, fs.ErrNotExist):
			msg = "no such file"
		}
		return nil, at("cannot read the base %s: %s", base.File, msg)
	}
	doc, probs := parseYAML(data)
	for i := range probs {
		probs[i].File = base.File
	}
	if len(probs) > 0 {
		return nil, probs
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, []Problem{{File: base.File, Pos: Pos{1, 1}, Message: "a base spec must be a mapping (key: value)"}}
	}
	btop := doc.Content[0]
	markOrigin(btop, base.File, x.origin, 0)
	base.Dir = filepath.Dir(absFile(base.File))
	if _, bd := mappingPair(btop, "base_dir"); bd != nil && bd.Kind == yaml.ScalarNode && bd.Value != "" {
		d := bd.Value
		if !filepath.IsAbs(d) {
			d = filepath.Join(base.Dir, d)
		}
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			return nil, []Problem{{File: base.File, Pos: posOf(bd), Path: "base_dir", Message: fmt.Sprintf("folder %q not found (looked in %q)", bd.Value, d)}}
		}
		base.Dir = filepath.Clean(d)
	}
	btop = withoutKeys(btop, "base_dir")
	x.dirs[base.File] = base.Dir
	x.bases = append(x.bases, base)
	x.chain = append(x.chain, key)
	merged, probs := x.extend(base.File, btop)
	x.chain = x.chain[:len(x.chain)-1]
	if len(probs) > 0 {
		return nil, probs
	}
	return x.merge(merged, top, "", x.fileName(file)), nil
}

// fileName is the name problems give a file of the chain ("" for the
// loaded spec, which joinProblems names).
func (x *extender) fileName(file string) string {
	if len(x.chain) > 0 && canonicalFile(file) == x.chain[0] {
		return ""
	}
	return file
}

func (x *extender) short(canonical string) string {
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, canonical); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return canonical
}

// toolLists are the lists whose items merge by name.
var toolLists = map[string]bool{"tools": true, "root_tools": true, "sub_tools": true}

// merge lays child over base: mappings merge key by key, lists and scalars
// of the child replace the base's, and the tool lists merge by name (a
// child's tool replaces the base's tool of that name, new ones follow).
// Merged mappings are the child's (childFile, "" for the loaded spec).
func (x *extender) merge(base, child *yaml.Node, path, childFile string) *yaml.Node {
	b, c := deref(base), deref(child)
	if b == nil || c == nil {
		return child
	}
	if b.Kind == yaml.SequenceNode && c.Kind == yaml.SequenceNode && toolLists[path] {
		return x.mergeByName(b, c, childFile)
	}
	if b.Kind != yaml.MappingNode || c.Kind != yaml.MappingNode || hasMergeKey(b) || hasMergeKey(c) {
		return child
	}
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: c.Tag, Style: c.Style, Line: c.Line, Column: c.Column}
	x.mark(out, childFile)
	seen := map[string]bool{}
	for i := 0; i+1 < len(b.Content); i += 2 {
		k, v := b.Content[i], b.Content[i+1]
		seen[k.Value] = true
		if ck, cv := mappingPair(c, k.Value); cv != nil {
			out.Content = append(out.Content, ck, x.merge(v, cv, joinPath(path, k.Value), childFile))
			continue
		}
		out.Content = append(out.Content, k, v)
	}
	for i := 0; i+1 < len(c.Content); i += 2 {
		if !seen[c.Content[i].Value] {
			out.Content = append(out.Content, c.Content[i], c.Content[i+1])
		}
	}
	return out
}

func (x *extender) mergeByName(b, c *yaml.Node, childFile string) *yaml.Node {
	out := &yaml.Node{Kind: yaml.SequenceNode, Tag: c.Tag, Style: c.Style, Line: c.Line, Column: c.Column}
	x.mark(out, childFile)
	byName := map[string]int{}
	for _, item := range b.Content {
		if n := itemName(item); n != "" {
			byName[n] = len(out.Content)
		}
		out.Content = append(out.Content, item)
	}
	for _, item := range c.Content {
		if i, ok := byName[itemName(item)]; ok && itemName(item) != "" {
			out.Content[i] = item
			continue
		}
		out.Content = append(out.Content, item)
	}
	return out
}

func (x *extender) mark(n *yaml.Node, file string) {
	if file != "" {
		x.origin[n] = file
	}
}

func itemName(n *yaml.Node) string {
	if _, v := mappingPair(deref(n), "name"); v != nil && v.Kind == yaml.ScalarNode {
		return v.Value
	}
	return ""
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 8; i++ {
		n = n.Alias
	}
	return n
}

func hasMergeKey(m *yaml.Node) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].ShortTag() == "!!merge" {
			return true
		}
	}
	return false
}

// mappingPair finds key in a mapping node (nil, nil when absent).
func mappingPair(m *yaml.Node, key string) (k, v *yaml.Node) {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Kind == yaml.ScalarNode && m.Content[i].ShortTag() == "!!str" && m.Content[i].Value == key {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

// withoutKeys is a shallow copy of mapping m without keys.
func withoutKeys(m *yaml.Node, keys ...string) *yaml.Node {
	drop := map[string]bool{}
	for _, k := range keys {
		drop[k] = true
	}
	out := *m
	out.Content = nil
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind == yaml.ScalarNode && drop[k.Value] {
			continue
		}
		out.Content = append(out.Content, m.Content[i], m.Content[i+1])
	}
	return &out
}

// markOrigin records file as the origin of every node under n (aliases are
// not followed: their targets are marked where they are written).
func markOrigin(n *yaml.Node, file string, origin map[*yaml.Node]string, depth int) {
	if n == nil || depth > 256 {
		return
	}
	origin[n] = file
	if n.Kind == yaml.AliasNode {
		return
	}
	for _, c := range n.Content {
		markOrigin(c, file, origin, depth+1)
	}
}

func absFile(file string) string {
	if a, err := filepath.Abs(file); err == nil {
		return a
	}
	return file
}

// canonicalFile names a file the same way however it is reached.
func canonicalFile(file string) string {
	a := absFile(file)
	if r, err := filepath.EvalSymlinks(a); err == nil {
		return r
	}
	return filepath.Clean(a)
}

// rebase makes what a base wrote mean what it meant in the base: its
// relative paths start from the base's folder (or base_dir) and its host
// commands run there.
func rebase(s *Spec, ix *positionIx, dirs map[string]string, bases []Base) {
	if len(dirs) == 0 {
		return
	}
	remote := map[string]bool{}
	for _, b := range bases {
		remote[b.File] = b.Ref != ""
	}
	dirOf := func(ptr string) string {
		if info := ix.byPointer[ptr]; info != nil && info.File != "" {
			return dirs[info.File]
		}
		return ""
	}
	path := func(p *string, ptr string) {
		if d := dirOf(ptr); d != "" && *p != "" && !filepath.IsAbs(*p) {
			// Joined as text: a templated path is rendered later.
			*p = d + string(filepath.Separator) + *p
		}
	}
	path(&s.Filesystem.ContextDir, "/filesystem/context_dir")
	copies := func(ms []Mutation, ptr string) {
		for i := range ms {
			if ms[i].Copy != nil {
				path(&ms[i].Copy.From, fmt.Sprintf("%s/%d/copy/from", ptr, i))
			}
		}
	}
	copies(s.Filesystem.Mutations, "/filesystem/mutations")
	for i := range s.Rollouts {
		copies(s.Rollouts[i].Mutations, fmt.Sprintf("/rollouts/%d/mutations", i))
	}
	for key, list := range map[string][]Tool{"tools": s.Tools, "root_tools": s.RootTools, "sub_tools": s.SubTools} {
		for i := range list {
			list[i].Run.Dir = dirOf(fmt.Sprintf("/%s/%d/run", key, i))
		}
	}
	for i := range s.MCPServers {
		s.MCPServers[i].Command.Dir = dirOf(fmt.Sprintf("/mcp_servers/%d/command", i))
	}
	for i := range s.Rewards {
		if s.Rewards[i].Run != nil {
			s.Rewards[i].Run.Dir = dirOf(fmt.Sprintf("/rewards/%d/run", i))
		}
	}
	// package globs are relative to the packed spec's folder: a local base's
	// are made so; a registry base's do not apply (it is not packed).
	globs := func(list *[]string, ptr string) {
		info := ix.byPointer[ptr]
		if info == nil || info.File == "" {
			return
		}
		if remote[info.File] {
			*list = nil
			return
		}
		rel, err := filepath.Rel(filepath.Dir(absFile(s.File)), dirs[info.File])
		if err != nil || rel == "." {
			return
		}
		for i, g := range *list {
			(*list)[i] = filepath.ToSlash(rel) + "/" + g
		}
	}
	globs(&s.Package.Include, "/package/include")
	globs(&s.Package.Exclude, "/package/exclude")
}

// MergedYAML is the spec as loaded: for a spec that extends others, every
// base merged in (a comment names the file of each value a base set); for
// any other, its own document. Aliases are expanded.
func (s *Spec) MergedYAML() ([]byte, error) {
	if s.merged == nil {
		return nil, errors.New("no document: the spec was not loaded from YAML")
	}
	p := printer{origin: s.origin}
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{p.copy(s.merged, "", 0)}}
	var buf strings.Builder
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode merged spec: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return []byte(buf.String()), nil
}

type printer struct{ origin map[*yaml.Node]string }

// copy copies n (written by file) with aliases expanded and the source's
// own comments and anchors dropped; a value another file wrote gets a
// comment naming that file on its key.
func (p printer) copy(n *yaml.Node, file string, depth int) *yaml.Node {
	if f, ok := p.origin[n]; ok {
		file = f
	}
	n = deref(n)
	if n == nil || depth > 200 {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}
	}
	out := &yaml.Node{Kind: n.Kind, Tag: n.Tag, Value: n.Value, Style: n.Style &^ yaml.TaggedStyle}
	if n.Kind != yaml.MappingNode {
		for _, c := range n.Content {
			out.Content = append(out.Content, p.copy(c, file, depth+1))
		}
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := p.copy(k, file, depth+1)
		if f, ok := p.origin[v]; ok && f != file {
			key.LineComment = "from " + f
		}
		out.Content = append(out.Content, key, p.copy(v, file, depth+1))
	}
	return out
}
