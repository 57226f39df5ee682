package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rlmrun/rlmrun/mcp"
	"github.com/rlmrun/rlmrun/runner/hostcmd"
	"github.com/rlmrun/rlmrun/runner/mcpserver"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// tool is a tool of a run: one of the spec's host commands, or a tool of
// an MCP server. Either way the REPL and the sub-LLMs see a name, a
// description and parameters, and call it the same way.
type tool struct {
	schema.Tool
	// mcp is set for an MCP server's tool.
	mcp *mcpTool
}

// mcpTool is where an MCP tool lives.
type mcpTool struct {
	server *serverSlot
	// remote is the tool's name on the server (the REPL's may differ).
	remote string
}

// serverSlot is one of the spec's MCP servers in a run: the server itself
// (scope run) or how to start one per rollout (scope rollout).
type serverSlot struct {
	name    string
	where   string // mcp_servers[i], for messages
	cfg     mcpserver.Config
	scope   string
	timeout time.Duration
	shared  *mcpserver.Server
	log     *logFile
}

// toolSet is a run's tools: the root list (llm_batch aside), the sub list,
// and the MCP servers behind them.
type toolSet struct {
	root, sub []tool
	slots     []*serverSlot
}

// MCP metadata sent with every call, so that a run-scoped server can keep
// state per rollout.
const (
	MetaRollout = "rlmrun/rollout"
	MetaVars    = "rlmrun/vars"
)

// maxServerLog bounds the log of one MCP server.
const maxServerLog = 16 << 20

// clientInfo names rlmrun to MCP servers.
var clientInfo = mcp.Implementation{Name: "rlmrun", Version: "1"}

// buildTools makes a run's tools: the spec's commands, then every MCP
// server's tools, started (scope run) or probed (scope rollout) now. logDir
// receives the servers' logs ("" discards them). A server that cannot
// start, a tools filter naming a tool the server lacks, or two tools of one
// name in a list is an error: nothing runs.
func buildTools(ctx context.Context, spec *schema.Spec, sp *hostcmd.Spawner, logDir string) (*toolSet, error) {
	ts := &toolSet{}
	root, sub := spec.ToolLists()
	type source struct {
		t     tool
		where string
	}
	var roots, subs []source
	for _, t := range root {
		roots = append(roots, source{tool{Tool: t}, "the spec's tools"})
	}
	for _, t := range sub {
		subs = append(subs, source{tool{Tool: t}, "the spec's tools"})
	}
	for i, m := range spec.MCPServers {
		slot, tools, err := startSlot(ctx, spec, m, i, sp, logDir)
		if err != nil {
			ts.close()
			return nil, err
		}
		ts.slots = append(ts.slots, slot)
		for _, t := range tools {
			src := source{t, fmt.Sprintf("MCP server %s (%s)", m.Name, slot.where)}
			if m.Role == "root" || m.Role == "both" {
				roots = append(roots, src)
			}
			if m.Role == "sub" || m.Role == "both" {
				subs = append(subs, src)
			}
		}
	}
	for _, list := range []struct {
		items []source
		into  *[]tool
		what  string
	}{{roots, &ts.root, "root"}, {subs, &ts.sub, "sub"}} {
		seen := map[string]string{}
		for _, it := range list.items {
			if it.t.Name == wire.ReservedToolName {
				ts.close()
				return nil, fmt.Errorf("%s: tool %q: %s is reserved (every REPL has it built in)", it.where, it.t.Name, wire.ReservedToolName)
			}
			if what := schema.HiddenByTool(spec.REPL.Language, it.t.Name); what != "" && list.what == "root" && it.t.mcp != nil {
				ts.close()
				return nil, fmt.Errorf("%s: a root tool %q would hide %s in the REPL: give the server a prefix (%s.prefix) or leave the tool out (%s.tools)", it.where, it.t.Name, what, it.t.mcp.server.where, it.t.mcp.server.where)
			}
			if prev, ok := seen[it.t.Name]; ok {
				ts.close()
				return nil, fmt.Errorf("%s: tool %q is also in %s: in the %s tool list one name must mean one tool (list only one with mcp_servers[].tools)", it.where, it.t.Name, prev, list.what)
			}
			seen[it.t.Name] = it.where
			*list.into = append(*list.into, it.t)
		}
	}
	if err := checkReplyTools(spec, ts.sub); err != nil {
		ts.close()
		return nil, err
	}
	return ts, nil
}

// checkReplyTools finds scripted sub-LLM steps calling a tool the sub-LLMs
// do not have (the loader cannot know an MCP server's tools).
func checkReplyTools(spec *schema.Spec, sub []tool) error {
	if len(spec.MCPServers) == 0 {
		return nil // the loader checked them
	}
	have := map[string]bool{}
	var names []string
	for _, t := range sub {
		have[t.Name] = true
		names = append(names, t.Name)
	}
	sort.Strings(names)
	check := func(where string, rs []schema.Reply) error {
		for i, r := range rs {
			for j, st := range r.AllSteps() {
				for k, tc := range st.ToolCalls {
					if !have[tc.Name] {
						p := fmt.Sprintf("%s[%d].steps[%d].tool_calls[%d].name", where, i, j, k)
						return fmt.Errorf("%s: %s: sub tool %q is not one of the sub-LLMs' tools (%s)", spec.Where(p), p, tc.Name, strings.Join(names, ", "))
					}
				}
			}
		}
		return nil
	}
	if err := check("sub_llm.replies", spec.SubLLM.Replies); err != nil {
		return err
	}
	for i, r := range spec.Rollouts {
		if err := check(fmt.Sprintf("rollouts[%d].sub_llm_replies", i), r.SubLLMReplies); err != nil {
			return err
		}
	}
	return nil
}

// ToolNames are the names of a spec's root and sub tools (llm_batch
// aside), its MCP servers' included: they are started to list them, then
// stopped. An MCP tool's name is followed by its server's, in brackets.
func ToolNames(ctx context.Context, spec *schema.Spec) (root, sub []string, err error) {
	ts, err := buildTools(ctx, spec, hostcmd.NewSpawner(true), "")
	if err != nil {
		return nil, nil, err
	}
	defer ts.close()
	name := func(t tool) string {
		if t.mcp != nil {
			return fmt.Sprintf("%s [MCP %s]", t.Name, t.mcp.server.name)
		}
		return t.Name
	}
	for _, t := range ts.root {
		root = append(root, name(t))
	}
	for _, t := range ts.sub {
		sub = append(sub, name(t))
	}
	return root, sub, nil
}

// startSlot starts a server (scope run) or probes it for its tools and
// stops it (scope rollout), and returns its tools as the run sees them.
func startSlot(ctx context.Context, spec *schema.Spec, m schema.MCPServer, i int, sp *hostcmd.Spawner, logDir string) (*serverSlot, []tool, error) {
	where := fmt.Sprintf("mcp_servers[%d]", i)
	slot := &serverSlot{name: m.Name, where: where, scope: m.Scope, timeout: m.Timeout.Duration}
	var err error
	if slot.log, err = openLog(logDir, m.Name); err != nil {
		return nil, nil, err
	}
	slot.cfg = mcpserver.Config{
		Name:           m.Name,
		URL:            m.URL,
		Dir:            spec.CommandDir(m.Command),
		Env:            hostcmd.Environ(os.Environ(), m.PassEnv, m.Env, "RLM_MCP_SERVER="+m.Name),
		StartupTimeout: m.StartupTimeout.Duration,
		Log:            slot.log,
		Spawner:        sp,
		Client:         clientInfo,
	}
	if !m.Command.IsZero() {
		slot.cfg.Command = m.Command.Args()
	}
	srv, err := mcpserver.Start(ctx, slot.cfg)
	if err != nil {
		slot.log.close()
		return nil, nil, fmt.Errorf("%s: %w (its log: %s)", where, err, slot.log.where())
	}
	tools, err := exposed(m, srv.Tools())
	if err != nil {
		srv.Close()
		slot.log.close()
		return nil, nil, fmt.Errorf("%s (%s): %w", where, m.Name, err)
	}
	if m.Scope == "rollout" {
		srv.Close() // each rollout starts its own
	} else {
		slot.shared = srv
	}
	out := make([]tool, 0, len(tools))
	for _, t := range tools {
		out = append(out, tool{
			Tool: schema.Tool{Name: m.Prefix + schema.MCPToolName(t.Name), Description: t.Description, Parameters: t.InputSchema, ParamNames: t.ParamNames(), Timeout: m.Timeout},
			mcp:  &mcpTool{server: slot, remote: t.Name},
		})
	}
	return slot, out, nil
}

// exposed are the server's tools the spec asked for (all by default), in
// the server's order.
func exposed(m schema.MCPServer, all []mcp.Tool) ([]mcp.Tool, error) {
	if len(m.Tools) == 0 {
		return all, nil
	}
	byName := map[string]mcp.Tool{}
	var names []string
	for _, t := range all {
		byName[t.Name] = t
		names = append(names, t.Name)
	}
	want := map[string]bool{}
	for _, n := range m.Tools {
		if _, ok := byName[n]; !ok {
			sort.Strings(names)
			return nil, fmt.Errorf("the server has no tool %q (it has: %s)", n, strings.Join(names, ", "))
		}
		want[n] = true
	}
	var out []mcp.Tool
	for _, t := range all {
		if want[t.Name] {
			out = append(out, t)
		}
	}
	return out, nil
}

// close stops the run's servers.
func (ts *toolSet) close() {
	for _, s := range ts.slots {
		if s.shared != nil {
			s.shared.Close()
		}
		s.log.close()
	}
}

// definitions are a list's tools as the spec's types see them (for the
// scaffolding).
func definitions(ts []tool) []schema.Tool {
	out := make([]schema.Tool, len(ts))
	for i, t := range ts {
		out[i] = t.Tool
	}
	return out
}

// rolloutServers are the servers a rollout started (scope rollout), by
// slot; they end with the rollout.
type rolloutServers struct {
	rollout string
	mu      sync.Mutex
	byslot  map[*serverSlot]*mcpserver.Server
	closed  bool
}

// get is the slot's server for the rollout: the run's, or the rollout's
// own, started at its first call.
func (rs *rolloutServers) get(ctx context.Context, slot *serverSlot) (*mcpserver.Server, error) {
	if slot.shared != nil {
		return slot.shared, nil
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return nil, mcpserver.ErrClosed
	}
	if s, ok := rs.byslot[slot]; ok {
		return s, nil
	}
	cfg := slot.cfg
	cfg.Log = slot.log.prefixed("[" + rs.rollout + "] ")
	s, err := mcpserver.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if rs.byslot == nil {
		rs.byslot = map[*serverSlot]*mcpserver.Server{}
	}
	rs.byslot[slot] = s
	return s, nil
}

func (rs *rolloutServers) close() {
	rs.mu.Lock()
	rs.closed = true
	servers := rs.byslot
	rs.byslot = nil
	rs.mu.Unlock()
	for _, s := range servers {
		s.Close()
	}
}

// callMCP calls an MCP tool for a rollout: arguments bound as a command
// tool's are, the rollout's id and vars in _meta, the tool's timeout.
func (w *wayOut) callMCP(ctx context.Context, t tool, call toolCall) (any, error) {
	args, err := bindArgs(t.Tool, call.Args, call.Kwargs)
	if err != nil {
		return nil, err
	}
	srv, err := w.servers.get(ctx, t.mcp.server)
	if err != nil {
		return nil, &wire.ToolError{Msg: fmt.Sprintf("tool %s: MCP server %s: %v", t.Name, t.mcp.server.name, err)}
	}
	cctx, cancel := context.WithTimeout(ctx, t.mcp.server.timeout)
	defer cancel()
	meta := map[string]any{MetaRollout: call.Rollout, MetaVars: call.Vars}
	res, err := srv.Call(cctx, t.mcp.remote, args, meta)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		return nil, &wire.ToolError{Msg: fmt.Sprintf("tool %s timed out after %s", t.Name, t.mcp.server.timeout)}
	case err != nil:
		return nil, &wire.ToolError{Msg: fmt.Sprintf("tool %s (MCP server %s): %v", t.Name, t.mcp.server.name, err)}
	case res.IsError:
		return nil, &wire.ToolError{Msg: mcpText(res)}
	}
	return mcpValue(res), nil
}

// mcpValue is a tool result as rlmrun's tools return them: the text (JSON
// when it parses), else the structured content; other content is named,
// not inlined.
func mcpValue(res *mcp.Result) any {
	var texts, others []string
	for _, c := range res.Content {
		if c.Type == "text" {
			texts = append(texts, c.Text)
		} else {
			others = append(others, describeContent(c))
		}
	}
	if len(texts) == 0 && len(res.StructuredContent) > 0 {
		return parseResult(res.StructuredContent)
	}
	all := append(texts, others...)
	if len(others) == 0 {
		return parseResult([]byte(strings.Join(texts, "\n")))
	}
	return strings.Join(all, "\n")
}

// mcpText is an error result's text.
func mcpText(res *mcp.Result) string {
	var parts []string
	for _, c := range res.Content {
		if c.Type == "text" {
			parts = append(parts, c.Text)
		} else {
			parts = append(parts, describeContent(c))
		}
	}
	if len(parts) == 0 {
		return "the tool failed"
	}
	return strings.Join(parts, "\n")
}

func describeContent(c mcp.Content) string {
	switch c.Type {
	case "image", "audio":
		return fmt.Sprintf("[%s %s, %d bytes of base64]", c.Type, c.MimeType, len(c.Data))
	case "resource_link":
		return fmt.Sprintf("[resource link %s %s]", c.Name, c.URI)
	case "resource":
		var r struct {
			URI  string `json:"uri"`
			Text string `json:"text"`
		}
		_ = json.Unmarshal(c.Resource, &r)
		if r.Text != "" {
			return r.Text
		}
		return fmt.Sprintf("[resource %s]", r.URI)
	}
	return fmt.Sprintf("[%s content]", c.Type)
}

// logFile is an MCP server's log in the run's results directory: its
// stderr and rlmrun's notes, bounded.
type logFile struct {
	mu      sync.Mutex
	f       *os.File
	path    string
	written int64
	cut     bool
}

func openLog(dir, name string) (*logFile, error) {
	if dir == "" {
		return &logFile{}, nil
	}
	path := filepath.Join(dir, "mcp-"+name+".log")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the log of MCP server %s: %w", name, err)
	}
	return &logFile{f: f, path: path}, nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil || l.cut {
		return len(p), nil
	}
	if l.written+int64(len(p)) > maxServerLog {
		l.cut = true
		_, _ = fmt.Fprintf(l.f, "\n[rlmrun] the log reached %d bytes; the rest is not kept\n", maxServerLog)
		return len(p), nil
	}
	n, err := l.f.Write(p)
	l.written += int64(n)
	if err != nil {
		return len(p), nil // a full disk must not stop the server
	}
	return len(p), nil
}

func (l *logFile) where() string {
	if l.path == "" {
		return "not kept"
	}
	return l.path
}

func (l *logFile) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// prefixed is the log seen by one rollout's server: each line marked.
func (l *logFile) prefixed(prefix string) io.Writer {
	return &prefixWriter{w: l, prefix: prefix, start: true}
}

type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	start  bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for _, c := range b {
		if p.start {
			out = append(out, p.prefix...)
			p.start = false
		}
		out = append(out, c)
		if c == '\n' {
			p.start = true
		}
	}
	_, _ = p.w.Write(out)
	return len(b), nil
}
