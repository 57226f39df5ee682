package toolcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// recorder is a Caller that returns a canned result and remembers the call.
type recorder struct {
	got    string
	result any
	lines  []string
	err    error
}

func (r *recorder) call(_ context.Context, tool string, args []any, kwargs map[string]any) (any, []string, error) {
	a, _ := json.Marshal(args)
	k, _ := json.Marshal(kwargs)
	r.got = fmt.Sprintf("%s %s %s", tool, a, k)
	return r.result, r.lines, r.err
}

func stdinOf(s string) func() (string, error) { return func() (string, error) { return s, nil } }

func TestArgumentForms(t *testing.T) {
	cases := []struct {
		name  string
		tool  string
		argv  []string
		stdin string
		call  string // what reached the tool; "" when nothing did
		err   string
	}{
		{"positional, JSON-decoded", "t", []string{"abc.txt", "42", `["x"]`, "true", "not json{"}, "", `t ["abc.txt",42,["x"],true,"not json{"] {}`, ""},
		{"--json kwargs", "t", []string{"--json", `{"file_name": "a", "code": "b"}`}, "", `t [] {"code":"b","file_name":"a"}`, ""},
		{"--json args and kwargs", "t", []string{"--json", `{"args": [1], "kwargs": {"k": 2}}`}, "", `t [1] {"k":2}`, ""},
		{"--json list", "t", []string{"--json", `[1, 2]`}, "", `t [1,2] {}`, ""},
		{"--json scalar", "t", []string{"--json", `7`}, "", `t [7] {}`, ""},
		{"--json from stdin", "t", []string{"--json"}, ` {"a": 1} `, `t [] {"a":1}`, ""},
		{"--json with extra args", "t", []string{"x", "--json", "{}"}, "", "", "--json does not accept extra args."},
		{"--json without payload", "t", []string{"--json"}, "  ", "", "Missing JSON payload."},
		{"--json invalid", "t", []string{"--json", "{oops"}, "", "", "Invalid JSON payload:"},
		{"--json bad args", "t", []string{"--json", `{"args": 1}`}, "", "", "JSON args must be a list."},
		{"no args, stdin ignored", "t", nil, "ignored", `t [] {}`, ""},
		{"llm_batch several prompts", "llm_batch", []string{"one", "two 2"}, "", `llm_batch [["one","two 2"]] {}`, ""},
		{"llm_batch one prompt", "llm_batch", []string{"just one"}, "", `llm_batch [["just one"]] {}`, ""},
		{"llm_batch JSON list arg", "llm_batch", []string{`["a", "b"]`}, "", `llm_batch [["a","b"]] {}`, ""},
		{"llm_batch JSON object arg", "llm_batch", []string{`{"prompts": ["a"]}`}, "", `llm_batch [["a"]] {}`, ""},
		{"llm_batch --json", "llm_batch", []string{"--json", `{"prompts": ["p", "q"]}`}, "", `llm_batch [["p","q"]] {}`, ""},
		{"llm_batch --json args", "llm_batch", []string{"--json", `{"args": ["p", "q"]}`}, "", `llm_batch [["p","q"]] {}`, ""},
		{"llm_batch --lines", "llm_batch", []string{"--lines"}, "first\nsecond line\n", `llm_batch [["first","second line"]] {}`, ""},
		{"llm_batch stdin text", "llm_batch", nil, "one prompt\nover lines\n", `llm_batch [["one prompt\nover lines"]] {}`, ""},
		{"llm_batch stdin JSON", "llm_batch", nil, `["x", "y"]`, `llm_batch [["x","y"]] {}`, ""},
		{"llm_batch --json extra", "llm_batch", []string{"a", "--json", "[]"}, "", "", "llm_batch --json does not accept extra args."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{result: "ok"}
			if tc.tool == "llm_batch" {
				rec.result = []any{}
			}
			res := Run(context.Background(), tc.tool, tc.argv, stdinOf(tc.stdin), rec.call)
			if rec.got != tc.call {
				t.Errorf("call = %q, want %q", rec.got, tc.call)
			}
			if tc.err != "" {
				if res.Code != 1 || !strings.HasPrefix(res.Stderr, "Error: "+tc.err) {
					t.Errorf("result = %+v, want error %q", res, tc.err)
				}
			} else if res.Code != 0 {
				t.Errorf("result = %+v", res)
			}
		})
	}
}

func TestNeedsStdin(t *testing.T) {
	cases := []struct {
		tool string
		argv []string
		want bool
	}{
		{"t", nil, false},
		{"t", []string{"a"}, false},
		{"t", []string{"--json"}, true},
		{"t", []string{"--json", "{}"}, false},
		{"t", []string{"--json", "--lines"}, true},
		{"llm_batch", nil, true},
		{"llm_batch", []string{"p"}, false},
		{"llm_batch", []string{"--lines"}, true},
		{"llm_batch", []string{"--json", "[]"}, false},
	}
	for _, c := range cases {
		if got := NeedsStdin(c.tool, c.argv); got != c.want {
			t.Errorf("NeedsStdin(%s, %q) = %v", c.tool, c.argv, got)
		}
	}
}

func TestOutput(t *testing.T) {
	cases := []struct {
		name   string
		tool   string
		result any
		lines  []string
		err    error
		stdout string
		stderr string
	}{
		{"string printed raw", "t", "two\nlines", nil, nil, "two\nlines\n", ""},
		{"string keeps its newline", "t", "done\n", nil, nil, "done\n", ""},
		{"number as JSON", "t", json.Number("3"), nil, nil, "3\n", ""},
		{"object as Python's json.dumps", "t", map[string]any{"b": []any{json.Number("1"), "é"}, "a": nil}, nil, nil, "{\"a\": null, \"b\": [1, \"\\u00e9\"]}\n", ""},
		{"error", "t", nil, nil, errors.New("File 'x' not found"), "", "Error: File 'x' not found\n"},
		{"llm_batch items", "llm_batch", []any{"A", "B\n"}, []string{"llm_batch: 2 call(s) in 0.01s", "  [0]: 5 tokens, 0 tool calls, 0.00s ✓", "  [1]: 6 tokens, 1 tool calls, 0.01s ⚠ max turns"}, nil,
			"llm_batch: 2 call(s) in 0.01s\n----- llm_batch[0] (5 tokens, 0 tool calls, 0.00s ✓) -----\nA\n\n----- llm_batch[1] (6 tokens, 1 tool calls, 0.01s ⚠ max turns) -----\nB\n", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{result: tc.result, lines: tc.lines, err: tc.err}
			res := Run(context.Background(), tc.tool, []string{"x"}, nil, rec.call)
			if res.Stdout != tc.stdout || res.Stderr != tc.stderr {
				t.Errorf("stdout %q stderr %q\nwant   %q        %q", res.Stdout, res.Stderr, tc.stdout, tc.stderr)
			}
		})
	}
}
