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
)

// wayOut is a rollout's routes on the interception server: its root tools,
// llm_batch, the sub-LLM behind it, and the metrics they keep.
type wayOut struct {
	ro     *rollout
	key    string
	secret string
	model  subllm.Model
	root   []schema.Tool
	sub    []schema.Tool

	mu      sync.Mutex
	metrics metrics
	masks   []mask // volatile strings printed during the current turn
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

// callTimeout is the reference's sub-LLM call timeout for a cell timeout
// T: max(min(10 s, T-1 s), 0.8T), at most T-1 s.
func callTimeout(t time.Duration) time.Duration {
	d := max(min(10*time.Second, t-time.Second), t*8/10)
	if t > 2*time.Second {
		d = min(d, t-time.Second)
	}
	return d
}

// workerToolTimeout is the worker's HTTP timeout for a tool call: 0.9T, at
// most T-1 s.
func workerToolTimeout(t time.Duration) time.Duration {
	d := t * 9 / 10
	if t > 2*time.Second {
		d = min(d, t-time.Second)
	}
	return d
}

func (r *Runner) newWayOut(ro *rollout) (*wayOut, error) {
	spec := r.spec
	replies := append(append([]schema.Reply{}, ro.inst.Rollout.SubLLMReplies...), spec.SubLLM.Replies...)
	model, err := subllm.NewScripted(replies, ro.data)
	if err != nil {
		return nil, err
	}
	w := &wayOut{
		ro:     ro,
		key:    fmt.Sprintf("r%d-%s", ro.index, tunnel.NewSecret()[:8]),
		secret: tunnel.NewSecret(),
		model:  model,
		root:   toolList(spec.Tools, spec.RootTools),
		sub:    toolList(spec.Tools, spec.SubTools),
	}
	w.metrics.rootCalls = map[string]int{}
	tools := map[string]tunnel.ToolFunc{schema.ReservedToolName: w.llmBatch}
	for _, t := range w.root {
		tools[t.Name] = w.rootTool(t)
	}
	r.server.Register(&tunnel.Rollout{Key: w.key, Secret: w.secret, Tools: tools, Chat: w.chat})
	return w, nil
}

func (w *wayOut) close() { w.ro.r.server.Unregister(w.key) }

// toolInfos describe the root tools to the agent (llm_batch first).
func (w *wayOut) toolInfos() []protocol.ToolInfo {
	out := []protocol.ToolInfo{{Name: schema.ReservedToolName, Description: "Run prompts on sub-LLMs in parallel.", Params: []string{"prompts"}}}
	for _, t := range w.root {
		out = append(out, protocol.ToolInfo{Name: t.Name, Description: t.Description, Params: t.ParamNames})
	}
	return out
}

func (w *wayOut) countRoot(name string, d time.Duration) {
	w.mu.Lock()
	w.metrics.rootCalls[name]++
	if name != schema.ReservedToolName {
		w.metrics.rootToolTime += d
		w.metrics.rootToolTimeCount++
	}
	w.mu.Unlock()
}

func (w *wayOut) rootTool(t schema.Tool) tunnel.ToolFunc {
	return func(ctx context.Context, args []any, kwargs map[string]any) (any, []string, error) {
		start := time.Now()
		defer func() { w.countRoot(t.Name, time.Since(start)) }()
		res, err := w.runHostTool(ctx, t, toolCall{
			Tool: t.Name, Role: "root", Rollout: w.ro.inst.ID, Args: args, Kwargs: kwargs, Vars: w.ro.inst.Rollout.Vars,
		})
		return res, nil, err
	}
}

// runHostTool runs a tool's command and accounts for its time.
func (w *wayOut) runHostTool(ctx context.Context, t schema.Tool, call toolCall) (any, error) {
	start := time.Now()
	res, cpu, err := runHostTool(ctx, w.ro.r.spawner, t, w.ro.r.spec.Dir, call)
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
	for _, t := range w.sub {
		if t.Name == name {
			res, err := w.runHostTool(ctx, t, toolCall{
				Tool: name, Role: "sub", Rollout: w.ro.inst.ID, Kwargs: args, Vars: w.ro.inst.Rollout.Vars,
			})
			if err != nil {
				return "", err
			}
			return resultText(res), nil
		}
	}
	return "", &tunnel.ToolError{Msg: fmt.Sprintf("Tool '%s' not found", name)}
}

func (w *wayOut) subToolDefs() []subllm.ToolDef {
	var defs []subllm.ToolDef
	for _, t := range w.sub {
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
	defer func() { w.countRoot(schema.ReservedToolName, time.Since(start)) }()
	var raw any
	switch {
	case len(args) > 0 && kwargs["prompts"] != nil:
		return nil, nil, &tunnel.BadRequest{Msg: "llm_batch received prompts twice."}
	case len(args) > 1:
		return nil, nil, &tunnel.BadRequest{Msg: "llm_batch expects a single prompts argument."}
	case len(args) == 1:
		raw = args[0]
	case kwargs["prompts"] != nil:
		raw = kwargs["prompts"]
	default:
		return nil, nil, &tunnel.BadRequest{Msg: "llm_batch requires a prompts argument."}
	}
	for k := range kwargs {
		if k != "prompts" {
			return nil, nil, &tunnel.BadRequest{Msg: "llm_batch does not accept extra keyword arguments: " + k}
		}
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, nil, &tunnel.BadRequest{Msg: "llm_batch expects a list of prompts."}
	}
	prompts := make([]string, len(list))
	for i, p := range list {
		s, ok := p.(string)
		if !ok {
			return nil, nil, &tunnel.BadRequest{Msg: fmt.Sprintf("llm_batch prompt at index %d must be a string.", i)}
		}
		prompts[i] = s
	}
	sl := w.ro.r.spec.SubLLM
	t0 := time.Now()
	results := subllm.RunBatch(ctx, subllm.BatchOptions{
		Model:          w.model,
		Tools:          w.subToolDefs(),
		CallTool:       w.callSubTool,
		MaxParallelism: sl.MaxParallelism,
		Stagger:        time.Duration(sl.StaggerMS) * time.Millisecond,
		Jitter:         time.Duration(sl.StaggerJitterMS) * time.Millisecond,
		ToolMaxTurns:   sl.ToolMaxTurns,
		CallTimeout:    callTimeout(w.ro.r.spec.REPL.CodeExecutionTimeout.Duration),
	}, prompts)
	total := time.Since(t0)
	lines := subllm.SummaryLines(results, total)
	contents := make([]any, len(results))
	w.mu.Lock()
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
		return nil, &tunnel.BadRequest{Msg: "messages must be a list of role/content objects: " + err.Error()}
	}
	resp, err := w.model.Complete(ctx, req)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.metrics.subCalls++
	w.metrics.subTurns++
	w.metrics.subPromptTokens += resp.Usage.PromptTokens
	w.metrics.subComplTokens += resp.Usage.CompletionTokens
	w.metrics.subToolCalls += len(resp.Message.ToolCalls)
	w.mu.Unlock()
	return subllm.AsCompletion(req.Model, resp), nil
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
	det[schema.ReservedToolName+"_root_calls"] = m.rootCalls[schema.ReservedToolName]
	for _, t := range w.root {
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
