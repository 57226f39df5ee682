// Package envpack turns an environment (a spec and every file it uses) into
// one deterministic, content-addressed archive, and back: a spec packed
// twice, on any machine, gives the same bytes and so the same SHA-256, and
// an archive is only ever unpacked into a cache folder named by that digest.
package envpack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/go-multierror"

	"github.com/rlmrun/rlmrun/schema"
)

// ManifestName is the archive's first entry: which spec to run.
const ManifestName = "rlmrun-env.json"

// alwaysSkipped are folders include globs never reach into: version
// control and byte-code caches, which differ between machines.
var alwaysSkipped = map[string]bool{".git": true, ".hg": true, ".svn": true, "__pycache__": true}

// File is one file of an environment: its path in the archive (slash
// separated, relative to the spec's folder) and on this machine.
type File struct {
	Name string
	Path string
	Mode fs.FileMode
	Size int64
}

// OutsideError is a file the spec needs that lies outside the spec's
// folder, which an archive cannot hold.
type OutsideError struct {
	Field string // where the spec names it
	Path  string
	Root  string
}

func (e *OutsideError) Error() string {
	return fmt.Sprintf("%s: %s is outside the spec's folder %s: an archive holds only that folder (move it in, or pack a spec in a folder that holds both)", e.Field, e.Path, e.Root)
}

// Files lists every file the spec's archive holds, sorted by name: the spec
// and its local bases, filesystem.context_dir, copy sources, the programs
// of tools, MCP servers and rewards that live under the spec's folder, and
// package.include, less package.exclude. skip names files never to pack
// (the archive being written, when it lies inside the folder).
func Files(spec *schema.Spec, skip ...string) ([]File, error) {
	specFile, err := filepath.Abs(spec.File)
	if err != nil {
		return nil, err
	}
	root := filepath.Dir(specFile)
	c := collector{root: root, files: map[string]File{}, skip: map[string]bool{}, results: absPath(spec.Retention.Dir, spec.Dir)}
	for _, s := range skip {
		if a, err := filepath.Abs(s); err == nil {
			c.skip[a] = true
		}
	}
	c.excludes = spec.Package.Exclude
	for _, g := range append(append([]string{}, spec.Package.Include...), spec.Package.Exclude...) {
		if _, err := path.Match(strings.ReplaceAll(g, "**", "*"), ""); err != nil || strings.HasPrefix(g, "/") || strings.Contains("/"+g+"/", "/../") {
			c.err = multierror.Append(c.err, fmt.Errorf("package: bad glob %q: a pattern relative to the spec's folder, like tools/*.py or data/**", g))
		}
	}
	for _, b := range spec.Bases {
		if b.Ref != "" {
			// A registry base stays a reference: what it brings (its
			// context, its tools) comes with it, from its own artifact.
			c.remote = append(c.remote, b.Dir)
		}
	}
	c.add("the spec", specFile, true)
	for i, b := range spec.Bases {
		if b.Ref != "" {
			continue
		}
		c.add(fmt.Sprintf("extends (base %d)", i+1), absPath(b.File, ""), true)
	}
	if d := spec.Filesystem.ContextDir; d != "" {
		c.add("filesystem.context_dir", absPath(d, spec.Dir), true)
	}
	copies := func(ms []schema.Mutation) {
		for _, m := range ms {
			if m.Copy != nil && !strings.Contains(m.Copy.From, "{{") {
				c.add(m.Path+".copy.from", absPath(m.Copy.From, spec.Dir), true)
			}
		}
	}
	copies(spec.Filesystem.Mutations)
	for _, r := range spec.Rollouts {
		copies(r.Mutations)
	}
	for _, hc := range spec.HostCommands() {
		cmd := hc.Command
		if len(cmd.Argv) == 0 || !strings.Contains(cmd.Argv[0], "/") || filepath.IsAbs(cmd.Argv[0]) {
			continue // a program on PATH or an absolute one is the host's, not the environment's
		}
		c.add(hc.Where+"."+hc.Field, absPath(cmd.Argv[0], spec.CommandDir(cmd)), true)
	}
	if len(spec.Package.Include) > 0 {
		c.includeGlobs(spec.Package.Include)
	}
	if c.err != nil {
		c.err.ErrorFormat = listErrors
		return nil, c.err
	}
	out := make([]File, 0, len(c.files))
	for _, f := range c.files {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func listErrors(es []error) string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func absPath(p, dir string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return filepath.Clean(p)
}

type collector struct {
	root     string
	files    map[string]File
	skip     map[string]bool
	remote   []string // folders of registry bases: not packed
	results  string   // the retention folder: results, never inputs
	excludes []string
	err      *multierror.Error
}

func (c *collector) fail(format string, args ...any) {
	c.err = multierror.Append(c.err, fmt.Errorf(format, args...))
}

// rel is p's name in the archive, or "" (and a problem) when p is not
// inside the spec's folder.
func (c *collector) rel(field, p string) string {
	r, err := filepath.Rel(c.root, p)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		c.err = multierror.Append(c.err, &OutsideError{Field: field, Path: p, Root: c.root})
		return ""
	}
	return filepath.ToSlash(r)
}

// add packs p, a file or a whole folder, that the spec needs (so a missing
// one is a problem).
func (c *collector) add(field, p string, needed bool) {
	for _, d := range c.remote {
		if p == d || strings.HasPrefix(p, d+string(filepath.Separator)) {
			return
		}
	}
	name := c.rel(field, p)
	if name == "" {
		return
	}
	if name == ManifestName {
		c.fail("%s: %s has the name of the archive's manifest; rename it", field, p)
		return
	}
	info, err := os.Lstat(p)
	if err != nil {
		if needed {
			c.fail("%s: %s: %v", field, p, errors.Unwrap(err))
		}
		return
	}
	if !info.IsDir() {
		c.file(field, p, name, info)
		return
	}
	err = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			c.fail("%s: %v", field, err)
			return nil
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			c.fail("%s: %v", field, err)
			return nil
		}
		c.file(field, q, c.rel(field, q), info)
		return nil
	})
	if err != nil {
		c.fail("%s: %v", field, err)
	}
}

func (c *collector) file(field, p, name string, info fs.FileInfo) {
	if name == "" || c.skip[p] || c.excluded(name) {
		return
	}
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		c.fail("%s: %s is a symlink; an archive holds regular files only (copy the file in, or exclude it)", field, p)
	case !info.Mode().IsRegular():
		c.fail("%s: %s is not a regular file", field, p)
	default:
		c.files[name] = File{Name: name, Path: p, Mode: info.Mode(), Size: info.Size()}
	}
}

func (c *collector) excluded(name string) bool {
	for _, g := range c.excludes {
		if matchGlob(g, name) || matchGlob(strings.TrimSuffix(g, "/")+"/**", name) {
			return true
		}
	}
	return false
}

// includeGlobs adds the files under the spec's folder that a glob matches.
func (c *collector) includeGlobs(globs []string) {
	matched := make([]bool, len(globs))
	err := filepath.WalkDir(c.root, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			c.fail("package.include: %v", err)
			return nil
		}
		if d.IsDir() {
			if q != c.root && (alwaysSkipped[d.Name()] || q == c.results) {
				return filepath.SkipDir
			}
			return nil
		}
		name := c.rel("package.include", q)
		for i, g := range globs {
			if matchGlob(g, name) {
				matched[i] = true
				if info, err := d.Info(); err != nil {
					c.fail("package.include: %v", err)
				} else {
					c.file(fmt.Sprintf("package.include[%d]", i), q, name, info)
				}
				break
			}
		}
		return nil
	})
	if err != nil {
		c.fail("package.include: %v", err)
	}
	for i, m := range matched {
		if !m {
			c.fail("package.include[%d]: %q matches no file under %s", i, globs[i], c.root)
		}
	}
}

// matchGlob matches a slash-separated name against a glob whose "**"
// segments match any number of folders.
func matchGlob(glob, name string) bool {
	return matchParts(strings.Split(glob, "/"), strings.Split(name, "/"))
}

func matchParts(glob, name []string) bool {
	for len(glob) > 0 {
		if glob[0] == "**" {
			for i := 0; i <= len(name); i++ {
				if matchParts(glob[1:], name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, _ := path.Match(glob[0], name[0]); !ok {
			return false
		}
		glob, name = glob[1:], name[1:]
	}
	return len(name) == 0
}
