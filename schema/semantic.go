package schema

import (
	"encoding/json"
	"fmt"
	iofs "io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	rlmfs "github.com/rlmrun/rlmrun/fs"
	"github.com/rlmrun/rlmrun/internal/tmpl"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// semanticChecker finds what the JSON Schema cannot: cross-references,
// uniqueness, files on disk, regexes and templates.
type semanticChecker struct {
	spec  *Spec
	ix    *positionIx
	skip  map[string]bool // pointers whose values were already reported
	probs []Problem
}

func (c *semanticChecker) at(path, format string, args ...any) {
	pos := Pos{1, 1}
	if p, ok := c.ix.byDisplay[path]; ok {
		pos = p
	} else {
		// A missing key: point at the closest parent that exists.
		for parent := path; parent != ""; {
			i := strings.LastIndexAny(parent, ".[")
			if i < 0 {
				break
			}
			parent = parent[:i]
			if p, ok := c.ix.byDisplay[parent]; ok {
				pos = p
				break
			}
		}
	}
	c.probs = append(c.probs, Problem{File: c.ix.fileOf(path), Pos: pos, Path: path, Message: fmt.Sprintf(format, args...)})
}

// keyAt reports at a key's position (for keys that must not be there).
func (c *semanticChecker) keyAt(ptr, format string, args ...any) {
	info := c.ix.byPointer[ptr]
	if info == nil {
		return
	}
	c.probs = append(c.probs, Problem{File: info.File, Pos: info.KeyPos, Path: info.Display, Message: fmt.Sprintf(format, args...)})
}

func (c *semanticChecker) present(ptr string) bool {
	_, ok := c.ix.byPointer[ptr]
	return ok && !c.skip[ptr]
}

func (c *semanticChecker) check() []Problem {
	if c.spec.BaseDir != "" {
		if st, err := os.Stat(c.spec.Dir); err != nil || !st.IsDir() {
			c.at("base_dir", "folder %q not found (looked in %q)", c.spec.BaseDir, c.spec.Dir)
			return c.probs
		}
	}
	c.checkModel()
	c.checkBackend()
	c.checkTools()
	c.checkMCPServers()
	c.checkDurations()
	c.checkFilesystem()
	c.checkPackage()
	c.checkRewards()
	c.checkRollouts()
	return c.probs
}

func (c *semanticChecker) checkBackend() {
	b := c.spec.Backend
	if b.InterceptionURL != "" {
		u, err := url.Parse(b.InterceptionURL)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			c.at("backend.interception_url", "must be an http(s) URL with a host, got %q", b.InterceptionURL)
		case b.Type != "sandbox":
			c.at("backend.interception_url", "only the sandbox backend uses interception_url (backend.type is %q)", b.Type)
		case b.Sandbox.Network != "host":
			c.at("backend.interception_url", "the sandbox has no network (backend.sandbox.network: none), so it cannot reach %s; set network: host or drop interception_url to use the tunnel", b.InterceptionURL)
		}
	}
	if p := b.Sandbox.Provider; p != "docker" && p != "kubernetes" {
		for _, key := range []string{"image", "pull"} {
			ptr := "/backend/sandbox/" + key
			if c.present(ptr) {
				c.keyAt(ptr, "%s is a docker and kubernetes setting, but backend.sandbox.provider is %q", key, p)
			}
		}
	}
	if p := b.Sandbox.Provider; p != "kubernetes" && c.present("/backend/sandbox/kubernetes") {
		c.keyAt("/backend/sandbox/kubernetes", "kubernetes holds the kubernetes provider's settings, but backend.sandbox.provider is %q", p)
	}
}

// checkModel checks who plays the rollouts: a rollout without turns needs
// the model, and sub_llm.model: root needs it too.
func (c *semanticChecker) checkModel() {
	s := c.spec
	if s.Model == nil {
		for i, r := range s.Rollouts {
			if !r.Scripted {
				c.at(fmt.Sprintf("rollouts[%d]", i), "rollout %q has no turns, so a model plays it, but the spec has no model section: add turns (a script, even turns: []) or a model", r.ID)
			}
		}
		if s.SubLLM.Model.Kind == "root" {
			c.at("sub_llm.model", "root means the root model, but the spec has no model section")
		}
	}
	for i, r := range s.Rollouts {
		for j, t := range r.Turns {
			p := fmt.Sprintf("rollouts[%d].turns[%d]", i, j)
			ptr := pointerOf(p)
			if c.skip[ptr] {
				continue // already reported
			}
			hasCode := c.present(ptr + "/code")
			switch {
			case hasCode == t.IsStop():
				c.at(p, "a turn needs exactly one of code (a cell) and stop (the end)")
			case t.IsStop() && j != len(r.Turns)-1:
				c.at(p+".stop", "a stop ends the rollout: it must be the last turn")
			case t.Answer != nil && t.Stop != "final_answer" && t.Stop != "max_iterations":
				c.at(p+".answer", "answer goes with stop: final_answer or max_iterations")
			case c.present(ptr+"/timeout") && !hasCode:
				c.at(p+".timeout", "timeout goes with code")
			case t.Timeout.Duration > s.REPL.CodeExecutionTimeout.Duration:
				c.at(p+".timeout", "is longer than repl.code_execution_timeout (%s)", s.REPL.CodeExecutionTimeout.Duration)
			}
		}
	}
}

type toolDef struct {
	tool Tool
	path string // e.g. root_tools[1]
}

func (c *semanticChecker) checkTools() {
	s := c.spec
	lists := []struct {
		key   string
		tools []Tool
	}{{"tools", s.Tools}, {"root_tools", s.RootTools}, {"sub_tools", s.SubTools}}
	defs := map[string][]toolDef{}
	for _, l := range lists {
		for i, t := range l.tools {
			p := fmt.Sprintf("%s[%d]", l.key, i)
			if t.Name == "" {
				continue
			}
			if t.Name == wire.ReservedToolName {
				c.at(p+".name", "%s is reserved: every REPL has it built in", wire.ReservedToolName)
				continue
			}
			defs[l.key] = append(defs[l.key], toolDef{t, p})
			c.checkToolDef(t, p)
			if what := HiddenByTool(s.REPL.Language, t.Name); what != "" && l.key != "sub_tools" {
				c.at(p+".name", "a root tool %q would hide %s in the REPL: name it otherwise", t.Name, what)
			}
		}
	}
	for _, list := range []struct {
		defs  []toolDef
		where string
	}{{append(append([]toolDef{}, defs["tools"]...), defs["root_tools"]...), "the root tool list"},
		{append(append([]toolDef{}, defs["tools"]...), defs["sub_tools"]...), "the sub tool list"}} {
		_, clashes := mergeTools(list.defs, func(d toolDef) Tool { return d.tool })
		for _, cl := range clashes {
			c.at(cl.second.path+".name", "tool %q is defined differently at %s (%s): in %s one name must mean one tool", cl.second.tool.Name, cl.first.path, c.spec.Where(cl.first.path), list.where)
		}
	}
}

// checkMCPServers checks what can be known of MCP servers without
// starting them: one of command and url, unique names, programs that
// exist, tools listed once. Their tools are checked when they start.
func (c *semanticChecker) checkMCPServers() {
	names := map[string]string{}
	for i, m := range c.spec.MCPServers {
		p := fmt.Sprintf("mcp_servers[%d]", i)
		if prev, ok := names[m.Name]; ok && m.Name != "" {
			c.at(p+".name", "server %q is also %s", m.Name, prev)
		}
		names[m.Name] = p
		// A value the schema refused is there all the same.
		hasCmd := !m.Command.IsZero() || c.skip[pointerOf(p+".command")]
		hasURL := m.URL != "" || c.skip[pointerOf(p+".url")]
		switch {
		case hasCmd == hasURL:
			c.at(p, "give exactly one of command (a stdio server) and url (a streamable HTTP server)")
		case hasURL && len(m.Env) > 0:
			c.at(p+".env", "env is for a command's process; a url server runs elsewhere")
		case hasURL && len(m.PassEnv) > 0:
			c.at(p+".pass_env", "pass_env is for a command's process; a url server runs elsewhere")
		}
		c.checkCommand(m.Command, p+".command")
		seen := map[string]bool{}
		for j, t := range m.Tools {
			if seen[t] {
				c.at(fmt.Sprintf("%s.tools[%d]", p, j), "%q is listed twice", t)
			}
			seen[t] = true
		}
	}
}

// MCPToolName is an MCP tool's name as a Bash command, a Python function
// and a sub-LLM's tool: what is not a letter, a digit or '_' becomes '_'
// (get-sum: get_sum), and a leading digit gets a '_' before it.
func MCPToolName(name string) string {
	b := []byte(name)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || b[0] >= '0' && b[0] <= '9' {
		b = append([]byte{'_'}, b...)
	}
	return string(b)
}

// clash is two different tools of one name in a tool list.
type clash[T any] struct{ first, second T }

// mergeTools is the rule of tool lists, as in the reference: in order, a
// tool repeated identically is merged into its first occurrence, and a
// different tool with a name already taken is a clash (the loader refuses
// specs with clashes; the runner merges what the loader accepted).
func mergeTools[T any](items []T, tool func(T) Tool) (merged []T, clashes []clash[T]) {
	seen := map[string]T{}
	for _, it := range items {
		t := tool(it)
		prev, ok := seen[t.Name]
		if !ok {
			seen[t.Name] = it
			merged = append(merged, it)
			continue
		}
		if toolKey(tool(prev)) != toolKey(t) {
			clashes = append(clashes, clash[T]{prev, it})
		}
	}
	return merged, clashes
}

// ToolLists returns the root and the sub tool list: tools then root_tools,
// and tools then sub_tools, each merged by mergeTools. llm_batch, which
// every REPL has, is not in them.
func (s *Spec) ToolLists() (root, sub []Tool) {
	id := func(t Tool) Tool { return t }
	root, _ = mergeTools(append(append([]Tool{}, s.Tools...), s.RootTools...), id)
	sub, _ = mergeTools(append(append([]Tool{}, s.Tools...), s.SubTools...), id)
	return root, sub
}

func toolKey(t Tool) string {
	var params any
	_ = json.Unmarshal(t.Parameters, &params)
	b, _ := json.Marshal([]any{t.Description, params, t.Run, t.Timeout.Duration, t.HostEnv})
	return string(b)
}

func (c *semanticChecker) checkToolDef(t Tool, p string) {
	if len(t.Parameters) > 0 && string(t.Parameters) != "null" {
		var params map[string]any
		if err := json.Unmarshal(t.Parameters, &params); err == nil {
			if typ, ok := params["type"]; ok && typ != "object" {
				c.at(p+".parameters.type", "parameters must describe an object (type: object), got %v", typ)
			}
			if props, ok := params["properties"]; ok {
				if _, isMap := props.(map[string]any); !isMap {
					c.at(p+".parameters.properties", "must be a mapping of parameter name to JSON Schema")
				}
			}
			if props, ok := params["properties"].(map[string]any); ok {
				for name, ps := range props {
					if _, isMap := ps.(map[string]any); !isMap {
						c.at(p+".parameters.properties."+name, "must be a JSON Schema (a mapping), got %v", ps)
					}
				}
				if req, ok := params["required"]; ok {
					list, isList := req.([]any)
					if !isList {
						c.at(p+".parameters.required", "must be a list of parameter names")
					}
					for i, r := range list {
						name, isStr := r.(string)
						if _, known := props[name]; !isStr || !known {
							c.at(fmt.Sprintf("%s.parameters.required[%d]", p, i), "%v is not one of the parameters' properties", r)
						}
					}
				}
			}
		}
	}
	c.checkCommand(t.Run, p+".run")
}

// checkCommand requires relative programs (with a slash) to exist under the spec folder.
func (c *semanticChecker) checkCommand(cmd Command, p string) {
	if len(cmd.Argv) == 0 {
		return
	}
	prog := cmd.Argv[0]
	if prog == "" {
		c.at(p+"[0]", "the program name is empty")
		return
	}
	if filepath.IsAbs(prog) || !strings.Contains(prog, "/") {
		return
	}
	full := filepath.Join(c.spec.CommandDir(cmd), prog)
	st, err := os.Stat(full)
	switch {
	case err != nil:
		c.at(p+"[0]", "program %q not found (looked in %q)", prog, full)
	case st.IsDir():
		c.at(p+"[0]", "program %q is a directory", prog)
	case st.Mode()&0o111 == 0:
		c.at(p+"[0]", "program %q is not executable (chmod +x it, or run it through an interpreter)", prog)
	}
}

func (c *semanticChecker) checkDurations() {
	s := c.spec
	check := func(d Duration, ptr, path string) {
		if d.Duration <= 0 && c.present(ptr) {
			c.at(path, "must be a positive duration")
		}
	}
	check(s.REPL.CodeExecutionTimeout, "/repl/code_execution_timeout", "repl.code_execution_timeout")
	check(s.REPL.StartupTimeout, "/repl/startup_timeout", "repl.startup_timeout")
	check(s.Backend.Sandbox.Lifetime, "/backend/sandbox/lifetime", "backend.sandbox.lifetime")
	for _, l := range []struct {
		key   string
		tools []Tool
	}{{"tools", s.Tools}, {"root_tools", s.RootTools}, {"sub_tools", s.SubTools}} {
		for i, t := range l.tools {
			check(t.Timeout, fmt.Sprintf("/%s/%d/timeout", l.key, i), fmt.Sprintf("%s[%d].timeout", l.key, i))
		}
	}
	for i, m := range s.MCPServers {
		check(m.StartupTimeout, fmt.Sprintf("/mcp_servers/%d/startup_timeout", i), fmt.Sprintf("mcp_servers[%d].startup_timeout", i))
		check(m.Timeout, fmt.Sprintf("/mcp_servers/%d/timeout", i), fmt.Sprintf("mcp_servers[%d].timeout", i))
	}
	for i, r := range s.Rewards {
		check(r.Timeout, fmt.Sprintf("/rewards/%d/timeout", i), fmt.Sprintf("rewards[%d].timeout", i))
	}
}

func (c *semanticChecker) checkFilesystem() {
	f := c.spec.Filesystem
	if f.ContextDir != "" {
		if f.HasContext {
			c.at("filesystem.context", "give context_dir or context, not both")
		}
		full := filepath.Join(c.spec.Dir, f.ContextDir)
		if filepath.IsAbs(f.ContextDir) {
			full = f.ContextDir
		}
		st, err := os.Lstat(full)
		switch {
		case err != nil:
			c.at("filesystem.context_dir", "directory %q not found (looked in %q)", f.ContextDir, full)
		case st.Mode()&os.ModeSymlink != 0:
			c.at("filesystem.context_dir", "%q is a symlink; context_dir must be a real directory", f.ContextDir)
		case !st.IsDir():
			c.at("filesystem.context_dir", "%q is not a directory", f.ContextDir)
		default:
			c.checkContextTree(full, f.ContextDir, f.CopyMaxBytes)
		}
	}
}

// checkContextTree finds what staging would refuse in context_dir: a symlink
// or a special file anywhere in it, or more bytes than copy_max_bytes.
func (c *semanticChecker) checkContextTree(full, name string, maxBytes int64) {
	var total int64
	err := filepath.WalkDir(full, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(full, p)
		switch t := d.Type(); {
		case t&os.ModeSymlink != 0:
			return fmt.Errorf("contains a symlink (%s), which is not allowed", rel)
		case t.IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		case !d.IsDir():
			return fmt.Errorf("contains %s, which is neither a file nor a directory", rel)
		}
		return nil
	})
	switch {
	case err != nil:
		c.at("filesystem.context_dir", "%q %v", name, err)
	case maxBytes > 0 && total > maxBytes:
		c.at("filesystem.context_dir", "%q holds %d bytes, more than filesystem.copy_max_bytes (%d)", name, total, maxBytes)
	}
}

// checkRewards checks what does not depend on a rollout; templates are checked per rollout.
func (c *semanticChecker) checkRewards() {
	seen := map[string]string{}
	for i, r := range c.spec.Rewards {
		p := fmt.Sprintf("rewards[%d]", i)
		if r.Name != "" {
			if prev, ok := seen[r.Name]; ok {
				c.at(p+".name", "duplicate reward name %q (first at %s)", r.Name, c.spec.Where(prev+".name"))
			}
			seen[r.Name] = p
		}
		// Count the keys as written: a kind whose value was rejected still counts.
		n := 0
		for _, kind := range []string{"answer", "files", "run"} {
			if _, ok := c.ix.byPointer[fmt.Sprintf("/rewards/%d/%s", i, kind)]; ok {
				n++
			}
		}
		if n != 1 && !c.skip[fmt.Sprintf("/rewards/%d", i)] {
			c.at(p, "a reward needs exactly one of answer, files, run (found %d)", n)
		}
		if r.Run != nil {
			c.checkCommand(*r.Run, p+".run")
		}
		if r.Files != nil && r.Files.Count != nil && r.Files.Glob == "" {
			c.at(p+".files.count", "count needs a glob to count")
		}
	}
}

// stringField is a template string at a field path.
type stringField struct {
	path string
	text string
}

func mutationStrings(ms []Mutation, prefix string) (paths, texts []stringField) {
	for i, m := range ms {
		p := fmt.Sprintf("%s[%d]", prefix, i)
		switch {
		case m.Write != nil:
			paths = append(paths, stringField{p + ".write.path", m.Write.Path})
			texts = append(texts, stringField{p + ".write.content", m.Write.Content})
		case m.Mkdir != nil:
			paths = append(paths, stringField{p + ".mkdir.path", m.Mkdir.Path})
		case m.Copy != nil:
			paths = append(paths, stringField{p + ".copy.to", m.Copy.To})
			texts = append(texts, stringField{p + ".copy.from", m.Copy.From})
		case m.Remove != nil:
			paths = append(paths, stringField{p + ".remove.path", m.Remove.Path})
		case m.Chmod != nil:
			paths = append(paths, stringField{p + ".chmod.path", m.Chmod.Path})
		}
	}
	return paths, texts
}

func (c *semanticChecker) rewardStrings() (paths, texts, regexes []stringField) {
	for i, r := range c.spec.Rewards {
		p := fmt.Sprintf("rewards[%d]", i)
		if r.Answer != nil {
			texts, regexes = addCheck(texts, regexes, p+".answer", *r.Answer)
		}
		if f := r.Files; f != nil {
			if f.Glob != "" {
				paths = append(paths, stringField{p + ".files.glob", f.Glob})
			}
			for j, e := range f.Exists {
				paths = append(paths, stringField{fmt.Sprintf("%s.files.exists[%d]", p, j), e})
			}
			for j, e := range f.Absent {
				paths = append(paths, stringField{fmt.Sprintf("%s.files.absent[%d]", p, j), e})
			}
			if f.Content != nil {
				paths = append(paths, stringField{p + ".files.content.path", f.Content.Path})
				texts, regexes = addCheck(texts, regexes, p+".files.content", f.Content.AnswerCheck)
			}
		}
		if r.Run != nil {
			for j, a := range r.Run.Argv {
				texts = append(texts, stringField{fmt.Sprintf("%s.run[%d]", p, j), a})
			}
			if r.Run.Shell != "" {
				texts = append(texts, stringField{p + ".run", r.Run.Shell})
			}
		}
	}
	return paths, texts, regexes
}

func addCheck(texts, regexes []stringField, p string, a AnswerCheck) ([]stringField, []stringField) {
	if a.Equals != nil {
		texts = append(texts, stringField{p + ".equals", *a.Equals})
	}
	if a.Contains != nil {
		texts = append(texts, stringField{p + ".contains", *a.Contains})
	}
	if a.Matches != nil {
		regexes = append(regexes, stringField{p + ".matches", *a.Matches})
	}
	return texts, regexes
}

func (c *semanticChecker) checkRollouts() {
	s := c.spec
	topPaths, topTexts := mutationStrings(s.Filesystem.Mutations, "filesystem.mutations")
	rPaths, rTexts, rRegexes := c.rewardStrings()
	topPaths = append(topPaths, rPaths...)
	topTexts = append(topTexts, rTexts...)
	c.checkCopySources(s.Filesystem.Mutations, "filesystem.mutations", nil)
	c.checkModes(s.Filesystem.Mutations, "filesystem.mutations")

	// Strings shared by all rollouts are parsed once; their var references are
	// then checked against every rollout.
	type shared struct {
		f       stringField
		kind    string // path | text | regex
		tmpl    *tmpl.Template
		vars    []string
		broken  bool
		perRoll bool // depends on the rollout (uses a template)
	}
	var sharedFields []*shared
	for _, group := range []struct {
		kind   string
		fields []stringField
	}{{"path", topPaths}, {"text", topTexts}, {"regex", rRegexes}} {
		for _, f := range group.fields {
			sh := &shared{f: f, kind: group.kind}
			t, msg, vars := checkTemplate(f.text, tmplScope{fields: tmpl.RolloutFields()})
			if msg != "" {
				c.at(f.path, "%s", msg)
				sh.broken = true
			}
			sh.tmpl, sh.vars = t, vars
			sh.perRoll = t != nil
			if !sh.broken && !sh.perRoll {
				c.checkRendered(sh.kind, f.path, f.text, "")
			}
			sharedFields = append(sharedFields, sh)
		}
	}
	sharedReplies := c.replyFields(s.SubLLM.Replies)

	ids := map[string]string{}
	for i, r := range s.Rollouts {
		p := fmt.Sprintf("rollouts[%d]", i)
		if r.ID != "" {
			if prev, ok := ids[r.ID]; ok {
				c.at(p+".id", "duplicate rollout id %q (first at %s)", r.ID, c.spec.Where(prev))
			} else {
				ids[r.ID] = p + ".id"
			}
		}
		vars := map[string]bool{}
		for k := range r.Vars {
			vars[k] = true
		}
		data := tmpl.RolloutData(r.ID, 1, r.Vars)
		for _, sh := range sharedFields {
			if sh.broken || !sh.perRoll {
				continue
			}
			if missing := firstMissing(sh.vars, vars); missing != "" {
				c.at(sh.f.path, "template uses .vars.%s, but rollout %q (%s) defines no var %q", missing, r.ID, p, missing)
				continue
			}
			out, err := sh.tmpl.Execute(data)
			if err != nil {
				c.at(sh.f.path, "template fails for rollout %q: %v", r.ID, cleanTemplateErr(err))
				continue
			}
			c.checkRendered(sh.kind, sh.f.path, out, fmt.Sprintf(" (for rollout %q)", r.ID))
		}
		scope := tmplScope{fields: tmpl.RolloutFields(), vars: vars}
		for j, t := range r.Turns {
			c.checkText(fmt.Sprintf("%s.turns[%d].code", p, j), t.Code, scope, data, "text")
			if t.Answer != nil {
				c.checkText(fmt.Sprintf("%s.turns[%d].answer", p, j), *t.Answer, scope, data, "text")
			}
		}
		mPaths, mTexts := mutationStrings(r.Mutations, p+".mutations")
		for _, f := range mPaths {
			c.checkText(f.path, f.text, scope, data, "path")
		}
		for _, f := range mTexts {
			c.checkText(f.path, f.text, scope, data, "text")
		}
		c.checkCopySources(r.Mutations, p+".mutations", data)
		c.checkModes(r.Mutations, p+".mutations")
		if r.Expect != nil && r.Expect.Answer != nil {
			c.checkText(p+".expect.answer", *r.Expect.Answer, scope, data, "text")
		}
		c.checkReplies(c.replyFields(r.SubLLMReplies), vars, data, r.ID, false)
		c.checkReplies(sharedReplies, vars, data, r.ID, i > 0)
	}
}

func firstMissing(used []string, vars map[string]bool) string {
	for _, v := range used {
		if !vars[v] {
			return v
		}
	}
	return ""
}

func cleanTemplateErr(err error) string {
	m := err.Error()
	if i := strings.Index(m, ": executing "); i >= 0 {
		m = m[i+len(": executing "):]
		if j := strings.Index(m, ": "); j >= 0 {
			m = m[j+2:]
		}
	}
	return m
}

// checkText checks a per-rollout template and, when kind asks, its rendered value.
func (c *semanticChecker) checkText(path, text string, sc tmplScope, data map[string]any, kind string) {
	t, msg, _ := checkTemplate(text, sc)
	if msg != "" {
		c.at(path, "%s", msg)
		return
	}
	out := text
	var err error
	if t != nil {
		out, err = t.Execute(data)
	}
	if err != nil {
		c.at(path, "template fails: %v", cleanTemplateErr(err))
		return
	}
	c.checkRendered(kind, path, out, "")
}

func (c *semanticChecker) checkRendered(kind, path, val, suffix string) {
	switch kind {
	case "path":
		if msg := rlmfs.InsideWorkdir(val); msg != "" {
			c.at(path, "%s%s", msg, suffix)
			return
		}
		if strings.HasSuffix(path, ".glob") {
			if _, err := filepath.Match(val, ""); err != nil {
				c.at(path, "bad glob pattern %q%s", val, suffix)
			}
		}
		if (strings.HasSuffix(path, ".write.path") || strings.HasSuffix(path, ".remove.path")) && filepath.Clean(val) == "." {
			c.at(path, "names the working directory itself%s", suffix)
		}
	case "regex":
		if _, err := regexp.Compile(val); err != nil {
			c.at(path, "regular expression does not compile: %s%s", strings.TrimPrefix(err.Error(), "error parsing regexp: "), suffix)
		}
	}
}

func (c *semanticChecker) checkCopySources(ms []Mutation, prefix string, data map[string]any) {
	for i, m := range ms {
		if m.Copy == nil || m.Copy.From == "" {
			continue
		}
		from := m.Copy.From
		if data != nil {
			out, err := tmpl.Render(prefix, from, data)
			if err != nil {
				continue // reported by checkText
			}
			from = out
		} else if strings.Contains(from, "{{") {
			continue // depends on the rollout: checked when staging
		}
		full := from
		if !filepath.IsAbs(full) {
			full = filepath.Join(c.spec.Dir, from)
		}
		st, err := os.Lstat(full)
		switch {
		case err != nil:
			c.at(fmt.Sprintf("%s[%d].copy.from", prefix, i), "%q not found (looked in %q)", from, full)
		case st.Mode()&os.ModeSymlink != 0:
			c.at(fmt.Sprintf("%s[%d].copy.from", prefix, i), "%q is a symlink; symlinks are not copied", from)
		}
	}
}

func (c *semanticChecker) checkModes(ms []Mutation, prefix string) {
	for i, m := range ms {
		var mode, field string
		switch {
		case m.Write != nil:
			mode, field = m.Write.Mode, "write"
		case m.Mkdir != nil:
			mode, field = m.Mkdir.Mode, "mkdir"
		case m.Chmod != nil:
			mode, field = m.Chmod.Mode, "chmod"
		}
		if mode == "" {
			continue
		}
		if _, err := rlmfs.ParseMode(mode); err != nil {
			c.at(fmt.Sprintf("%s[%d].%s.mode", prefix, i, field), "%v", err)
		}
	}
}

// replyField is a reply with its compiled groups, ready for per-rollout checks.
type replyField struct {
	reply Reply
	path  string
}

func (c *semanticChecker) replyFields(rs []Reply) []replyField {
	out := make([]replyField, 0, len(rs))
	for _, r := range rs {
		out = append(out, replyField{reply: r, path: r.Path})
	}
	return out
}

// checkReplies checks replies for one rollout; shared replies report
// rollout-independent problems only once (onlyVars after the first rollout).
func (c *semanticChecker) checkReplies(rs []replyField, vars map[string]bool, data map[string]any, rolloutID string, onlyVars bool) {
	subTools := map[string]bool{}
	for _, t := range append(append([]Tool{}, c.spec.Tools...), c.spec.SubTools...) {
		subTools[t.Name] = true
	}
	// An MCP server's tools are known when it starts (the runner checks
	// the replies then); those its tools list names are known now.
	anyMCP := false
	for _, m := range c.spec.MCPServers {
		if m.Role != "sub" && m.Role != "both" {
			continue
		}
		if len(m.Tools) == 0 {
			anyMCP = true
		}
		for _, t := range m.Tools {
			subTools[m.Prefix+MCPToolName(t)] = true
		}
	}
	report := func(path, format string, args ...any) {
		if onlyVars {
			return
		}
		c.at(path, format, args...)
	}
	for _, rf := range rs {
		r, p := rf.reply, rf.path
		hasSteps, hasReply := len(r.Steps) > 0, c.present(pointerOf(p)+"/reply")
		if hasSteps == hasReply {
			report(p, "a reply needs exactly one of steps, reply")
		}
		scope := tmplScope{fields: tmpl.RolloutFields(), vars: vars}
		if _, msg, _ := checkTemplate(r.Match, scope); msg != "" {
			if strings.Contains(msg, "defines no var") {
				c.at(p+".match", "%s (rollout %q)", msg, rolloutID)
			} else {
				report(p+".match", "%s", msg)
			}
			continue
		}
		pattern, err := tmpl.Render(p, r.Match, data)
		if err != nil {
			c.at(p+".match", "template fails for rollout %q: %v", rolloutID, cleanTemplateErr(err))
			continue
		}
		re, err := regexp.Compile(pattern)
		if err != nil {
			report(p+".match", "regular expression does not compile: %s", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
			continue
		}
		groups := map[string]bool{}
		for i := 0; i <= re.NumSubexp(); i++ {
			groups[strconv.Itoa(i)] = true
		}
		for _, n := range re.SubexpNames() {
			if n != "" {
				groups[n] = true
			}
		}
		stepScope := tmplScope{fields: tmpl.StepFields(), vars: vars, groups: groups}
		var texts []stringField
		if hasReply {
			texts = append(texts, stringField{p + ".reply", r.Reply})
		}
		for j, st := range r.Steps {
			sp := fmt.Sprintf("%s.steps[%d]", p, j)
			if st.Usage != nil && !st.HasContent && len(st.ToolCalls) == 0 {
				report(sp, "usage goes with content or tool_calls: a step needs one of them")
			}
			if st.HasContent {
				texts = append(texts, stringField{sp + ".content", st.Content})
			}
			for k, tc := range st.ToolCalls {
				tp := fmt.Sprintf("%s.tool_calls[%d]", sp, k)
				if tc.Name != "" && !subTools[tc.Name] && !anyMCP {
					report(tp+".name", "sub tool %q is not defined (sub tools: tools and sub_tools)%s", tc.Name, didYouMean(tc.Name, subTools))
				}
				collectArgStrings(tc.Arguments, tp+".arguments", &texts)
			}
		}
		for _, t := range texts {
			_, msg, _ := checkTemplate(t.text, stepScope)
			if msg == "" {
				continue
			}
			if strings.Contains(msg, "defines no var") {
				c.at(t.path, "%s (rollout %q)", msg, rolloutID)
			} else {
				report(t.path, "%s", msg)
			}
		}
	}
}

func collectArgStrings(v any, path string, out *[]stringField) {
	switch x := v.(type) {
	case string:
		*out = append(*out, stringField{path, x})
	case map[string]any:
		for k, val := range x {
			collectArgStrings(val, displayPath(path, k, -1), out)
		}
	case []any:
		for i, val := range x {
			collectArgStrings(val, displayPath(path, "", i), out)
		}
	}
}

// pointerOf converts a display path (rollouts[1].sub_llm_replies[0]) to a JSON pointer.
func pointerOf(display string) string {
	var b strings.Builder
	for _, part := range strings.Split(strings.ReplaceAll(display, "[", ".["), ".") {
		if part == "" {
			continue
		}
		b.WriteString("/")
		b.WriteString(escapePointer(strings.Trim(part, "[]")))
	}
	return b.String()
}

// checkPackage checks package.include and exclude: globs relative to the
// spec's folder that stay inside it.
func (c *semanticChecker) checkPackage() {
	for key, globs := range map[string][]string{"include": c.spec.Package.Include, "exclude": c.spec.Package.Exclude} {
		for i, g := range globs {
			p := fmt.Sprintf("package.%s[%d]", key, i)
			_, err := path.Match(strings.ReplaceAll(g, "**", "*"), "")
			switch {
			case err != nil:
				c.at(p, "bad glob %q: %v", g, err)
			case strings.HasPrefix(g, "/") || strings.Contains("/"+g+"/", "/../"):
				c.at(p, "glob %q must stay inside the spec's folder (relative, no '..'), like tools/*.py or data/**", g)
			}
		}
	}
}
