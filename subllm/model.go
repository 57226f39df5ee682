// Package subllm runs the sub-LLMs behind llm_batch: the Model interface
// (OpenAI chat-completions shapes, so an HTTP model slots in beside the
// scripted one), the scripted model that answers from the spec, the
// sub-tool loop, and the batch with its parallelism limit and stagger.
package subllm

import (
	"context"
	"encoding/json"
	"time"
)

// Message is one chat message, in the OpenAI shape.
type Message struct {
	Role       string     `json:"role"`
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
	Name       string     `json:"name,omitempty"`
	// Raw, when set, is the message exactly as a server sent it: it is what
	// is sent back, and what a trajectory records.
	Raw json.RawMessage `json:"-"`
}

// MarshalJSON writes Raw when the message came from a server, so a
// conversation goes back exactly as it was received.
func (m Message) MarshalJSON() ([]byte, error) {
	if len(m.Raw) > 0 {
		return m.Raw, nil
	}
	type plain Message
	return json.Marshal(plain(m))
}

// ToolCall is a function call requested by the model.
type ToolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function FunctionCall `json:"function"`
}

// FunctionCall names the function and carries its JSON arguments.
type FunctionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// ToolDef describes a tool the model may call.
type ToolDef struct {
	Type     string      `json:"type"`
	Function FunctionDef `json:"function"`
}

// FunctionDef is a tool's name, description and JSON Schema parameters.
type FunctionDef struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
}

// Request is a chat completion request.
type Request struct {
	Model    string    `json:"model,omitempty"`
	Messages []Message `json:"messages"`
	Tools    []ToolDef `json:"tools,omitempty"`
	// ParallelToolCalls, when set, says whether the model may call several
	// tools in one reply.
	ParallelToolCalls *bool `json:"parallel_tool_calls,omitempty"`
}

// Usage counts tokens.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// Response is the model's answer.
type Response struct {
	Message Message
	Usage   Usage
	// FinishReason is why the model stopped: stop, length, tool_calls,
	// content_filter ("" for the scripted model).
	FinishReason string
	// Model is the model that answered, as the server names it.
	Model string
	// Retries is how many attempts failed before this one; Latency the
	// time the call took, retries included.
	Retries int
	Latency time.Duration
}

// Model answers chat completion requests. The scripted model implements it;
// an OpenAI-compatible HTTP client would too.
type Model interface {
	Complete(ctx context.Context, req Request) (*Response, error)
}

// Choice is one answer of a chat completion response.
type Choice struct {
	Index        int     `json:"index"`
	Message      Message `json:"message"`
	FinishReason string  `json:"finish_reason"`
}

// Completion is the OpenAI-shaped response body of /chat/completions.
type Completion struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []Choice `json:"choices"`
	Usage   Usage    `json:"usage"`
}

// AsCompletion wraps a response in the OpenAI body; model is the name the
// request asked for, unless the response names the model that answered.
func AsCompletion(model string, r *Response) Completion {
	finish := r.FinishReason
	if finish == "" {
		finish = "stop"
		if len(r.Message.ToolCalls) > 0 {
			finish = "tool_calls"
		}
	}
	if r.Model != "" {
		model = r.Model
	}
	return Completion{
		ID:      "chatcmpl-rlmrun",
		Object:  "chat.completion",
		Model:   model,
		Choices: []Choice{{Index: 0, Message: r.Message, FinishReason: finish}},
		Usage:   r.Usage,
	}
}

// EstimateTokens counts tokens the way the scripted model reports them: one
// per started four bytes of text. Deterministic, and close enough to a BPE
// tokenizer's count for metrics.
func EstimateTokens(s string) int { return (len(s) + 3) / 4 }
