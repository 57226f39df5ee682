package subllm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// MaxTurnsMessage is what the sub-LLM is told when its tool rounds run out
// (the reference's words).
const MaxTurnsMessage = "You've reached the maximum number of tool calls. Based on the information gathered, provide your final answer inside \\boxed{}."

// SystemPrompt is prepended to every sub-LLM conversation.
func SystemPrompt(toolMaxTurns int, withTools bool) string {
	p := "Answer the request directly and concisely. Put your final answer inside \\boxed{}."
	if withTools {
		p += fmt.Sprintf(" You may call the tools you are given, for up to %d rounds.", toolMaxTurns)
	}
	return p
}

// ToolCaller runs one sub-tool call and returns the tool message's content.
type ToolCaller func(ctx context.Context, name string, args map[string]any) (string, error)

// BatchOptions configure llm_batch.
type BatchOptions struct {
	Model          Model
	Tools          []ToolDef
	CallTool       ToolCaller
	MaxParallelism int
	Stagger        time.Duration
	Jitter         time.Duration
	ToolMaxTurns   int
	// CallTimeout bounds one model call.
	CallTimeout time.Duration
	// OnCall observes every model call (for metrics).
	OnCall func(u Usage)
	// OnStart observes an item taking a slot (for tests of the limit).
	OnStart func(i int)
	// OnEnd observes an item releasing its slot.
	OnEnd func(i int)
}

// ItemResult is one prompt's outcome.
type ItemResult struct {
	Prompt           string
	Content          string
	PromptTokens     int
	CompletionTokens int
	ToolCalls        int
	Turns            int
	MaxTurns         bool
	Err              bool
	Duration         time.Duration
	// Messages is the conversation as it ended (the model's replies
	// included); Requests the facts of each model call in it.
	Messages []Message
	Requests []RequestFacts
}

// RequestFacts describe one model call.
type RequestFacts struct {
	Model        string  `json:"model,omitempty"`
	FinishReason string  `json:"finish_reason,omitempty"`
	Usage        Usage   `json:"usage"`
	LatencyMS    float64 `json:"latency_ms"`
	Retries      int     `json:"retries,omitempty"`
}

// Facts are a response's request facts.
func (r *Response) Facts() RequestFacts {
	return RequestFacts{Model: r.Model, FinishReason: r.FinishReason, Usage: r.Usage, LatencyMS: float64(r.Latency.Microseconds()) / 1000, Retries: r.Retries}
}

// RunBatch answers every prompt; results come back in input order. Item i
// waits i×Stagger plus a random part of Jitter, then takes one of
// MaxParallelism slots. A failed item's result is an error string; the batch
// itself does not fail.
func RunBatch(ctx context.Context, o BatchOptions, prompts []string) []ItemResult {
	results := make([]ItemResult, len(prompts))
	par := o.MaxParallelism
	if par <= 0 {
		par = 1
	}
	slots := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, p := range prompts {
		wg.Add(1)
		go func(i int, prompt string) {
			defer wg.Done()
			wait := time.Duration(i) * o.Stagger
			if o.Jitter > 0 {
				wait += time.Duration(rand.Int64N(int64(o.Jitter) + 1))
			}
			if wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					results[i] = ItemResult{Prompt: prompt, Content: "Error in sub-LLM call: " + ctx.Err().Error(), Err: true}
					return
				}
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				results[i] = ItemResult{Prompt: prompt, Content: "Error in sub-LLM call: " + ctx.Err().Error(), Err: true}
				return
			}
			if o.OnStart != nil {
				o.OnStart(i)
			}
			start := time.Now()
			r := runItem(ctx, o, prompt)
			r.Duration = time.Since(start)
			if o.OnEnd != nil {
				o.OnEnd(i)
			}
			<-slots
			results[i] = r
		}(i, p)
	}
	wg.Wait()
	return results
}

var errCallTimeout = errors.New("sub-LLM API call timed out")

func (o BatchOptions) call(ctx context.Context, req Request) (*Response, error) {
	cctx := ctx
	if o.CallTimeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, o.CallTimeout)
		defer cancel()
	}
	resp, err := o.Model.Complete(cctx, req)
	if err != nil && ctx.Err() == nil && errors.Is(cctx.Err(), context.DeadlineExceeded) {
		return nil, errCallTimeout
	}
	if err == nil && o.OnCall != nil {
		o.OnCall(resp.Usage)
	}
	return resp, err
}

// runItem is one sub-LLM conversation: the tool loop of up to ToolMaxTurns
// rounds, then, if the rounds ran out, one more request without tools.
func runItem(ctx context.Context, o BatchOptions, prompt string) (r ItemResult) {
	r = ItemResult{Prompt: prompt}
	withTools := len(o.Tools) > 0
	msgs := []Message{
		{Role: "system", Content: SystemPrompt(o.ToolMaxTurns, withTools)},
		{Role: "user", Content: prompt},
	}
	defer func() { r.Messages = msgs }()
	fail := func(err error) ItemResult {
		r.Err = true
		if errors.Is(err, errCallTimeout) {
			r.Content = fmt.Sprintf("Error: Sub-LLM API call timed out after %s", seconds(o.CallTimeout))
		} else {
			r.Content = "Error in sub-LLM call: " + err.Error()
		}
		return r
	}
	account := func(resp *Response) {
		r.Turns++
		r.PromptTokens += resp.Usage.PromptTokens
		r.CompletionTokens += resp.Usage.CompletionTokens
		r.Requests = append(r.Requests, resp.Facts())
		msgs = append(msgs, resp.Message)
	}
	if !withTools {
		resp, err := o.call(ctx, Request{Messages: msgs})
		if err != nil {
			return fail(err)
		}
		account(resp)
		r.Content = ExtractBoxed(resp.Message.Content)
		return r
	}
	for round := 0; round < o.ToolMaxTurns; round++ {
		resp, err := o.call(ctx, Request{Messages: msgs, Tools: o.Tools})
		if err != nil {
			return fail(err)
		}
		account(resp)
		if len(resp.Message.ToolCalls) == 0 {
			r.Content = ExtractBoxed(resp.Message.Content)
			return r
		}
		r.ToolCalls += len(resp.Message.ToolCalls)
		for _, tc := range resp.Message.ToolCalls {
			var args map[string]any
			if err := json.Unmarshal([]byte(tc.Function.Arguments), &args); err != nil {
				args = map[string]any{}
			}
			content, err := o.CallTool(ctx, tc.Function.Name, args)
			if err != nil {
				content = "Error: " + err.Error()
			}
			msgs = append(msgs, Message{Role: "tool", ToolCallID: tc.ID, Name: tc.Function.Name, Content: content})
		}
	}
	msgs = append(msgs, Message{Role: "user", Content: MaxTurnsMessage})
	resp, err := o.call(ctx, Request{Messages: msgs})
	if err != nil {
		return fail(err)
	}
	account(resp)
	r.MaxTurns = true
	r.Content = ExtractBoxed(resp.Message.Content)
	return r
}

// ExtractBoxed returns the content of the last \boxed{...} with balanced
// braces, or the whole text when there is none.
func ExtractBoxed(s string) string {
	const open = `\boxed{`
	for end := len(s); end > 0; {
		i := strings.LastIndex(s[:end], open)
		if i < 0 {
			break
		}
		depth, start := 1, i+len(open)
		for j := start; j < len(s); j++ {
			switch s[j] {
			case '{':
				depth++
			case '}':
				depth--
				if depth == 0 {
					return s[start:j]
				}
			}
		}
		end = i
	}
	return s
}

func seconds(d time.Duration) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", d.Seconds()), "0"), ".") + "s"
}

// Lines are llm_batch's summary lines as printed in the REPL, each with a
// masked twin whose durations read "X.XXs", for reproducible transcripts.
type Lines struct {
	Summary       string
	SummaryMasked string
	Items         []string // "T tokens, K tool calls, E.EEs ✓"
	ItemsMasked   []string
}

// SummaryLines formats a batch's summary as the reference did.
func SummaryLines(results []ItemResult, total time.Duration) Lines {
	l := Lines{
		Summary:       fmt.Sprintf("llm_batch: %d call(s) in %.2fs", len(results), total.Seconds()),
		SummaryMasked: fmt.Sprintf("llm_batch: %d call(s) in X.XXs", len(results)),
	}
	for _, r := range results {
		status := "✓"
		switch {
		case r.Err:
			status = "error"
		case r.MaxTurns:
			status = "⚠ max turns"
		}
		head := fmt.Sprintf("%d tokens, %d tool calls, ", r.PromptTokens+r.CompletionTokens, r.ToolCalls)
		l.Items = append(l.Items, fmt.Sprintf("%s%.2fs %s", head, r.Duration.Seconds(), status))
		l.ItemsMasked = append(l.ItemsMasked, head+"X.XXs "+status)
	}
	return l
}

// PrintLines are the lines the REPL prints: the summary, then one per item.
func (l Lines) PrintLines() []string {
	out := []string{l.Summary}
	for i, it := range l.Items {
		out = append(out, fmt.Sprintf("  [%d]: %s", i, it))
	}
	return out
}

// PromptsFromArgs reads llm_batch's prompts from a root tool call: one
// positional list, or prompts=list, of strings. Anything else is the
// caller's mistake (a *wire.BadRequest).
func PromptsFromArgs(args []any, kwargs map[string]any) ([]string, error) {
	var raw any
	switch {
	case len(args) > 0 && kwargs["prompts"] != nil:
		return nil, wire.BadRequestf("%s received prompts twice.", wire.ReservedToolName)
	case len(args) > 1:
		return nil, wire.BadRequestf("%s expects a single prompts argument.", wire.ReservedToolName)
	case len(args) == 1:
		raw = args[0]
	case kwargs["prompts"] != nil:
		raw = kwargs["prompts"]
	default:
		return nil, wire.BadRequestf("%s requires a prompts argument.", wire.ReservedToolName)
	}
	for k := range kwargs {
		if k != "prompts" {
			return nil, wire.BadRequestf("%s does not accept extra keyword arguments: %s", wire.ReservedToolName, k)
		}
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, wire.BadRequestf("%s expects a list of prompts.", wire.ReservedToolName)
	}
	prompts := make([]string, len(list))
	for i, p := range list {
		s, ok := p.(string)
		if !ok {
			return nil, wire.BadRequestf("%s prompt at index %d must be a string.", wire.ReservedToolName, i)
		}
		prompts[i] = s
	}
	return prompts, nil
}
