package subllm

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"

	"github.com/rlmrun/rlmrun/internal/tmpl"
)

// Scripted answers sub-LLM requests from the spec's replies: the first reply
// whose regex matches the prompt (the conversation's first user message)
// answers, step by step. The step is chosen by the number of assistant turns
// already in the conversation, so the answer depends on the content of the
// request only, never on the order in which parallel requests arrive.
type Scripted struct {
	replies []scriptedReply
	data    map[string]any // vars, rollout, repeat
}

// Reply is a scripted conversation: its steps answer every prompt that
// Match finds.
type Reply struct {
	// Match is a template over the rollout's data; rendered, a regular
	// expression (RE2).
	Match string
	Steps []Step
	// Where names the reply in the spec, for messages.
	Where string
}

// Step is one scripted assistant turn; its strings are templates over the
// step's data (tmpl.StepFields).
type Step struct {
	Content string
	// HasContent says Content was given (an empty answer is one too).
	HasContent bool
	ToolCalls  []StepCall
	// Usage, when set, is what the step reports instead of an estimate.
	Usage *Usage
}

// StepCall is a scripted tool call.
type StepCall struct {
	Name      string
	Arguments map[string]any
}

type scriptedReply struct {
	re    *regexp.Regexp
	steps []Step
	path  string
}

// NewScripted prepares the replies of one rollout, in the order they are
// tried; data is the rollout's template data.
func NewScripted(replies []Reply, data map[string]any) (*Scripted, error) {
	s := &Scripted{data: data}
	for _, r := range replies {
		pat, err := tmpl.Render(r.Where+".match", r.Match, data)
		if err != nil {
			return nil, fmt.Errorf("%s.match: %w", r.Where, err)
		}
		re, err := regexp.Compile(pat)
		if err != nil {
			return nil, fmt.Errorf("%s.match: %w", r.Where, err)
		}
		s.replies = append(s.replies, scriptedReply{re: re, steps: r.Steps, path: r.Where})
	}
	return s, nil
}

// Complete answers one request.
func (s *Scripted) Complete(ctx context.Context, req Request) (*Response, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prompt := ""
	for _, m := range req.Messages {
		if m.Role == "user" {
			prompt = m.Content
			break
		}
	}
	var reply *scriptedReply
	var groups []string
	for i := range s.replies {
		if m := s.replies[i].re.FindStringSubmatch(prompt); m != nil {
			reply, groups = &s.replies[i], m
			break
		}
	}
	if reply == nil {
		return nil, fmt.Errorf("no scripted sub-LLM reply matches the prompt %s", quoteShort(prompt, 400))
	}
	step, lastAssistant := 0, -1
	for i, m := range req.Messages {
		if m.Role == "assistant" {
			step++
			lastAssistant = i
		}
	}
	if step >= len(reply.steps) {
		return nil, fmt.Errorf("scripted reply %s (match %q) has no step %d: it has %d", reply.path, reply.re.String(), step+1, len(reply.steps))
	}
	var results []string
	if lastAssistant >= 0 {
		for _, m := range req.Messages[lastAssistant+1:] {
			if m.Role == "tool" {
				results = append(results, m.Content)
			}
		}
	}
	data := map[string]any{}
	for k, v := range s.data {
		data[k] = v
	}
	g := map[string]string{}
	for i, v := range groups {
		g[strconv.Itoa(i)] = v
	}
	for i, name := range reply.re.SubexpNames() {
		if name != "" {
			g[name] = groups[i]
		}
	}
	data["prompt"] = prompt
	data["groups"] = g
	data["tool_results"] = results
	data["tool_result"] = ""
	if len(results) > 0 {
		data["tool_result"] = results[len(results)-1]
	}
	st := reply.steps[step]
	where := fmt.Sprintf("%s.steps[%d]", reply.path, step)
	msg := Message{Role: "assistant"}
	if st.HasContent {
		c, err := tmpl.Render(where+".content", st.Content, data)
		if err != nil {
			return nil, fmt.Errorf("%s.content: %w", where, err)
		}
		msg.Content = c
	}
	for k, tc := range st.ToolCalls {
		args, err := renderValue(fmt.Sprintf("%s.tool_calls[%d].arguments", where, k), tc.Arguments, data)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(args)
		if err != nil {
			return nil, err
		}
		if tc.Arguments == nil {
			b = []byte("{}")
		}
		msg.ToolCalls = append(msg.ToolCalls, ToolCall{
			ID:       fmt.Sprintf("call_%d_%d", step, k),
			Type:     "function",
			Function: FunctionCall{Name: tc.Name, Arguments: string(b)},
		})
	}
	u := usage(req.Messages, msg)
	if st.Usage != nil {
		u = *st.Usage
	}
	return &Response{Message: msg, Usage: u}, nil
}

// renderValue renders every string inside v as a template.
func renderValue(where string, v any, data map[string]any) (any, error) {
	switch x := v.(type) {
	case string:
		out, err := tmpl.Render(where, x, data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			r, err := renderValue(where+"."+k, val, data)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			r, err := renderValue(fmt.Sprintf("%s[%d]", where, i), val, data)
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	}
	return v, nil
}

func usage(prompt []Message, answer Message) Usage {
	u := Usage{}
	for _, m := range prompt {
		u.PromptTokens += messageTokens(m)
	}
	u.CompletionTokens = messageTokens(answer)
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

func messageTokens(m Message) int {
	n := EstimateTokens(m.Content)
	for _, tc := range m.ToolCalls {
		n += EstimateTokens(tc.Function.Name) + EstimateTokens(tc.Function.Arguments)
	}
	return n
}

func quoteShort(s string, max int) string {
	r := []rune(s)
	if len(r) > max {
		return strconv.Quote(string(r[:max])) + "..."
	}
	return strconv.Quote(s)
}
