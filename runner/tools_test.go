package runner

import (
	"fmt"
	"strings"
	"testing"
)

// toolFiles are host tools for the tests: probe echoes what it received,
// slow sleeps, crash fails with a message.
var toolFiles = map[string]string{
	"tools/probe.sh": "#!/bin/sh\n# Prints the call it received.\ncat\n",
	"tools/slow.sh":  "#!/bin/sh\nsleep 30\n",
	"tools/crash.sh": "#!/bin/sh\necho 'cannot open database' >&2\nexit 3\n",
	"tools/upper.sh": "#!/bin/sh\n/usr/bin/python3 -S -c 'import json,sys; print(json.load(sys.stdin)[\"arguments\"][\"text\"].upper())'\n",
}

const toolsSpec = `version: 1
name: tools
repl: {language: %s}
sub_llm: {stagger_ms: 0, stagger_jitter_ms: 0}
root_tools:
  - name: probe
    parameters: {type: object, properties: {a: {}, b: {}}, required: [a]}
    run: [tools/probe.sh]
  - name: slow
    run: [tools/slow.sh]
    timeout: 1s
  - name: crash
    run: [tools/crash.sh]
sub_tools:
  - name: upper
    parameters: {type: object, properties: {text: {type: string}}}
    run: [tools/upper.sh]
sub_llm_replies_placeholder: x
rollouts:
  - id: r
    vars: {v: "42"}
    turns:
%s
    sub_llm_replies:
      - match: 'shout (?P<w>\w+)'
        steps:
          - tool_calls: [{name: upper, arguments: {text: "{{ .groups.w }}"}}]
          - content: '\boxed{ {{- .tool_result -}} }'
`

func toolSpec(t *testing.T, lang string, cells ...string) string {
	var b strings.Builder
	for _, c := range cells {
		fmt.Fprintf(&b, "      - code: %q\n", c)
	}
	return strings.Replace(fmt.Sprintf(toolsSpec, lang, b.String()), "sub_llm_replies_placeholder: x\n", "", 1)
}

// argumentsOf extracts the "arguments" the host tool saw from probe's echo.
func TestBashToolCommands(t *testing.T) {
	spec := loadSpec(t, toolSpec(t, "bash",
		`probe abc.txt 7`,
		`probe --json '{"a": [1, 2], "b": null}'`,
		`echo '{"args": ["from stdin"]}' | probe --json`,
		`command probe "via PATH" true`,
		`out=$(probe captured); echo "got: ${out:0:7}"`,
		`probe; echo "status=$?"`,
		`probe 1 2 3`,
		`crash x`,
		`slow`,
		`nosuchtool 2>&1 | head -c 0; llm_batch 'shout hello' 'shout world'`,
		`printf 'shout one\nshout two\n' | llm_batch --lines | grep -v '^-----' | grep -v '^$' | tail -n 2`,
		`llm_batch '{"prompts": ["shout json"]}' | tail -n 1`,
		`llm_batch 'no reply matches this'`,
	), toolFiles)
	r := runSpec(t, spec).Results[0]
	// probe prints the call as JSON; a JSON result is printed the way
	// Python's json.dumps prints it, as the reference did.
	call := func(args, kwargs, arguments string) string {
		return `{"args": ` + args + `, "arguments": ` + arguments + `, "kwargs": ` + kwargs + `, "role": "root", "rollout": "r", "tool": "probe", "vars": {"v": "42"}}` + "\n"
	}
	checkOutputs(t, r, []string{
		call(`["abc.txt", 7]`, `{}`, `{"a": "abc.txt", "b": 7}`),
		call(`[]`, `{"a": [1, 2], "b": null}`, `{"a": [1, 2], "b": null}`),
		call(`["from stdin"]`, `{}`, `{"a": "from stdin"}`),
		call(`["via PATH", true]`, `{}`, `{"a": "via PATH", "b": true}`),
		"got: {\"args\"\n",
		"status=1\nError: probe() missing 1 required argument(s): 'a'\n",
		"Error: probe() takes 2 positional argument(s) but 3 were given\n",
		"Error: tool crash failed (exit status 3): cannot open database\n",
		"Error: tool slow timed out after 1s\n",
		"llm_batch: 2 call(s) in X.XXs\n----- llm_batch[0] (94 tokens, 1 tool calls, X.XXs ✓) -----\nHELLO\n\n----- llm_batch[1] (94 tokens, 1 tool calls, X.XXs ✓) -----\nWORLD\n",
		"ONE\nTWO\n",
		"JSON\n",
		"llm_batch: 1 call(s) in X.XXs\n----- llm_batch[0] (0 tokens, 0 tool calls, X.XXs error) -----\nError in sub-LLM call: no scripted sub-LLM reply matches the prompt \"no reply matches this\"\n",
	})
	if r.Metrics["probe_root_calls"] != 7 || r.Metrics["llm_batch_root_calls"] != 4 || r.Metrics["sub_llm_batch_count"] != 4 || r.Metrics["sub_llm_call_count"] != 6 {
		t.Errorf("metrics: %v", r.Metrics)
	}
}

func TestPythonToolFunctions(t *testing.T) {
	spec := loadSpec(t, toolSpec(t, "python",
		`probe('x', b={'k': [1]})['arguments']`,
		`probe(b=2)`,
		`crash()`,
		`results = llm_batch(['shout hi', 'shout yo'])
results`,
	), toolFiles)
	r := runSpec(t, spec).Results[0]
	checkOutputs(t, r, []string{
		"Out[1]: {'a': 'x', 'b': {'k': [1]}}",
		"Traceback (most recent call last):\n  File \"<cell-2>\", line 1, in <module>\n    probe(b=2)\nRuntimeError: probe() missing 1 required argument(s): 'a'",
		"Traceback (most recent call last):\n  File \"<cell-3>\", line 1, in <module>\n    crash()\nRuntimeError: tool crash failed (exit status 3): cannot open database",
		"llm_batch: 2 call(s) in X.XXs\n  [0]: 90 tokens, 1 tool calls, X.XXs ✓\n  [1]: 90 tokens, 1 tool calls, X.XXs ✓\nOut[4]: ['HI', 'YO']",
	})
}

func TestRewardsAndExpectations(t *testing.T) {
	files := map[string]string{
		"check.sh":  "#!/bin/sh\n# The reward is the number of lines of kept.txt.\nwc -l < \"$RLM_WORKDIR/kept.txt\"\n",
		"exit1.sh":  "#!/bin/sh\nexit 1\n",
		"answer.sh": "#!/bin/sh\ngrep -q '\"answer\":\"forty-two\"' && test \"$RLM_ANSWER\" = forty-two\n",
	}
	spec := loadSpec(t, `version: 1
name: rewards
rewards:
  - {name: equals, weight: 1, answer: {equals: " {{ .vars.ans }} "}}
  - {name: contains, weight: 1, answer: {contains: "two"}}
  - {name: matches, weight: 1, answer: {matches: "^forty-\\w+$"}}
  - {name: wrong, weight: 10, answer: {equals: "nope"}}
  - {name: files, weight: 1, files: {glob: "*.txt", count: 2, exists: [kept.txt, "{{ .vars.dir }}/inner.txt"], absent: [gone.txt], content: {path: kept.txt, contains: "line 2"}}}
  - {name: files_fail, weight: 1, files: {glob: "*.txt", count: 5}}
  - {name: printed_number, weight: 0.5, run: [./check.sh]}
  - {name: exit_status, weight: 1, run: [./exit1.sh]}
  - {name: sees_answer, weight: 1, run: [./answer.sh]}
rollouts:
  - id: good
    vars: {ans: forty-two, dir: sub}
    mutations:
      - write: {path: gone.txt, content: x}
    turns:
      - code: "printf 'line 1\\nline 2\\n' > kept.txt; echo x > other.txt; mkdir sub; echo y > sub/inner.txt; rm gone.txt"
      - code: "export RLM_CONTENT=forty-two RLM_READY=1"
    expect: {status: completed, answer: "{{ .vars.ans }}", reward: 6}
  - id: unmet
    vars: {ans: x, dir: sub}
    turns: [{code: "export RLM_CONTENT=other RLM_READY=1"}]
    expect: {status: max_iterations, answer: "x", reward: 9}
`, files)
	rep := runSpec(t, spec)
	good := find(t, rep, "good")
	scores := map[string]float64{}
	for _, s := range good.Rewards {
		scores[s.Name] = s.Score
	}
	want := map[string]float64{"equals": 1, "contains": 1, "matches": 1, "wrong": 0, "files": 1, "files_fail": 0, "printed_number": 2, "exit_status": 0, "sees_answer": 1}
	for k, v := range want {
		if scores[k] != v {
			t.Errorf("reward %s = %v, want %v (%+v)", k, scores[k], v, good.Rewards)
		}
	}
	if good.Reward == nil || *good.Reward != 6 || !good.Passed {
		t.Errorf("good: reward %v passed %v %+v", good.Reward, good.Passed, good.Expect)
	}
	unmet := find(t, rep, "unmet")
	if unmet.Passed || len(unmet.Expect) != 3 {
		t.Fatalf("unmet: %+v", unmet.Expect)
	}
	for _, e := range unmet.Expect {
		if e.Met {
			t.Errorf("expectation %s should be unmet: %+v", e.Field, e)
		}
	}
	if !rep.Failed() {
		t.Error("unmet expectations must fail the run")
	}
}
