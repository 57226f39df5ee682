package schema

import (
	"path/filepath"
	"strings"
)

// Inputs lists the files and folders on this machine the spec reads, as
// absolute paths: the spec itself and its local bases, filesystem.context_dir, the sources of
// copy mutations, and the programs of tools and `run` rewards that live
// under the spec's folder. Paths that depend on a rollout (templates) are
// left out.
func (s *Spec) Inputs() []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if p == "" || strings.Contains(p, "{{") {
			return
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(s.Dir, p)
		}
		p = filepath.Clean(p)
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	if f, err := filepath.Abs(s.File); err == nil {
		add(f)
	}
	for _, b := range s.Bases {
		add(absFile(b.File))
	}
	add(s.Filesystem.ContextDir)
	copies := func(ms []Mutation) {
		for _, m := range ms {
			if m.Copy != nil {
				add(m.Copy.From)
			}
		}
	}
	copies(s.Filesystem.Mutations)
	for _, r := range s.Rollouts {
		copies(r.Mutations)
	}
	program := func(c Command) {
		if len(c.Argv) > 0 && strings.Contains(c.Argv[0], "/") {
			p := c.Argv[0]
			if !filepath.IsAbs(p) {
				p = filepath.Join(s.CommandDir(c), p)
			}
			add(p)
		}
	}
	for _, list := range [][]Tool{s.Tools, s.RootTools, s.SubTools} {
		for _, t := range list {
			program(t.Run)
		}
	}
	for _, m := range s.MCPServers {
		program(m.Command)
	}
	for _, r := range s.Rewards {
		if r.Run != nil {
			program(*r.Run)
		}
	}
	return out
}
