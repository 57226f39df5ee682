package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm"
	"github.com/rlmrun/rlmrun/tunnel"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// wayOut is a rollout's routes on the interception server: its root tools,
// llm_batch, the sub-LLM behind it, and the metrics they keep. It gets what
// it needs in a wayOutConfig: no pointer back to the rollout or the run.
type wayOut struct {
	cfg    wayOutConfig
	key    string
	secret string

	mu      sync.Mutex
	metrics metrics
	masks   []mask // volatile strings printed during the current turn
	calls   []Call
	batches int

	// servers are the MCP servers the rollout started (scope rollout).
	servers *rolloutServers
}

// wayOutConfig is what a rollout's routes need.
type wayOutConfig struct {
	server  *tunnel.Server
	rollout string // the rollout's id
	index   int    // its position in the run, for the route's key
	vars    map[string]string
	model   subllm.Model
	root    []tool // root tools, llm_batch aside
	sub     []tool
	host    hostTools
	// batch holds llm_batch's settings; the model, tools and tool caller
	// are the way out's.
	batch subllm.BatchOptions
}

// mask replaces a volatile string (a duration) in the recorded transcript.
type mask struct{ real, masked string }

type metrics struct {
	rootCalls         map[string]int
	subCalls          int // sub-LLM conversations (llm_batch items and chat requests)
	subTurns          int // model calls
	subPromptTokens   int
	subComplTokens    int
	subToolCalls      int
	batchSizes        []int
	batchTime         time.Duration
	rootToolTime      time.Duration
	rootToolTimeCount int
	hostToolTime      time.Duration // wall time of host tool processes (root and sub)
	hostToolCPU       time.Duration // their CPU time (user + system)
	hostToolCalls     int
}

func (env *runEnv) newWayOut(index int, inst schema.Instance, data map[string]any) (*wayOut, error) {
	spec := env.spec
	model := env.models.sub
	if model == nil {
		scripted, err := subllm.NewScripted(replies(inst.Rollout.SubLLMReplies, spec.SubLLM.Replies), data)
		if err != nil {
			return nil, err
		}
		model = scripted
	}
	sl := spec.SubLLM
	return openWayOut(wayOutConfig{
		server:  env.server,
		rollout: inst.ID,
		index:   index,
		vars:    inst.Rollout.Vars,
		model:   model,
		root:    env.tools.root,
		sub:     env.tools.sub,
		host:    hostTools{spawner: env.spawner, dir: spec.Dir},
		batch: subllm.BatchOptions{
			MaxParallelism: sl.MaxParallelism,
			Stagger:        time.Duration(sl.StaggerMS) * time.Millisecond,
			Jitter:         time.Duration(sl.StaggerJitterMS) * time.Millisecond,
			ToolMaxTurns:   sl.ToolMaxTurns,
			CallTimeout:    wire.CallTimeout(spec.REPL.CodeExecutionTimeout.Duration),
		},
	}), nil
}

// openWayOut registers a rollout's routes.
func openWayOut(cfg wayOutConfig) *wayOut {
	w := &wayOut{
		cfg:     cfg,
		key:     fmt.Sprintf("r%d-%s", cfg.index, tunnel.NewSecret()[:8]),
		secret:  tunnel.NewSecret(),
		servers: &rolloutServers{rollout: cfg.rollout},
	}
	w.metrics.rootCalls = map[string]int{}
	tools := map[string]tunnel.ToolFunc{wire.ReservedToolName: w.llmBatch}
	for _, t := range cfg.root {
		tools[t.Name] = w.rootTool(t)
	}
	cfg.server.Register(&tunnel.Rollout{Key: w.key, Secret: w.secret, Tools: tools, Chat: w.chat})
	return w
}

func (w *wayOut) close() {
	w.cfg.server.Unregister(w.key)
	w.servers.close()
}

// record adds calls to the rollout's trajectory.
func (w *wayOut) record(calls ...Call) {
	w.mu.Lock()
	w.calls = append(w.calls, calls...)
	w.mu.Unlock()
}

// takeCalls returns the trajectory's calls.
func (w *wayOut) takeCalls() []Call {
	w.mu.Lock()
	defer w.mu.Unlock()
	calls := w.calls
	w.calls = nil
	return calls
}

// subTokens counts the tokens the rollout's sub-LLMs used so far.
func (w *wayOut) subTokens() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.metrics.subPromptTokens + w.metrics.subComplTokens
}

// toolInfos describe the root tools to the agent (llm_batch first).
func (w *wayOut) toolInfos() []protocol.ToolInfo {
	out := []protocol.ToolInfo{{Name: wire.ReservedToolName, Description: "Run prompts on sub-LLMs in parallel.", Params: []string{"prompts"}}}
	for _, t := range w.cfg.root {
		out = append(out, protocol.ToolInfo{Name: t.Name, Description: t.Description, Params: t.ParamNames})
	}
	return out
}

func (w *wayOut) countRoot(name string, d time.Duration) {
	w.mu.Lock()
	w.metrics.rootCalls[name]++
	if name != wire.ReservedToolName {
		w.metrics.rootToolTime += d
		w.metrics.rootToolTimeCount++
	}
	w.mu.Unlock()
}

func (w *wayOut) rootTool(t tool) tunnel.ToolFunc {
	return func(ctx context.Context, args []any, kwargs map[string]any) (any, []string, error) {
		start := time.Now()
		res, err := w.runHostTool(ctx, t, toolCall{
			Tool: t.Name, Role: "root", Rollout: w.cfg.rollout, Args: args, Kwargs: kwargs, Vars: w.cfg.vars,
		})
		d := time.Since(start)
		w.countRoot(t.Name, d)
		c := Call{Kind: CallTool, Tool: t.Name, Args: args, Kwargs: kwargs, Result: res, DurationMS: float64(d.Microseconds()) / 1000}
		if err != nil {
			c.Result, c.Error = nil, err.Error()
		}
		w.record(c)
		return res, nil, err
	}
}

// runHostTool runs a tool — its command, or its MCP server's call — and
// accounts for the time of host processes.
func (w *wayOut) runHostTool(ctx context.Context, t tool, call toolCall) (any, error) {
	if t.mcp != nil {
		return w.callMCP(ctx, t, call)
	}
	start := time.Now()
	res, cpu, err := w.cfg.host.run(ctx, t.Tool, call)
	w.mu.Lock()
	w.metrics.hostToolTime += time.Since(start)
	w.metrics.hostToolCPU += cpu
	w.metrics.hostToolCalls++
	w.mu.Unlock()
	return res, err
}

// callSubTool runs a sub tool for a sub-LLM; its result becomes the tool
// message's text.
func (w *wayOut) callSubTool(ctx context.Context, name string, args map[string]any) (string, error) {
	for _, t := range w.cfg.sub {
		if t.Name == name {
			res, err := w.runHostTool(ctx, t, toolCall{
				Tool: name, Role: "sub", Rollout: w.cfg.rollout, Kwargs: args, Vars: w.cfg.vars,
			})
			if err != nil {
				return "", err
			}
			return resultText(res), nil
		}
	}
	return "", &wire.ToolError{Msg: fmt.Sprintf("Tool '%s' not found", name)}
}

func (w *wayOut) subToolDefs() []subllm.ToolDef {
	var defs []subllm.ToolDef
	for _, t := range w.cfg.sub {
		params := t.Parameters
		if len(params) == 0 {
			params = json.RawMessage(`{"type":"object","properties":{}}`)
		}
		defs = append(defs, subllm.ToolDef{Type: "function", Function: subllm.FunctionDef{Name: t.Name, Description: t.Description, Parameters: params}})
	}
	return defs
}

// llmBatch is the fixed root tool: prompts fan out to sub-LLMs; the results
// come back in order, with the reference's summary lines to print.
func (w *wayOut) llmBatch(ctx context.Context, args []any, kwargs map[string]any) (any, []string, error) {
	start := time.Now()
	defer func() { w.countRoot(wire.ReservedToolName, time.Since(start)) }()
	prompts, err := subllm.PromptsFromArgs(args, kwargs)
	if err != nil {
		return nil, nil, err
	}
	opts := w.cfg.batch
	opts.Model, opts.Tools, opts.CallTool = w.cfg.model, w.subToolDefs(), w.callSubTool
	t0 := time.Now()
	results := subllm.RunBatch(ctx, opts, prompts)
	total := time.Since(t0)
	lines := subllm.SummaryLines(results, total)
	contents := make([]any, len(results))
	w.mu.Lock()
	batch := w.batches
	w.batches++
	for i, r := range results {
		c := Call{Kind: CallSubLLM, Batch: &batch, Item: i, Prompt: r.Prompt, Messages: r.Messages, Requests: r.Requests, ToolCalls: r.ToolCalls, Reply: r.Content}
		if r.Err {
			c.Reply, c.Error = "", r.Content
		}
		w.calls = append(w.calls, c)
	}
	m := &w.metrics
	m.batchSizes = append(m.batchSizes, len(prompts))
	m.batchTime += total
	for i, r := range results {
		contents[i] = r.Content
		m.subCalls++
		m.subTurns += r.Turns
		m.subPromptTokens += r.PromptTokens
		m.subComplTokens += r.CompletionTokens
		m.subToolCalls += r.ToolCalls
		w.masks = append(w.masks, mask{lines.Items[i], lines.ItemsMasked[i]})
	}
	w.masks = append(w.masks, mask{lines.Summary, lines.SummaryMasked})
	w.mu.Unlock()
	return contents, lines.PrintLines(), nil
}

// chat answers /chat/completions: one sub-LLM call made by the REPL's own
// code, answered by the rollout's model.
func (w *wayOut) chat(ctx context.Context, body []byte) (any, error) {
	var req subllm.Request
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, &wire.BadRequest{Msg: "messages must be a list of role/content objects: " + err.Error()}
	}
	// The spec names the sub model: the REPL's code does not choose which
	// model (and whose bill) answers.
	asked := req.Model
	req.Model = ""
	resp, err := w.cfg.model.Complete(ctx, req)
	if err != nil {
		w.record(Call{Kind: CallChat, Messages: req.Messages, Error: err.Error()})
		return nil, err
	}
	facts := resp.Facts()
	w.record(Call{Kind: CallChat, Messages: append(append([]subllm.Message{}, req.Messages...), resp.Message), Requests: []subllm.RequestFacts{facts}, ToolCalls: len(resp.Message.ToolCalls), Reply: resp.Message.Content})
	w.mu.Lock()
	w.metrics.subCalls++
	w.metrics.subTurns++
	w.metrics.subPromptTokens += resp.Usage.PromptTokens
	w.metrics.subComplTokens += resp.Usage.CompletionTokens
	w.metrics.subToolCalls += len(resp.Message.ToolCalls)
	w.mu.Unlock()
	return subllm.AsCompletion(asked, resp), nil
}

// unmask replaces the volatile strings printed during the turn and forgets them.
func (w *wayOut) unmask(s string) string {
	w.mu.Lock()
	masks := w.masks
	w.masks = nil
	w.mu.Unlock()
	for _, m := range masks {
		s = strings.ReplaceAll(s, m.real, m.masked)
	}
	return s
}

// fill adds the reference's metrics to a result.
func (w *wayOut) fill(det, vol map[string]any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.metrics
	total := 0
	maxBatch, sum := 0, 0
	for _, n := range m.batchSizes {
		maxBatch = max(maxBatch, n)
		sum += n
	}
	mean := 0.0
	if len(m.batchSizes) > 0 {
		mean = float64(sum) / float64(len(m.batchSizes))
	}
	det["sub_llm_call_count"] = m.subCalls
	det["sub_llm_total_turns"] = m.subTurns
	det["sub_llm_prompt_tokens"] = m.subPromptTokens
	det["sub_llm_completion_tokens"] = m.subComplTokens
	det["sub_llm_total_tool_calls"] = m.subToolCalls
	det["sub_llm_batch_count"] = len(m.batchSizes)
	det["sub_llm_max_batch_size"] = maxBatch
	det["sub_llm_mean_batch_size"] = mean
	det[wire.ReservedToolName+"_root_calls"] = m.rootCalls[wire.ReservedToolName]
	for _, t := range w.cfg.root {
		det[t.Name+"_root_calls"] = m.rootCalls[t.Name]
	}
	for _, n := range m.rootCalls {
		total += n
	}
	det["root_tool_call_count"] = total
	if n := len(m.batchSizes); n > 0 {
		vol["llm_batch_mean_time_seconds"] = m.batchTime.Seconds() / float64(n)
	}
	vol["host_tool_seconds"] = m.hostToolTime.Seconds()
	vol["host_tool_cpu_seconds"] = m.hostToolCPU.Seconds()
	vol["host_tool_processes"] = m.hostToolCalls
	if m.rootToolTimeCount > 0 {
		vol["root_tool_non_llm_mean_time_seconds"] = m.rootToolTime.Seconds() / float64(m.rootToolTimeCount)
	}
}
