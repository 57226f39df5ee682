package subllm

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"

	"github.com/rlmrun/rlmrun/schema"
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

type scriptedReply struct {
	re    *regexp.Regexp
	steps []schema.Step
	path  string
}

// NewScripted prepares the replies of one rollout: its own first, then the
// shared ones. Match patterns are templates over data.
func NewScripted(replies []schema.Reply, data map[string]any) (*Scripted, error) {
	s := &Scripted{data: data}
	for _, r := range replies {
		pat, err := schema.Render(r.Path+".match", r.Match, data)
		if err != nil {
			return nil, fmt.Errorf("%s.match: %w", r.Path, err)
		}
		re, err := regexp.Compile(pat)
		if err != nil {
			return nil, fmt.Errorf("%s.match: %w", r.Path, err)
		}
		s.replies = append(s.replies, scriptedReply{re: re, steps: r.AllSteps(), path: r.Path})
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
		c, err := schema.Render(where+".content", st.Content, data)
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
	return &Response{Message: msg, Usage: usage(req.Messages, msg)}, nil
}

// renderValue renders every string inside v as a template.
func renderValue(where string, v any, data map[string]any) (any, error) {
	switch x := v.(type) {
	case string:
		out, err := schema.Render(where, x, data)
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
