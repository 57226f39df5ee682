package runner

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/rlmrun/rlmrun/backends/sandbox"
	rlmfs "github.com/rlmrun/rlmrun/fs"
	"github.com/rlmrun/rlmrun/internal/tmpl"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm"
)

// The spec's types stop at the runner: these translate them, in one place,
// into the inputs of the layers below (fs, subllm). Backends get theirs
// where they are built (cmd), from the same spec.

// mutations renders a rollout's mutations (the spec's, then its own) into
// staging operations.
func mutations(ms []schema.Mutation, data map[string]any) ([]rlmfs.Mutation, error) {
	out := make([]rlmfs.Mutation, 0, len(ms))
	for _, m := range ms {
		fm, err := mutation(m, data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Path, err)
		}
		out = append(out, fm)
	}
	return out, nil
}

func mutation(m schema.Mutation, data map[string]any) (rlmfs.Mutation, error) {
	var firstErr error
	r := func(s string) string {
		out, err := tmpl.Render(m.Path, s, data)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return out
	}
	mode := func(s string) os.FileMode {
		if s == "" {
			return 0
		}
		v, err := rlmfs.ParseMode(s)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return v
	}
	var out rlmfs.Mutation
	switch {
	case m.Write != nil:
		out = rlmfs.Mutation{Op: rlmfs.Write, Path: r(m.Write.Path), Content: r(m.Write.Content), Mode: mode(m.Write.Mode)}
	case m.Mkdir != nil:
		out = rlmfs.Mutation{Op: rlmfs.Mkdir, Path: r(m.Mkdir.Path), Mode: mode(m.Mkdir.Mode)}
	case m.Copy != nil:
		out = rlmfs.Mutation{Op: rlmfs.Copy, From: r(m.Copy.From), Path: r(m.Copy.To)}
	case m.Remove != nil:
		out = rlmfs.Mutation{Op: rlmfs.Remove, Path: r(m.Remove.Path)}
	case m.Chmod != nil:
		out = rlmfs.Mutation{Op: rlmfs.Chmod, Path: r(m.Chmod.Path), Mode: mode(m.Chmod.Mode)}
	default:
		return out, fmt.Errorf("empty mutation")
	}
	return out, firstErr
}

// replies are a rollout's scripted sub-LLM replies, in the order they are
// tried: its own, then the spec's.
func replies(own, shared []schema.Reply) []subllm.Reply {
	var out []subllm.Reply
	for _, r := range append(append([]schema.Reply{}, own...), shared...) {
		sr := subllm.Reply{Match: r.Match, Where: r.Path}
		for _, st := range r.AllSteps() {
			step := subllm.Step{Content: st.Content, HasContent: st.HasContent}
			if u := st.Usage; u != nil {
				step.Usage = &subllm.Usage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
			}
			for _, tc := range st.ToolCalls {
				step.ToolCalls = append(step.ToolCalls, subllm.StepCall{Name: tc.Name, Arguments: tc.Arguments})
			}
			sr.Steps = append(sr.Steps, step)
		}
		out = append(out, sr)
	}
	return out
}

// rolloutData is an instance's template data.
func rolloutData(in schema.Instance) map[string]any {
	return tmpl.RolloutData(in.ID, in.RepeatIndex, in.Rollout.Vars)
}

// SandboxSettings translates the spec's backend.sandbox into what the
// sandbox executor gives every provider.
func SandboxSettings(s schema.Sandbox) sandbox.Settings {
	labels := make(map[string]string, len(s.Labels))
	for k, v := range s.Labels {
		labels[k] = v
	}
	return sandbox.Settings{
		CPUCores:      s.CPUCores,
		MemoryBytes:   int64(s.MemoryGB * (1 << 30)),
		DiskBytes:     int64(s.DiskSizeGB * (1 << 30)),
		PIDs:          s.PIDs,
		HostNetwork:   s.Network == "host",
		Lifetime:      s.Lifetime.Duration,
		Labels:        labels,
		CreateRetries: s.CreateRetries,
	}
}

// SandboxConfig is the spec's backend.sandbox as JSON: each provider's
// Factory reads the keys it owns from it.
func SandboxConfig(s schema.Sandbox) []byte {
	b, _ := json.Marshal(s) // a struct of plain values: it always encodes
	return b
}
