// Package schema defines the rlmrun spec format (version 1): its JSON Schema,
// the YAML loader that keeps the line and column of every node, the semantic
// checks a schema cannot express, and the defaults applied after validation.
package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Spec is a validated rlmrun spec with every default applied.
type Spec struct {
	Version     int    `json:"version"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// BaseDir, when set, is where relative paths start and host commands
	// run, instead of the spec's folder (relative to it).
	BaseDir    string      `json:"base_dir,omitempty"`
	REPL       REPL        `json:"repl"`
	Backend    Backend     `json:"backend"`
	Tools      []Tool      `json:"tools,omitempty"`
	RootTools  []Tool      `json:"root_tools,omitempty"`
	SubTools   []Tool      `json:"sub_tools,omitempty"`
	MCPServers []MCPServer `json:"mcp_servers,omitempty"`
	Model      *Model      `json:"model,omitempty"`
	SubLLM     SubLLM      `json:"sub_llm"`
	Filesystem Filesystem  `json:"filesystem"`
	Retention  Retention   `json:"retention"`
	Rewards    []Reward    `json:"rewards,omitempty"`
	Rollouts   []Rollout   `json:"rollouts"`
	// Package says which files beyond those the spec names go into its
	// archive (rlmrun pack).
	Package Package `json:"package"`
	File    string  `json:"-"` // the spec file as given to the loader
	Dir     string  `json:"-"` // absolute folder relative paths start from: the spec file's, or base_dir
	// Bases are the specs this one extends, its own base first.
	Bases     []Base      `json:"-"`
	positions *positionIx `json:"-"`
	// merged is the document as loaded (bases merged in); origin names the
	// base file of the nodes a base wrote.
	merged *yaml.Node
	origin map[*yaml.Node]string
}

// Package lists files to pack beyond those the spec uses, as globs relative
// to the spec's folder (`**` crosses folders).
type Package struct {
	Include []string `json:"include,omitempty"`
	Exclude []string `json:"exclude,omitempty"`
}

// CommandDir is where a host command runs: the folder of the spec file that
// declared it (a base's own for a command a base declared).
func (s *Spec) CommandDir(c Command) string {
	if c.Dir != "" {
		return c.Dir
	}
	return s.Dir
}

// REPL configures the root model's REPL.
type REPL struct {
	Language             string   `json:"language"`
	Python               string   `json:"python"`
	MaxIterations        int      `json:"max_iterations"`
	MaxOutputLength      int      `json:"max_output_length"`
	CodeExecutionTimeout Duration `json:"code_execution_timeout"`
	AbortOnCodeTimeout   bool     `json:"abort_on_code_timeout"`
	StartupTimeout       Duration `json:"startup_timeout"`
}

// Backend says where the REPL runs.
type Backend struct {
	Type            string  `json:"type"`
	InterceptionURL string  `json:"interception_url"`
	Sandbox         Sandbox `json:"sandbox"`
	Local           Local   `json:"local"`
}

// Local holds the settings of the local backend.
type Local struct {
	Confinement string `json:"confinement"`
	Network     string `json:"network"`
}

// Sandbox holds the settings of the sandbox backend.
type Sandbox struct {
	Provider      string            `json:"provider"`
	Image         string            `json:"image"`
	Pull          string            `json:"pull"`
	CPUCores      float64           `json:"cpu_cores"`
	MemoryGB      float64           `json:"memory_gb"`
	DiskSizeGB    float64           `json:"disk_size_gb"`
	PIDs          int               `json:"pids"`
	Lifetime      Duration          `json:"lifetime"`
	Network       string            `json:"network"`
	Env           map[string]string `json:"env"`
	Labels        map[string]string `json:"labels"`
	CreateRetries int               `json:"create_retries"`
	// Kubernetes are the kubernetes provider's own settings.
	Kubernetes *Kubernetes `json:"kubernetes,omitempty"`
}

// Kubernetes are backend.sandbox.kubernetes: where the pods go and how
// they are made.
type Kubernetes struct {
	Namespace       string            `json:"namespace,omitempty"`
	Context         string            `json:"context,omitempty"`
	Kubeconfig      string            `json:"kubeconfig,omitempty"`
	RuntimeClass    string            `json:"runtime_class,omitempty"`
	NodeSelector    map[string]string `json:"node_selector,omitempty"`
	Tolerations     []json.RawMessage `json:"tolerations,omitempty"`
	ServiceAccount  string            `json:"service_account,omitempty"`
	ImagePullPolicy string            `json:"image_pull_policy,omitempty"`
	PodLabels       map[string]string `json:"pod_labels,omitempty"`
	PodAnnotations  map[string]string `json:"pod_annotations,omitempty"`
	CreateQPS       float64           `json:"create_qps,omitempty"`
	AgentImage      string            `json:"agent_image,omitempty"`
}

// Tool is a host command the REPL (root tool) or a sub-LLM (sub tool) can call.
type Tool struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Run         Command         `json:"run"`
	Timeout     Duration        `json:"timeout"`
	HostEnv
	// ParamNames lists the parameters in declaration order (positional order).
	ParamNames []string `json:"-"`
}

// MCPServer is an MCP server whose tools are root and/or sub tools.
type MCPServer struct {
	Name    string  `json:"name"`
	Command Command `json:"command"`
	URL     string  `json:"url,omitempty"`
	HostEnv
	// Scope is run (one server for the run) or rollout (one per rollout).
	Scope string `json:"scope"`
	// Tools are the tools to expose, by the server's names (nil: all).
	Tools []string `json:"tools,omitempty"`
	// Role is root, sub or both.
	Role string `json:"role"`
	// Prefix goes before every tool's name in the REPL and for sub-LLMs.
	Prefix         string   `json:"prefix,omitempty"`
	StartupTimeout Duration `json:"startup_timeout"`
	Timeout        Duration `json:"timeout"`
}

// Command is a host command: an argv list, or one string run by `sh -c`.
type Command struct {
	Argv  []string
	Shell string
	// Dir is set for a command a base declared: it runs from that base's
	// folder (see Spec.CommandDir).
	Dir string `json:"-"`
}

// IsZero reports whether no command was given.
func (c Command) IsZero() bool { return len(c.Argv) == 0 && c.Shell == "" }

// Args returns the argv to execute.
func (c Command) Args() []string {
	if c.Shell != "" {
		return []string{"/bin/sh", "-c", c.Shell}
	}
	return c.Argv
}

// String renders the command for messages.
func (c Command) String() string {
	if c.Shell != "" {
		return c.Shell
	}
	b, _ := json.Marshal(c.Argv)
	return string(b)
}

// UnmarshalJSON accepts a string or a list of strings.
func (c *Command) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*c = Command{Shell: s}
		return nil
	}
	var argv []string
	if err := json.Unmarshal(b, &argv); err != nil {
		return fmt.Errorf("command must be a string or a list of strings")
	}
	*c = Command{Argv: argv}
	return nil
}

// MarshalJSON writes the command in the form it was given.
func (c Command) MarshalJSON() ([]byte, error) {
	if c.Shell != "" {
		return json.Marshal(c.Shell)
	}
	return json.Marshal(c.Argv)
}

// Model is the root model: an OpenAI-compatible endpoint and how the
// rollout talks to it.
type Model struct {
	Endpoint
	// Format is how the model runs code: tools, ipython or fenced.
	Format       string `json:"format"`
	SystemPrompt string `json:"system_prompt"`
	Scaffolding  bool   `json:"scaffolding"`
	// MaxConcurrency bounds the run's model requests in flight (root and sub).
	MaxConcurrency int `json:"max_concurrency"`
	// MaxTokensPerRollout stops a rollout (status budget) past it; 0: no limit.
	MaxTokensPerRollout int `json:"max_tokens_per_rollout"`
}

// Endpoint is an OpenAI-compatible model: where, which, and how to ask.
type Endpoint struct {
	BaseURL    string   `json:"base_url"`
	Name       string   `json:"name"`
	APIKeyEnv  string   `json:"api_key_env"`
	Sampling   Sampling `json:"sampling"`
	Stream     bool     `json:"stream"`
	Timeout    Duration `json:"timeout"`
	MaxRetries int      `json:"max_retries"`
}

// Sampling are generation settings; nil means the server's default.
type Sampling struct {
	Temperature *float64       `json:"temperature,omitempty"`
	TopP        *float64       `json:"top_p,omitempty"`
	MaxTokens   *int           `json:"max_tokens,omitempty"`
	Seed        *int64         `json:"seed,omitempty"`
	Stop        []string       `json:"stop,omitempty"`
	ExtraBody   map[string]any `json:"extra_body,omitempty"`
}

// SubModel is the sub-LLM: "scripted", "root", or an endpoint of its own.
type SubModel struct {
	Kind     string // scripted | root | endpoint
	Endpoint *Endpoint
}

// UnmarshalJSON reads "scripted", "root" or an endpoint mapping.
func (m *SubModel) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*m = SubModel{Kind: s}
		return nil
	}
	var e Endpoint
	if err := json.Unmarshal(b, &e); err != nil {
		return err
	}
	*m = SubModel{Kind: "endpoint", Endpoint: &e}
	return nil
}

// MarshalJSON writes the model in the form it was given.
func (m SubModel) MarshalJSON() ([]byte, error) {
	if m.Endpoint != nil {
		return json.Marshal(m.Endpoint)
	}
	return json.Marshal(m.Kind)
}

// SubLLM configures llm_batch and the sub-LLMs behind it.
type SubLLM struct {
	Model           SubModel `json:"model"`
	MaxParallelism  int      `json:"max_parallelism"`
	StaggerMS       int      `json:"stagger_ms"`
	StaggerJitterMS int      `json:"stagger_jitter_ms"`
	ToolMaxTurns    int      `json:"tool_max_turns"`
	Replies         []Reply  `json:"replies,omitempty"`
}

// Reply is a scripted sub-LLM answer for prompts matching a regex.
type Reply struct {
	Match string `json:"match"`
	Steps []Step `json:"steps,omitempty"`
	Reply string `json:"reply,omitempty"`
	Path  string `json:"-"` // field path of this reply in the spec, for messages
}

// AllSteps returns the steps, expanding the `reply` shorthand.
func (r Reply) AllSteps() []Step {
	if len(r.Steps) > 0 {
		return r.Steps
	}
	return []Step{{Content: r.Reply, HasContent: true}}
}

// Step is one scripted assistant turn of a sub-LLM.
type Step struct {
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	Content    string     `json:"content,omitempty"`
	HasContent bool       `json:"-"`
	// Usage, when set, is the tokens the step reports (a recorded model's);
	// otherwise they are estimated.
	Usage *StepUsage `json:"usage,omitempty"`
}

// StepUsage is a scripted step's token count.
type StepUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// UnmarshalJSON records whether content was given (an empty string is an answer too).
func (s *Step) UnmarshalJSON(b []byte) error {
	type plain Step
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*s = Step(p)
	_, s.HasContent = raw["content"]
	return nil
}

// ToolCall is a scripted tool call; string values in Arguments are templates.
type ToolCall struct {
	Name      string         `json:"name"`
	Arguments map[string]any `json:"arguments"`
}

// Filesystem describes the rollout's working directory before the first cell.
type Filesystem struct {
	ContextDir   string     `json:"context_dir,omitempty"`
	Context      any        `json:"context,omitempty"`
	HasContext   bool       `json:"-"`
	CopyMaxBytes int64      `json:"copy_max_bytes"`
	Mutations    []Mutation `json:"mutations,omitempty"`
}

// Mutation is one change applied to the staging directory; exactly one field is set.
type Mutation struct {
	Write  *WriteOp  `json:"write,omitempty"`
	Mkdir  *MkdirOp  `json:"mkdir,omitempty"`
	Copy   *CopyOp   `json:"copy,omitempty"`
	Remove *RemoveOp `json:"remove,omitempty"`
	Chmod  *ChmodOp  `json:"chmod,omitempty"`
	Path   string    `json:"-"` // field path of this mutation in the spec, for messages
}

// WriteOp writes a file (parents are created).
type WriteOp struct {
	Path    string `json:"path"`
	Content string `json:"content"`
	Mode    string `json:"mode,omitempty"`
}

// MkdirOp creates a directory and its parents.
type MkdirOp struct {
	Path string `json:"path"`
	Mode string `json:"mode,omitempty"`
}

// CopyOp copies a host file or directory (relative to the spec folder) into the working directory.
type CopyOp struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// RemoveOp removes a file or a directory tree.
type RemoveOp struct {
	Path string `json:"path"`
}

// ChmodOp changes a path's permission bits.
type ChmodOp struct {
	Path string `json:"path"`
	Mode string `json:"mode"`
}

// Retention says what is kept after a run.
type Retention struct {
	Filesystem bool   `json:"filesystem"`
	Dir        string `json:"dir"`
}

// Reward scores a finished rollout; exactly one of Answer, Files and Run is set.
type Reward struct {
	Name   string       `json:"name"`
	Weight float64      `json:"weight"`
	Answer *AnswerCheck `json:"answer,omitempty"`
	Files  *FilesCheck  `json:"files,omitempty"`
	Run    *Command     `json:"run,omitempty"`
	// Timeout bounds a `run` reward.
	Timeout Duration `json:"timeout"`
	HostEnv
}

// HostEnv is what a host command's environment adds to the scrubbed base.
type HostEnv struct {
	Env     map[string]string `json:"env,omitempty"`
	PassEnv []string          `json:"pass_env,omitempty"`
}

// AnswerCheck compares a string (the answer, or a file's content) with an expectation.
type AnswerCheck struct {
	Equals   *string `json:"equals,omitempty"`
	Contains *string `json:"contains,omitempty"`
	Matches  *string `json:"matches,omitempty"`
}

// FilesCheck judges the final working directory.
type FilesCheck struct {
	Glob    string        `json:"glob,omitempty"`
	Count   *int          `json:"count,omitempty"`
	Exists  []string      `json:"exists,omitempty"`
	Absent  []string      `json:"absent,omitempty"`
	Content *ContentCheck `json:"content,omitempty"`
}

// ContentCheck compares one file's content.
type ContentCheck struct {
	Path string `json:"path"`
	AnswerCheck
}

// Rollout is one scripted episode (repeated Repeat times).
type Rollout struct {
	ID            string     `json:"id"`
	Prompt        string     `json:"prompt,omitempty"`
	Repeat        int        `json:"repeat"`
	Vars          Vars       `json:"vars,omitempty"`
	Mutations     []Mutation `json:"mutations,omitempty"`
	Turns         []Turn     `json:"turns"`
	SubLLMReplies []Reply    `json:"sub_llm_replies,omitempty"`
	Expect        *Expect    `json:"expect,omitempty"`
	Index         int        `json:"-"` // position in the spec's rollouts list
	// Scripted says the rollout has turns (even none): a script plays it.
	// Without, the model does.
	Scripted bool `json:"-"`
}

// Vars are a rollout's template variables. YAML scalars of any type are kept
// as their text ("2", "true").
type Vars map[string]string

// UnmarshalJSON accepts strings, numbers and booleans as values.
func (v *Vars) UnmarshalJSON(b []byte) error {
	var raw map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return err
	}
	out := make(Vars, len(raw))
	for k, val := range raw {
		switch x := val.(type) {
		case string:
			out[k] = x
		case json.Number:
			out[k] = x.String()
		case bool:
			out[k] = strconv.FormatBool(x)
		default:
			return fmt.Errorf("var %q must be a string, number or boolean", k)
		}
	}
	*v = out
	return nil
}

// Turn is one scripted root-model turn: a REPL cell, or the end of the
// rollout as a model ended it (Stop, with the final Answer).
type Turn struct {
	Code string `json:"code,omitempty"`
	// Timeout, when set, is this cell's timeout.
	Timeout Duration `json:"timeout,omitempty"`
	Stop    string   `json:"stop,omitempty"`
	Answer  *string  `json:"answer,omitempty"`
}

// IsStop reports whether the turn ends the rollout instead of running code.
func (t Turn) IsStop() bool { return t.Stop != "" }

// Expect is what a correct rollout looks like.
type Expect struct {
	Status *string  `json:"status,omitempty"`
	Answer *string  `json:"answer,omitempty"`
	Reward *float64 `json:"reward,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("120s", "2m") or
// an integer number of seconds.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts "90s"-style strings and integer seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		d.Duration = v
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration must be a string like \"120s\" or integer seconds")
	}
	i, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil {
		return fmt.Errorf("duration in seconds must be an integer")
	}
	d.Duration = time.Duration(i) * time.Second
	return nil
}

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Where returns "file:line:col" for a field path such as "rollouts[1].turns[0].code",
// or the file name alone when the path is unknown (e.g. a default value).
func (s *Spec) Where(path string) string {
	if s.positions != nil {
		if p, ok := s.positions.byDisplay[path]; ok {
			return fmt.Sprintf("%s:%d:%d", s.File, p.Line, p.Col)
		}
	}
	return s.File
}

// ExpandedRollouts returns one entry per run of a rollout: ids get "#n" suffixes
// when repeat > 1.
func (s *Spec) ExpandedRollouts() []Instance {
	var out []Instance
	for _, r := range s.Rollouts {
		for i := 1; i <= r.Repeat; i++ {
			id := r.ID
			if r.Repeat > 1 {
				id = fmt.Sprintf("%s#%d", r.ID, i)
			}
			out = append(out, Instance{ID: id, Rollout: r, RepeatIndex: i})
		}
	}
	return out
}

// Instance is one run of a rollout.
type Instance struct {
	ID          string
	Rollout     Rollout
	RepeatIndex int
}
