package schema

import (
	"fmt"
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
	for _, hc := range s.HostCommands() {
		if c := hc.Command; len(c.Argv) > 0 && strings.Contains(c.Argv[0], "/") {
			p := c.Argv[0]
			if !filepath.IsAbs(p) {
				p = filepath.Join(s.CommandDir(c), p)
			}
			add(p)
		}
	}
	return out
}

// HostCommand is a command the spec runs on the host: a tool's, an MCP
// server's (started as a process) or a `run` reward's.
type HostCommand struct {
	// Where names it in the spec: root_tools[0], mcp_servers[1], rewards[2].
	Where string
	// Field is its key there: run or command.
	Field   string
	Name    string
	Command Command
}

// HostCommands lists the spec's host commands in spec order.
func (s *Spec) HostCommands() []HostCommand {
	var out []HostCommand
	for _, l := range []struct {
		key   string
		tools []Tool
	}{{"tools", s.Tools}, {"root_tools", s.RootTools}, {"sub_tools", s.SubTools}} {
		for i, t := range l.tools {
			out = append(out, HostCommand{fmt.Sprintf("%s[%d]", l.key, i), "run", t.Name, t.Run})
		}
	}
	for i, m := range s.MCPServers {
		if !m.Command.IsZero() {
			out = append(out, HostCommand{fmt.Sprintf("mcp_servers[%d]", i), "command", m.Name, m.Command})
		}
	}
	for i, r := range s.Rewards {
		if r.Run != nil {
			out = append(out, HostCommand{fmt.Sprintf("rewards[%d]", i), "run", r.Name, *r.Run})
		}
	}
	return out
}
