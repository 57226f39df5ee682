// Package replay turns a run played by a real model into a scripted spec:
// the same environment (the original file's keys and comments), no model,
// and for each rollout the model played, the cells it ran as turns, the end
// it chose as a stop, its sub-LLM exchanges as exact scripted replies, and
// what it achieved as expectations. Running the replay reproduces every
// cell's output, the answer, the status and the reward, on any backend: a
// real model's run becomes a CI golden.
package replay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/tmpl"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm"
)

// Options say what to record.
type Options struct {
	Spec *schema.Spec
	// Results are the run's results (any order).
	Results []*runner.Result
	RunID   string
	// Path is where the replay is written: relative paths of the
	// environment are pointed back at it from there (base_dir).
	Path string
	// Now stamps the header (default time.Now).
	Now func() time.Time
}

// Summary says what the replay holds.
type Summary struct {
	// Rollouts are the ids of the replayed rollouts, as the replay names
	// them.
	Rollouts []string
	// Skipped are the model-played rollouts left out, with the reason.
	Skipped []string
	// Conflicts counts sub-LLM prompts a rollout sent more than once and
	// got different answers to: the replay answers them all with the first.
	Conflicts int
	// SubErrors counts sub-LLM calls that failed (the server, a timeout):
	// the replay has no reply for them, so they fail differently.
	SubErrors int
}

// Write writes the replay to o.Path, whole or not at all.
func Write(o Options) (*Summary, error) {
	var sum *Summary
	err := atomicfile.Write(o.Path, func(w io.Writer) error {
		b, s, err := Build(o)
		if err != nil {
			return err
		}
		sum = s
		_, err = w.Write(b)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", o.Path, err)
	}
	return sum, nil
}

// Build returns the replay's YAML.
func Build(o Options) ([]byte, *Summary, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	spec := o.Spec
	src, err := os.ReadFile(spec.File)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", spec.File, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", spec.File, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("%s: not a spec mapping", spec.File)
	}
	// Rollouts are rewritten and repeated: anchors defined in one and
	// used in another must not dangle.
	expandAliases(&doc, map[*yaml.Node]bool{})
	top := doc.Content[0]

	del(top, "model")
	if sub := get(top, "sub_llm"); sub != nil && sub.Kind == yaml.MappingNode && get(sub, "model") != nil {
		set(sub, "model", str("scripted"))
	}
	if err := pointBack(top, spec, o.Path); err != nil {
		return nil, nil, err
	}

	b := &builder{spec: spec, sum: &Summary{}, byID: map[string]*runner.Result{}, used: map[string]bool{}}
	for _, r := range o.Results {
		b.byID[r.ID] = r
	}
	for _, r := range spec.Rollouts {
		b.used[r.ID] = true
	}
	orig := get(top, "rollouts")
	if orig == nil || orig.Kind != yaml.SequenceNode || len(orig.Content) != len(spec.Rollouts) {
		return nil, nil, errors.New("the spec's rollouts do not match its file")
	}
	out := &yaml.Node{Kind: yaml.SequenceNode}
	for i, r := range spec.Rollouts {
		if r.Scripted {
			out.Content = append(out.Content, orig.Content[i])
			continue
		}
		out.Content = append(out.Content, b.rollout(r, orig.Content[i])...)
	}
	if len(b.sum.Rollouts) == 0 {
		return nil, b.sum, errors.New("no rollout played by the model has a result to replay")
	}
	set(top, "rollouts", out)
	if b.maxTurns > spec.REPL.MaxIterations {
		// A model's turn may run several cells, a script's runs one.
		repl := get(top, "repl")
		if repl == nil || repl.Kind != yaml.MappingNode {
			repl = &yaml.Node{Kind: yaml.MappingNode}
			set(top, "repl", repl)
		}
		repl.Style = 0 // block: the comment needs a line of its own
		n := num(b.maxTurns)
		n.LineComment = fmt.Sprintf("raised from %d: a model's turn may run several cells, a replay's turn runs one", spec.REPL.MaxIterations)
		set(repl, "max_iterations", n)
	}
	model := ""
	for _, r := range o.Results {
		if r.Model != "" {
			model = r.Model
			break
		}
	}
	head := fmt.Sprintf("Recorded by `rlmrun run --record` from %s (run %s, model %s) on %s.\n"+
		"The model's cells, ends and sub-LLM exchanges, replayed by scripts: `rlmrun run %s`\n"+
		"reproduces every cell's output, the answer, the status and the reward.",
		filepath.Base(spec.File), o.RunID, model, o.Now().UTC().Format("2006-01-02 15:04 UTC"), filepath.Base(o.Path))
	if len(b.sum.Skipped) > 0 {
		head += "\nLeft out: " + strings.Join(b.sum.Skipped, "; ")
	}
	// The file's leading comment is the first key's, as yaml.v3 reads it.
	holder := &doc
	if doc.HeadComment == "" && len(top.Content) > 0 {
		holder = top.Content[0]
	}
	if orig := holder.HeadComment; orig != "" {
		// An editor's modeline stays the first line.
		first, rest, _ := strings.Cut(orig, "\n")
		if strings.Contains(first, "yaml-language-server:") {
			head = first + "\n" + head
			orig = rest
		}
		if orig != "" {
			head += "\n\n" + orig
		}
	}
	holder.HeadComment = head
	var buf strings.Builder
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, nil, fmt.Errorf("encode the replay: %w", err)
	}
	return []byte(buf.String()), b.sum, nil
}

// pointBack sets base_dir so that the replay, wherever it is written, uses
// the environment's files (context, tools, rewards) and runs its host
// commands where the original did.
func pointBack(top *yaml.Node, spec *schema.Spec, path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(abs), spec.Dir)
	if err != nil || topDir(abs) != topDir(spec.Dir) {
		rel = spec.Dir // nothing in common but the root: an absolute path reads better
	}
	if rel == "." {
		del(top, "base_dir")
		return nil
	}
	n := str(filepath.ToSlash(rel))
	n.LineComment = "the recorded environment's folder"
	if get(top, "base_dir") != nil {
		set(top, "base_dir", n)
		return nil
	}
	// After name (and description), where a reader looks first.
	at := 0
	for i := 0; i+1 < len(top.Content); i += 2 {
		if k := top.Content[i].Value; k == "name" || k == "description" || k == "version" {
			at = i + 2
		}
	}
	top.Content = append(top.Content[:at], append([]*yaml.Node{str("base_dir"), n}, top.Content[at:]...)...)
	return nil
}

// topDir is the first element of an absolute path.
func topDir(p string) string {
	first, _, _ := strings.Cut(strings.TrimPrefix(filepath.ToSlash(p), "/"), "/")
	return first
}

type builder struct {
	spec     *schema.Spec
	sum      *Summary
	byID     map[string]*runner.Result
	used     map[string]bool // rollout ids taken
	maxTurns int
}

// rollout replays each run of a model-played rollout: one rollout per
// repeat (id, id-2, ... when repeated).
func (b *builder) rollout(r schema.Rollout, orig *yaml.Node) []*yaml.Node {
	var out []*yaml.Node
	for k := 1; k <= r.Repeat; k++ {
		id := r.ID
		if r.Repeat > 1 {
			id = fmt.Sprintf("%s#%d", r.ID, k)
		}
		res, ok := b.byID[id]
		switch {
		case !ok:
			b.sum.Skipped = append(b.sum.Skipped, id+" (no result)")
			continue
		case res.Status == runner.StatusError:
			b.sum.Skipped = append(b.sum.Skipped, fmt.Sprintf("%s (ended in an error, which a replay would not reproduce: %s)", id, oneLine(res.Error)))
			continue
		}
		name := r.ID
		if r.Repeat > 1 {
			name = b.freeID(fmt.Sprintf("%s-%d", r.ID, k))
		}
		out = append(out, b.replayed(name, res, orig))
		b.sum.Rollouts = append(b.sum.Rollouts, name)
	}
	return out
}

// freeID is id, or id with a suffix when the spec already has it.
func (b *builder) freeID(id string) string {
	name := id
	for n := 2; b.used[name]; n++ {
		name = fmt.Sprintf("%s.%d", id, n)
	}
	b.used[name] = true
	return name
}

// replayed is one recorded rollout: the original's keys (prompt, vars,
// mutations, ...), then its turns, replies and expectations.
func (b *builder) replayed(id string, res *runner.Result, orig *yaml.Node) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	set(n, "id", str(id))
	var origReplies *yaml.Node
	for i := 0; i+1 < len(orig.Content); i += 2 {
		switch k := orig.Content[i].Value; k {
		case "id", "repeat", "turns", "expect":
		case "sub_llm_replies":
			origReplies = orig.Content[i+1]
		default:
			n.Content = append(n.Content, orig.Content[i], orig.Content[i+1])
		}
	}
	turns := turnsOf(res)
	b.maxTurns = max(b.maxTurns, len(turns.Content))
	set(n, "turns", turns)
	replies := b.replies(res)
	if origReplies != nil && origReplies.Kind == yaml.SequenceNode {
		replies.Content = append(replies.Content, origReplies.Content...)
	}
	if len(replies.Content) > 0 {
		set(n, "sub_llm_replies", replies)
	}
	expect := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
	set(expect, "status", str(res.Status))
	if res.Answer != "" || res.AnswerReady {
		set(expect, "answer", text(tmpl.Escape(res.Answer)))
	}
	if res.Reward != nil {
		v := strconv.FormatFloat(*res.Reward, 'g', -1, 64)
		if !strings.ContainsAny(v, ".eEnN") {
			v += ".0" // a float, written without a tag
		}
		set(expect, "reward", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!float", Value: v})
	}
	if len(res.Answer) > 200 || strings.Contains(res.Answer, "\n") {
		expect.Style = 0
	}
	set(n, "expect", expect)
	return n
}

// turnsOf are the cells the model ran, and the end it chose.
func turnsOf(res *runner.Result) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, t := range res.Turns {
		m := &yaml.Node{Kind: yaml.MappingNode}
		set(m, "code", text(tmpl.Escape(t.Code)))
		if t.Timeout != "" {
			set(m, "timeout", str(t.Timeout))
		}
		seq.Content = append(seq.Content, m)
	}
	stop := ""
	switch res.StopReason {
	case runner.StopNoToolCalls, runner.StopFinalAnswer, runner.StopBudget, runner.StopContextLength:
		stop = res.StopReason
	case runner.StopMaxIterations:
		if res.FinalAnswer {
			stop = res.StopReason // the answer it gave in words
		}
	}
	if stop != "" {
		m := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
		set(m, "stop", str(stop))
		if res.FinalAnswer {
			set(m, "answer", text(tmpl.Escape(res.Answer)))
			m.Style = 0
		}
		seq.Content = append(seq.Content, m)
	}
	return seq
}

// conversation is one sub-LLM exchange: its prompt and the assistant's
// turns.
type conversation struct {
	prompt string
	steps  []subllm.Message
	usage  []*subllm.Usage // per step, when the call recorded it
}

// replies are the rollout's sub-LLM exchanges as exact scripted replies:
// each prompt matched whole, its steps the model's turns.
func (b *builder) replies(res *runner.Result) *yaml.Node {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	seen := map[string]string{}
	for _, c := range res.Calls {
		if c.Kind != runner.CallSubLLM && c.Kind != runner.CallChat {
			continue
		}
		if c.Error != "" {
			b.sum.SubErrors++ // a failed exchange has no answer to replay
			continue
		}
		conv := conversationOf(c)
		if conv == nil {
			continue
		}
		key, _ := json.Marshal(conv.steps)
		if prev, ok := seen[conv.prompt]; ok {
			if prev != string(key) {
				b.sum.Conflicts++
			}
			continue
		}
		seen[conv.prompt] = string(key)
		seq.Content = append(seq.Content, reply(conv))
	}
	return seq
}

// conversationOf reads a call's prompt (its first user message) and the
// assistant's turns; nil when the model never answered.
func conversationOf(c runner.Call) *conversation {
	conv := &conversation{}
	found := false
	for _, m := range c.Messages {
		switch m.Role {
		case "user":
			if !found {
				conv.prompt, found = m.Content, true
			}
		case "assistant":
			conv.steps = append(conv.steps, m)
		}
	}
	if !found || len(conv.steps) == 0 {
		return nil
	}
	// The requests made the last steps (a chat call's earlier assistant
	// messages are the REPL's own).
	if n := len(c.Requests); n <= len(conv.steps) {
		conv.usage = make([]*subllm.Usage, len(conv.steps))
		for i, r := range c.Requests {
			u := r.Usage
			conv.usage[len(conv.steps)-n+i] = &u
		}
	}
	return conv
}

// match is a regular expression for exactly the prompt, where the
// placeholders of the rollout's and the run's directories stand for the
// replay's own.
func match(prompt string) string {
	var b strings.Builder
	b.WriteString(`(?s)\A`)
	for prompt != "" {
		i := strings.Index(prompt, "<")
		var ph string
		if i >= 0 {
			for _, p := range []string{runner.RolloutPlaceholder, runner.RunPlaceholder} {
				if strings.HasPrefix(prompt[i:], p) {
					ph = p
				}
			}
		}
		if i < 0 {
			b.WriteString(regexp.QuoteMeta(prompt))
			break
		}
		b.WriteString(regexp.QuoteMeta(prompt[:i]))
		if ph == "" {
			b.WriteString(regexp.QuoteMeta("<"))
			prompt = prompt[i+1:]
			continue
		}
		b.WriteString(".+?")
		prompt = prompt[i+len(ph):]
	}
	b.WriteString(`\z`)
	return b.String()
}

func reply(conv *conversation) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode}
	set(m, "match", text(match(conv.prompt)))
	steps := &yaml.Node{Kind: yaml.SequenceNode}
	for i, st := range conv.steps {
		s := &yaml.Node{Kind: yaml.MappingNode}
		if st.Content != "" || len(st.ToolCalls) == 0 {
			set(s, "content", text(tmpl.Escape(st.Content)))
		}
		if len(st.ToolCalls) > 0 {
			calls := &yaml.Node{Kind: yaml.SequenceNode}
			for _, tc := range st.ToolCalls {
				c := &yaml.Node{Kind: yaml.MappingNode}
				set(c, "name", str(tc.Function.Name))
				var args map[string]any
				if json.Unmarshal([]byte(tc.Function.Arguments), &args) != nil {
					args = map[string]any{} // what the sub-tool loop made of them too
				}
				set(c, "arguments", value(escapeValue(args)))
				calls.Content = append(calls.Content, c)
			}
			set(s, "tool_calls", calls)
		}
		if i < len(conv.usage) && conv.usage[i] != nil {
			// The model's count, so llm_batch's summary lines and the
			// metrics come out the same.
			u := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle}
			set(u, "prompt_tokens", num(conv.usage[i].PromptTokens))
			set(u, "completion_tokens", num(conv.usage[i].CompletionTokens))
			set(s, "usage", u)
		}
		steps.Content = append(steps.Content, s)
	}
	set(m, "steps", steps)
	return m
}

// escapeValue escapes every string inside v (reply arguments are
// templates too).
func escapeValue(v any) any {
	switch x := v.(type) {
	case string:
		return tmpl.Escape(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = escapeValue(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = escapeValue(e)
		}
		return out
	}
	return v
}

// value is a JSON value as a YAML node.
func value(v any) *yaml.Node {
	var n yaml.Node
	if err := n.Encode(v); err != nil {
		return str(fmt.Sprint(v))
	}
	return &n
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// Node helpers.

func str(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// text is a string, in block style when it has several lines.
func text(s string) *yaml.Node {
	n := str(s)
	if strings.Contains(s, "\n") {
		n.Style = yaml.LiteralStyle
	}
	return n
}

func num(i int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(i)}
}

func get(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func set(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, str(key), v)
}

func del(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return
		}
	}
}

// expandAliases replaces every alias with a copy of what it names, and
// drops the anchors.
func expandAliases(n *yaml.Node, busy map[*yaml.Node]bool) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		target := n.Alias
		if busy[target] {
			return // a cycle: the loader refused it already
		}
		*n = *deepCopy(target)
	}
	n.Anchor = ""
	busy[n] = true
	for _, c := range n.Content {
		expandAliases(c, busy)
	}
	delete(busy, n)
}

func deepCopy(n *yaml.Node) *yaml.Node {
	c := *n
	c.Content = nil
	for _, e := range n.Content {
		c.Content = append(c.Content, deepCopy(e))
	}
	return &c
}
