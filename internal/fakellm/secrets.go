package fakellm

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// Secrets is a model that solves examples/rlm-secrets the way a capable
// model would, in whichever format and REPL language the request shows:
// as the root model it runs the puzzle's cells (reading the position to
// keep from the REPL's output when it answers in words), and as a sub-LLM
// it calls get_code_from_file_data on the file in its prompt and boxes the
// result.
func Secrets(req Request) Reply {
	if isSub(req) {
		return secretsSub(req)
	}
	format, python := rootFormat(req)
	cells := bashCells
	if python {
		cells = pythonCells
	}
	step := 0
	for _, m := range req.Messages {
		if m.Role == "assistant" {
			step++
		}
	}
	switch format {
	case "tools":
		tool := map[bool]string{true: "call_python_repl", false: "call_bash_repl"}[python]
		if step == 0 {
			// Two calls in one reply: they run in order.
			return Reply{Null: true, ToolCalls: []Call{codeCall(tool, cells[0], nil), codeCall(tool, cells[1], nil)}}
		}
		if i := step + 1; i < len(cells) {
			return Reply{Content: "Next step.", ToolCalls: []Call{codeCall(tool, cells[i], nil)}}
		}
		return Reply{Content: "Done."}
	case "ipython":
		// The last cell does not set the answer: the reply without a tool
		// call is the final answer, read from the REPL's output.
		if step < len(cells)-1 {
			return Reply{Null: true, ToolCalls: []Call{codeCall("ipython", cells[step], map[string]any{"timeout": 30})}}
		}
		if step == len(cells)-1 {
			return Reply{Null: true, ToolCalls: []Call{codeCall("ipython", withoutAnswer(cells[step], python), nil)}}
		}
		return Reply{Content: keptPosition(req)}
	}
	// fenced: the first reply has two blocks.
	if step == 0 {
		return Reply{Content: "Let me look at the files.\n```repl\n" + cells[0] + "\n```\nAnd their content:\n```repl\n" + cells[1] + "\n```"}
	}
	if i := step + 1; i < len(cells) {
		return Reply{Content: "Next:\n```repl\n" + strings.TrimRight(cells[i], "\n") + "\n```"}
	}
	return Reply{Content: keptPosition(req)}
}

// isSub tells a sub-LLM conversation by its system prompt, which asks for
// a boxed answer.
func isSub(req Request) bool {
	return len(req.Messages) > 0 && req.Messages[0].Role == "system" && strings.Contains(req.Messages[0].Text(), `\boxed{}`)
}

// rootFormat reads the format from the tools offered, and the language
// from the scaffolding.
func rootFormat(req Request) (format string, python bool) {
	for _, name := range req.ToolNames() {
		switch name {
		case "call_python_repl":
			return "tools", true
		case "call_bash_repl":
			return "tools", false
		case "ipython":
			format = "ipython"
		}
	}
	if format == "" {
		format = "fenced"
	}
	for _, m := range req.Messages {
		if m.Role == "system" {
			return format, strings.Contains(m.Text(), "persistent Python REPL")
		}
	}
	return format, false
}

func codeCall(tool, code string, extra map[string]any) Call {
	args := map[string]any{"code": code}
	for k, v := range extra {
		args[k] = v
	}
	b, _ := json.Marshal(args)
	return Call{Name: tool, Arguments: string(b)}
}

var keepLine = regexp.MustCompile(`keep position (\d+)`)

// keptPosition reads the position to keep from what the REPL printed.
func keptPosition(req Request) string {
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if m := keepLine.FindStringSubmatch(req.Messages[i].Text()); m != nil {
			return m[1]
		}
	}
	return "I could not find it."
}

// withoutAnswer drops the lines of the last cell that set the answer.
func withoutAnswer(cell string, python bool) string {
	var keep []string
	for _, l := range strings.Split(cell, "\n") {
		if strings.Contains(l, "answer[") || strings.Contains(l, "RLM_READY") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

var subPrompt = regexp.MustCompile(`file (\S+\.txt) whose content is (\S+)`)

func secretsSub(req Request) Reply {
	var prompt string
	var results []string
	for _, m := range req.Messages {
		switch m.Role {
		case "user":
			if prompt == "" {
				prompt = m.Text()
			}
		case "tool":
			results = append(results, m.Text())
		}
	}
	if len(results) > 0 {
		return Reply{Content: fmt.Sprintf("The code is \\boxed{%s}.", strings.Trim(results[len(results)-1], "\" \n"))}
	}
	g := subPrompt.FindStringSubmatch(prompt)
	if g == nil || !hasTool(req, "get_code_from_file_data") {
		return Reply{Content: "I cannot tell: \\boxed{unknown}"}
	}
	b, _ := json.Marshal(map[string]string{"filename": g[1], "filecontent": g[2]})
	return Reply{Null: true, ToolCalls: []Call{{Name: "get_code_from_file_data", Arguments: string(b)}}}
}

func hasTool(req Request, name string) bool {
	for _, n := range req.ToolNames() {
		if n == name {
			return true
		}
	}
	return false
}

// The puzzle's cells, as examples/rlm-secrets scripts them.
var bashCells = []string{
	"ls",
	`for f in *.txt; do echo "$f: $(cat "$f")"; done`,
	`files=(*.txt)
prompts=()
for f in "${files[@]}"; do
  prompts+=("Get the code of file $f whose content is $(cat "$f")")
done
batch=$(llm_batch "${prompts[@]}")
echo "$batch"`,
	`mapfile -t codes < <(printf '%s\n' "$batch" | grep -v -e '^-----' -e '^llm_batch:' -e '^$')
positions=()
for i in "${!files[@]}"; do
  pos=$(decrypt_position "${files[$i]}" "${codes[$i]}")
  echo "${files[$i]} -> $pos"
  positions[$pos]=${files[$i]}
done`,
	`ordered=$(for p in "${!positions[@]}"; do printf '"%s",' "${positions[$p]}"; done)
keep=$(unveil_file_number "[${ordered%,}]")
echo "keep position $keep: ${positions[$keep]}"`,
	`for p in "${!positions[@]}"; do
  [[ $p == "$keep" ]] || rm -- "${positions[$p]}"
done
ls
export RLM_CONTENT=$keep RLM_READY=1`,
}

var pythonCells = []string{
	`import os
files = sorted(f for f in os.listdir(".") if f.endswith(".txt"))
files`,
	`contents = {f: open(f).read().strip() for f in files}
contents`,
	`codes = llm_batch([f"Get the code of file {f} whose content is {contents[f]}" for f in files])
codes`,
	`positions = {decrypt_position(f, c): f for f, c in zip(files, codes)}
positions`,
	`keep = unveil_file_number([positions[p] for p in sorted(positions)])
print("keep position", keep, "->", positions[keep])`,
	`for p, f in positions.items():
    if p != keep:
        os.remove(f)
answer["content"] = str(keep)
answer["ready"] = True
sorted(os.listdir("."))`,
}
