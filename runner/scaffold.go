package runner

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// Root model formats.
const (
	FormatTools   = "tools"   // verifiers' RLMEnv: call_bash_repl / call_python_repl tool calls
	FormatIPython = "ipython" // nano-rlm: one ipython tool, one call per turn
	FormatFenced  = "fenced"  // the RLM paper's rlm: ```repl blocks in the reply
)

// scaffold is what the scaffolding tells the root model: the REPL, the
// answer protocol, the tools and the limits.
type scaffold struct {
	language    string // bash | python
	format      string
	rootTools   []schema.Tool // llm_batch aside
	subTools    []schema.Tool
	maxIter     int
	codeTimeout time.Duration
	maxOutput   int
	budget      int
}

// newScaffold describes the run's REPL and tools (llm_batch aside) to its
// root model.
func newScaffold(spec *schema.Spec, root, sub []schema.Tool) scaffold {
	return scaffold{
		language:    spec.REPL.Language,
		format:      spec.Model.Format,
		rootTools:   root,
		subTools:    sub,
		maxIter:     spec.REPL.MaxIterations,
		codeTimeout: spec.REPL.CodeExecutionTimeout.Duration,
		maxOutput:   spec.REPL.MaxOutputLength,
		budget:      spec.Model.MaxTokensPerRollout,
	}
}

// replTool is the name of the tools format's REPL tool.
func (s scaffold) replTool() string {
	if s.language == "python" {
		return "call_python_repl"
	}
	return "call_bash_repl"
}

// text is the scaffolding: rlmrun's own words for what the reference
// systems tell their root models, in their order.
func (s scaffold) text() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	python := s.language == "python"
	lang := map[bool]string{true: "Python", false: "Bash"}[python]

	p("You work on the task below in a persistent %s REPL, running code as many times as you need before you answer.\n\n", lang)
	p("## The REPL\n")
	switch s.format {
	case FormatTools:
		p("- Run code by calling the `%s` tool with the code in `code`. You may call it several times in one reply; the calls run in order.\n", s.replTool())
	case FormatIPython:
		if python {
			p("- Run code by calling the `ipython` tool with Python code in `code` (and, if you want, a `timeout` in seconds). One call per reply.\n")
		} else {
			p("- Run code by calling the `ipython` tool with Bash commands in `code` (and, if you want, a `timeout` in seconds). One call per reply.\n")
		}
	case FormatFenced:
		p("- Run code by writing it in fenced blocks that start with ```repl and end with ```. Every such block in your reply runs, in order.\n")
	}
	if python {
		p("- Variables, functions and imports persist between runs. What the code prints comes back to you, and the value of a last expression as `Out[n]: ...`.\n")
	} else {
		p("- Shell variables, functions and the current directory persist between runs. What the commands print (stdout and stderr) comes back to you.\n")
	}
	p("- The working directory holds the task's files; the files you leave there may be judged.\n")
	p("- Output longer than %d characters is cut. A run may take at most %s seconds; one that takes longer is stopped and the REPL starts again with a fresh state.\n\n", s.maxOutput, seconds(s.codeTimeout))

	p("## Your answer\n")
	if python {
		p("- The REPL has a dict `answer`. Put your answer, as a string, in `answer[\"content\"]`, then set `answer[\"ready\"] = True`: the task ends after that run.\n")
	} else {
		p("- Put your answer in the variable `%s` and set `%s=1`, both exported: `export %s=\"...\" %s=1`. The task ends after that run.\n", wire.EnvAnswerContent, wire.EnvAnswerReady, wire.EnvAnswerContent, wire.EnvAnswerReady)
	}
	switch s.format {
	case FormatTools:
		p("- A reply without a tool call also ends the task, with the answer as it stands in the REPL.\n")
	case FormatIPython:
		p("- A reply without a tool call ends the task too: its text is your final answer.\n")
	}
	p("\n## Sub-LLMs\n")
	if python {
		p("- `%s(prompts)` sends each prompt of a list to a sub-LLM, in parallel, and returns their answers as a list of strings, in order. Use it to read or judge many pieces of text at once.\n", wire.ReservedToolName)
	} else {
		p("- `%s \"prompt 1\" \"prompt 2\" ...` sends each prompt to a sub-LLM, in parallel, and prints the answers in order, each after a line `----- %s[i] (...) -----`. Use it to read or judge many pieces of text at once.\n", wire.ReservedToolName, wire.ReservedToolName)
	}
	if len(s.subTools) > 0 {
		p("- The sub-LLMs can call these tools:\n")
		for _, t := range s.subTools {
			p("  - `%s`%s\n", t.Name, describe(t.Description))
		}
	}
	if len(s.rootTools) > 0 {
		p("\n## Tools\n")
		if python {
			p("These functions are defined in the REPL; they run outside it and return their result (an error raises RuntimeError):\n")
		} else {
			p("These commands are defined in the REPL; they run outside it and print their result (an error prints `Error: ...` and exits 1). Pass arguments as words (`tool a b`, each decoded as JSON when it parses) or as `tool --json '{\"args\": [...], \"kwargs\": {...}}'`:\n")
		}
		for _, t := range s.rootTools {
			p("- `%s`%s%s\n", signature(t, python), describe(t.Description), params(t))
		}
	}
	p("\n## Limits\n")
	p("- You have %d turns.", s.maxIter)
	if s.budget > 0 {
		p(" The task may use %d tokens in all (every request's prompt and reply); past that it stops.", s.budget)
	}
	p("\n")
	return b.String()
}

// describe is a description as a sentence after a dash.
func describe(d string) string {
	if d = sentence(d); d == "" {
		return ""
	}
	return " — " + d
}

// sentence is text with one final period.
func sentence(text string) string {
	text = strings.TrimRight(strings.TrimSpace(text), ".")
	if text == "" {
		return ""
	}
	return text + "."
}

// signature is how a tool is called: name(a, b) in Python, name a b in Bash.
func signature(t schema.Tool, python bool) string {
	if python {
		return t.Name + "(" + strings.Join(t.ParamNames, ", ") + ")"
	}
	if len(t.ParamNames) == 0 {
		return t.Name
	}
	return t.Name + " " + strings.ToUpper(strings.Join(t.ParamNames, " "))
}

// params lists a tool's parameters with their types and descriptions.
func params(t schema.Tool) string {
	if len(t.Parameters) == 0 || len(t.ParamNames) == 0 {
		return ""
	}
	var schemaDoc struct {
		Properties map[string]struct {
			Type        any    `json:"type"`
			Description string `json:"description"`
		} `json:"properties"`
	}
	if json.Unmarshal(t.Parameters, &schemaDoc) != nil {
		return ""
	}
	var parts []string
	for _, name := range t.ParamNames {
		prop := schemaDoc.Properties[name]
		s := "`" + name + "`"
		if prop.Type != nil {
			s += fmt.Sprintf(" (%v)", prop.Type)
		}
		if d := strings.TrimRight(strings.TrimSpace(prop.Description), "."); d != "" {
			s += ": " + d
		}
		parts = append(parts, s)
	}
	return " Parameters: " + strings.Join(parts, "; ") + "."
}
