package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sync/semaphore"

	rlmfs "github.com/rlmrun/rlmrun/fs"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm"
	"github.com/rlmrun/rlmrun/subllm/chatapi"
)

// DepthHeader tells a model server how deep in the recursion a request is:
// 0 for the root model, 1 for its sub-LLMs (nano-rlm's header).
const DepthHeader = "X-RLM-Depth"

// ErrNoModel is a spec whose model lacks what a request needs.
var ErrNoModel = errors.New("the model is not fully configured")

// models are the run's model clients: the root model (nil when scripts
// play every rollout) and the sub-LLM (nil when it is scripted), sharing
// one concurrency limit and one count of requests and tokens.
type models struct {
	root *rootModel
	sub  subllm.Model
}

// modelOptions are what the runner's Options say about models.
type modelOptions struct {
	getenv  func(string) string
	stats   *chatapi.Stats
	http    *http.Client
	onRetry func(attempt int, wait time.Duration, err error)
}

// CheckModels reports what keeps the spec's models from being asked:
// a missing base_url or name (ErrNoModel). needRoot says a rollout played
// by the root model will run.
func CheckModels(spec *schema.Spec, needRoot bool) error {
	root, sub := spec.ToolLists()
	_, err := newModels(spec, needRoot, root, sub, modelOptions{getenv: func(string) string { return "" }})
	return err
}

// newModels builds the clients the spec asks for; the root model's only
// when a rollout it plays runs.
func newModels(spec *schema.Spec, needRoot bool, rootTools, subTools []schema.Tool, o modelOptions) (*models, error) {
	if o.getenv == nil {
		o.getenv = os.Getenv
	}
	ms := &models{}
	limit := int64(64)
	if spec.Model != nil && spec.Model.MaxConcurrency > 0 {
		limit = int64(spec.Model.MaxConcurrency)
	}
	sem := semaphore.NewWeighted(limit)
	client := func(e schema.Endpoint, depth int, where string) (*chatapi.Client, error) {
		if e.BaseURL == "" {
			return nil, fmt.Errorf("%w: %s.base_url is not set (give it in the spec, or with --base-url)", ErrNoModel, where)
		}
		if e.Name == "" {
			return nil, fmt.Errorf("%w: %s.name is not set (give it in the spec, or with --model)", ErrNoModel, where)
		}
		key := ""
		if e.APIKeyEnv != "" {
			key = o.getenv(e.APIKeyEnv)
		}
		s := e.Sampling
		return chatapi.New(chatapi.Config{
			BaseURL: e.BaseURL,
			Model:   e.Name,
			APIKey:  key,
			Sampling: chatapi.Sampling{
				Temperature: s.Temperature, TopP: s.TopP, MaxTokens: s.MaxTokens, Seed: s.Seed, Stop: s.Stop, Extra: s.ExtraBody,
			},
			Stream:     e.Stream,
			Timeout:    e.Timeout.Duration,
			MaxRetries: e.MaxRetries,
			Limit:      sem,
			Stats:      o.stats,
			Headers:    map[string]string{DepthHeader: fmt.Sprint(depth)},
			HTTP:       o.http,
			OnRetry:    o.onRetry,
		}), nil
	}
	if m := spec.Model; m != nil && needRoot {
		c, err := client(m.Endpoint, 0, "model")
		if err != nil {
			return nil, err
		}
		sc := newScaffold(spec, rootTools, subTools)
		ms.root = &rootModel{client: c, name: m.Name, format: m.Format, scaffold: sc, systemPrompt: m.SystemPrompt, scaffolding: m.Scaffolding, budget: m.MaxTokensPerRollout}
	}
	switch sm := spec.SubLLM.Model; sm.Kind {
	case "root":
		if spec.Model == nil {
			return nil, fmt.Errorf("%w: sub_llm.model is root, and there is no model", ErrNoModel)
		}
		c, err := client(spec.Model.Endpoint, 1, "model")
		if err != nil {
			return nil, err
		}
		ms.sub = c
	case "endpoint":
		c, err := client(*sm.Endpoint, 1, "sub_llm.model")
		if err != nil {
			return nil, err
		}
		ms.sub = c
	}
	return ms, nil
}

// rootModel is the spec's root model and what every rollout tells it.
type rootModel struct {
	client       subllm.Model
	name         string
	format       string
	scaffold     scaffold
	systemPrompt string
	scaffolding  bool
	budget       int
}

// instructions are the scaffolding with the spec's system_prompt appended,
// or the system_prompt alone with scaffolding: false.
func (m *rootModel) instructions() string {
	text := ""
	if m.scaffolding {
		text = m.scaffold.text()
	}
	if sp := strings.TrimSpace(m.systemPrompt); sp != "" {
		if text != "" {
			text += "\n"
		}
		text += sp + "\n"
	}
	return text
}

func (m *rootModel) player(ro *rollout) (player, error) {
	p := &modelPlayer{m: m, ro: ro}
	switch m.format {
	case FormatTools:
		p.tools = []subllm.ToolDef{replTool(m.scaffold.replTool(), m.scaffold.language, false)}
	case FormatIPython:
		p.tools = []subllm.ToolDef{replTool("ipython", m.scaffold.language, true)}
		f := false
		p.parallel = &f
	case FormatFenced:
	default:
		return nil, fmt.Errorf("model.format %q is not one of tools, ipython, fenced", m.format)
	}
	ro.res.Model = m.name
	return p, nil
}

// replTool is the tool the tools and ipython formats run code with.
func replTool(name, language string, ipython bool) subllm.ToolDef {
	desc := "Execute Bash commands in a persistent REPL environment."
	code := "The Bash commands to run."
	if language == "python" {
		desc = "Execute Python code in a persistent REPL environment."
		code = "The Python code to run."
	}
	params := map[string]any{
		"type":       "object",
		"properties": map[string]any{"code": map[string]any{"type": "string", "description": code}},
		"required":   []string{"code"},
	}
	if ipython {
		desc = strings.Replace(desc, "REPL environment", "session (the state persists between calls)", 1)
		params["properties"].(map[string]any)["timeout"] = map[string]any{
			"type": "integer", "description": fmt.Sprintf("Seconds the code may run (default %d, at most %d).", ipythonDefaultTimeout, ipythonMaxTimeout),
		}
	}
	b, _ := json.Marshal(params)
	return subllm.ToolDef{Type: "function", Function: subllm.FunctionDef{Name: name, Description: desc, Parameters: b}}
}

// The ipython tool's timeout parameter, in seconds (nano-rlm's bounds);
// code_execution_timeout bounds it further.
const (
	ipythonDefaultTimeout = 300
	ipythonMaxTimeout     = 600
)

// Messages of the root loop.
const (
	onlyOneToolCall = "Error: only one tool call per turn allowed"
	fencedFirstTurn = "You have not run any code yet: look at the working directory's files before you answer."
	fencedNoBlock   = "Your reply had no ```repl block, so nothing ran. Write code in ```repl blocks, or set the answer and make it ready."
	fencedFinal     = "You have used all your turns. Reply now with your final answer only, as plain text, without code."
)

// fencedBlock finds the code blocks of the fenced format (rlm's pattern).
var fencedBlock = regexp.MustCompile("(?s)```repl\\s*\\n(.*?)\\n```")

// modelPlayer plays a rollout with the root model, in one of the formats.
type modelPlayer struct {
	m        *rootModel
	ro       *rollout
	tools    []subllm.ToolDef
	parallel *bool
	msgs     []subllm.Message
	// pending are the last reply's tool calls, answered at the next move.
	pending []pendingCall
	iter    int
	// rootTokens counts the root model's tokens (the sub-LLMs' are the
	// way out's).
	rootTokens int
	// dropped counts the fenced blocks of the last reply over maxCells.
	dropped int
}

// pendingCall is a tool call of the model's last reply: a cell ran for it
// (cell >= 0), or reply answers it.
type pendingCall struct {
	id    string
	cell  int
	reply string
}

func (p *modelPlayer) next(ctx context.Context, shown []shownCell) (move, error) {
	if p.msgs == nil {
		p.msgs = p.opening()
	} else {
		p.feedback(shown, "")
	}
	if p.overBudget() {
		return move{stop: StopBudget}, nil
	}
	p.iter++
	if p.m.format == FormatFenced {
		p.appendUser(p.turnHeader())
	}
	resp, err := p.ask(ctx, p.tools)
	if err != nil {
		return move{}, err
	}
	if p.overBudget() {
		return move{stop: StopBudget}, nil
	}
	switch p.m.format {
	case FormatTools:
		return p.toolsMove(resp), nil
	case FormatIPython:
		return p.ipythonMove(resp), nil
	}
	return p.fencedMove(resp), nil
}

// final asks, once, for an answer in words when the turns ran out (the
// fenced format, as rlm does).
func (p *modelPlayer) final(ctx context.Context, shown []shownCell) (string, bool, error) {
	if p.m.format != FormatFenced || p.overBudget() {
		return "", false, nil
	}
	p.feedback(shown, fencedFinal)
	resp, err := p.ask(ctx, nil)
	if err != nil {
		return "", false, err
	}
	answer := strings.TrimSpace(resp.Message.Content)
	return answer, answer != "", nil
}

// opening is the conversation's start: the scaffolding wrapped and put
// before the prompt (tools), or as the system message (ipython, fenced).
func (p *modelPlayer) opening() []subllm.Message {
	prompt := p.ro.inst.Rollout.Prompt
	text := p.m.instructions()
	switch p.m.format {
	case FormatTools:
		if text != "" {
			prompt = "<SCAFFOLDING>\n" + strings.TrimRight(text, "\n") + "\n</SCAFFOLDING>\n\n" + prompt
		}
		return []subllm.Message{{Role: "user", Content: prompt}}
	case FormatFenced:
		prompt = p.contextLine() + "\n\nThe task: " + prompt
	}
	var msgs []subllm.Message
	if text != "" {
		msgs = append(msgs, subllm.Message{Role: "system", Content: strings.TrimRight(text, "\n")})
	}
	return append(msgs, subllm.Message{Role: "user", Content: prompt})
}

// contextLine describes the working directory's files (the fenced
// format's context message says what the context is and how big).
func (p *modelPlayer) contextLine() string {
	st, err := rlmfs.Measure(p.ro.staging.Dir())
	if err != nil || st.FileCount == 0 {
		return "The working directory of the REPL is empty."
	}
	return fmt.Sprintf("The context is in the working directory of the REPL: %d file(s), %d bytes in all.", st.FileCount, st.TotalSize)
}

func (p *modelPlayer) turnHeader() string {
	h := fmt.Sprintf("Turn %d/%d:", p.iter, p.ro.env.spec.REPL.MaxIterations)
	if p.iter == 1 {
		h += " " + fencedFirstTurn
	}
	return h
}

// appendUser adds text to the conversation as the user's: to the last
// message when it is the user's already, so roles alternate (chat
// templates of many open models insist on it).
func (p *modelPlayer) appendUser(text string) {
	if n := len(p.msgs); n > 0 && p.msgs[n-1].Role == "user" {
		p.msgs[n-1].Content += "\n\n" + text
		return
	}
	p.msgs = append(p.msgs, subllm.Message{Role: "user", Content: text})
}

// feedback tells the model what its last move's cells showed: one tool
// message per tool call, or the REPL output as the user's message.
func (p *modelPlayer) feedback(shown []shownCell, extra string) {
	if p.m.format == FormatFenced {
		var parts []string
		switch len(shown) {
		case 0:
			if p.iter > 0 && extra == "" {
				parts = append(parts, fencedNoBlock)
			}
		case 1:
			parts = append(parts, "REPL output:\n"+shown[0].output)
		default:
			for i, s := range shown {
				parts = append(parts, fmt.Sprintf("REPL output (block %d):\n%s", i+1, s.output))
			}
		}
		if p.dropped > 0 {
			parts = append(parts, fmt.Sprintf("(%d more block(s) did not run: at most %d run per reply.)", p.dropped, p.maxCells()))
			p.dropped = 0
		}
		if extra != "" {
			parts = append(parts, extra)
		}
		if len(parts) > 0 {
			p.appendUser(strings.Join(parts, "\n\n"))
		}
		return
	}
	for _, pc := range p.pending {
		content := pc.reply
		if pc.cell >= 0 {
			content = "(the rollout stopped before this call ran)"
			if pc.cell < len(shown) {
				content = shown[pc.cell].output
			}
		}
		p.msgs = append(p.msgs, subllm.Message{Role: "tool", ToolCallID: pc.id, Content: content})
	}
	p.pending = nil
	if extra != "" {
		p.appendUser(extra)
	}
}

// ask sends the conversation and records the request and the reply.
func (p *modelPlayer) ask(ctx context.Context, tools []subllm.ToolDef) (*subllm.Response, error) {
	req := subllm.Request{Messages: p.msgs, Tools: tools}
	if len(tools) > 0 {
		req.ParallelToolCalls = p.parallel
	}
	resp, err := p.m.client.Complete(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("root model: %w", err)
	}
	facts := resp.Facts()
	p.ro.way.record(Call{Kind: CallModel, RequestFacts: &facts})
	p.ro.rootStats.turns++
	p.ro.rootStats.promptTokens += resp.Usage.PromptTokens
	p.ro.rootStats.completionTokens += resp.Usage.CompletionTokens
	p.rootTokens += resp.Usage.PromptTokens + resp.Usage.CompletionTokens
	if resp.Message.Role == "" {
		resp.Message.Role = "assistant"
	}
	p.msgs = append(p.msgs, resp.Message)
	p.ro.res.Messages = p.msgs
	return resp, nil
}

// overBudget says the rollout used more than max_tokens_per_rollout, its
// sub-LLMs' tokens included.
func (p *modelPlayer) overBudget() bool {
	if p.m.budget <= 0 {
		return false
	}
	return p.rootTokens+p.ro.way.subTokens() > p.m.budget
}

// truncated says the model stopped at its token limit with nothing to run
// or say: the context is full.
func truncated(resp *subllm.Response, usable bool) bool {
	return resp.FinishReason == "length" && !usable
}

// codeArgs reads a REPL tool call's arguments: code, and ipython's timeout.
func codeArgs(raw string, ipython bool) (cell, error) {
	var args map[string]any
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		return cell{}, fmt.Errorf("the arguments are not a JSON object: %v", err)
	}
	code, ok := args["code"].(string)
	if !ok {
		return cell{}, errors.New("the arguments need code, a string")
	}
	c := cell{code: code}
	if ipython {
		secs := float64(ipythonDefaultTimeout)
		switch t := args["timeout"].(type) {
		case nil:
		case float64:
			secs = t
		default:
			return cell{}, errors.New("timeout must be a number of seconds")
		}
		if math.IsNaN(secs) || secs < 1 {
			secs = 1
		}
		c.timeout = time.Duration(min(secs, ipythonMaxTimeout) * float64(time.Second))
	}
	return c, nil
}

// toolsMove runs every REPL tool call of the reply, in order; a reply
// without one ends the rollout.
func (p *modelPlayer) toolsMove(resp *subllm.Response) move {
	calls := resp.Message.ToolCalls
	if len(calls) == 0 {
		if truncated(resp, strings.TrimSpace(resp.Message.Content) != "") {
			return move{stop: StopContextLength}
		}
		return move{stop: StopNoToolCalls}
	}
	var mv move
	for _, tc := range calls {
		pc := pendingCall{id: tc.ID, cell: -1}
		if len(mv.cells) >= p.maxCells() {
			pc.reply = fmt.Sprintf("Error: at most %d calls run per reply; this one did not.", p.maxCells())
		} else if tc.Function.Name != p.m.scaffold.replTool() {
			pc.reply = fmt.Sprintf("Error: there is no tool %q; call %s.", tc.Function.Name, p.m.scaffold.replTool())
		} else if c, err := codeArgs(tc.Function.Arguments, false); err != nil {
			pc.reply = "Error: " + err.Error()
		} else {
			pc.cell = len(mv.cells)
			mv.cells = append(mv.cells, c)
		}
		p.pending = append(p.pending, pc)
	}
	return mv
}

// ipythonMove runs the reply's single ipython call; a reply without one
// is the final answer.
func (p *modelPlayer) ipythonMove(resp *subllm.Response) move {
	calls := resp.Message.ToolCalls
	switch {
	case len(calls) == 0:
		answer := strings.TrimSpace(resp.Message.Content)
		if truncated(resp, answer != "") {
			return move{stop: StopContextLength}
		}
		return move{stop: StopFinalAnswer, answer: &answer}
	case len(calls) > 1:
		for _, tc := range calls {
			p.pending = append(p.pending, pendingCall{id: tc.ID, cell: -1, reply: onlyOneToolCall})
		}
		return move{}
	}
	tc := calls[0]
	pc := pendingCall{id: tc.ID, cell: -1}
	var mv move
	if tc.Function.Name != "ipython" {
		pc.reply = fmt.Sprintf("Error: there is no tool %q; call ipython.", tc.Function.Name)
	} else if c, err := codeArgs(tc.Function.Arguments, true); err != nil {
		pc.reply = "Error: " + err.Error()
	} else {
		pc.cell = 0
		mv.cells = []cell{c}
	}
	p.pending = append(p.pending, pc)
	return mv
}

// fencedMove runs every ```repl block of the reply, in order.
func (p *modelPlayer) fencedMove(resp *subllm.Response) move {
	blocks := fencedBlock.FindAllStringSubmatch(resp.Message.Content, -1)
	if len(blocks) == 0 && truncated(resp, false) {
		return move{stop: StopContextLength}
	}
	var mv move
	for _, b := range blocks {
		if len(mv.cells) >= p.maxCells() {
			p.dropped = len(blocks) - len(mv.cells)
			break
		}
		mv.cells = append(mv.cells, cell{code: b[1]})
	}
	return mv
}

// maxCells bounds the cells one reply runs: a model's turn is worth at
// most as many cells as the rollout has turns.
func (p *modelPlayer) maxCells() int { return max(p.ro.env.spec.REPL.MaxIterations, 1) }
