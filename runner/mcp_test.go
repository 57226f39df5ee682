package runner

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/internal/mcptest"
	"github.com/rlmrun/rlmrun/internal/testbin"
	"github.com/rlmrun/rlmrun/schema"
)

// mcpSpec is a spec with the test binary as an MCP server.
func mcpSpec(t *testing.T, lang, server string, rollouts string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`version: 1
name: mcp
repl: {language: %s, code_execution_timeout: 30s}
sub_llm: {stagger_ms: 0, stagger_jitter_ms: 0}
mcp_servers:
  - name: t
    command: [%q]
    env: {%s: stdio}
    role: both
    prefix: t_
%s
rollouts:
%s`, lang, self, mcptest.EnvVar, server, rollouts)
}

func TestMCPToolsInTheREPL(t *testing.T) {
	cases := map[string][]string{
		"bash": {
			`echo "$(t_add 2 40) $(t_add --json '{"kwargs": {"a": 1, "b": 2}}') $(t_echo --json '{"args": ["as json"]}')"`,
			`t_echo "héllo {{ world }}"; t_count; t_count; t_fail; echo "status $?"`,
			`llm_batch "shout it"`,
		},
		"python": {
			`[t_add(2, 40), t_add(a=1, b=2), t_echo("héllo")]`,
			`t_count(); print(t_count())
try:
    t_fail()
except RuntimeError as e:
    print("error:", e)`,
			`llm_batch(["shout it"])`,
		},
	}
	for lang, cells := range cases {
		t.Run(lang, func(t *testing.T) {
			var turns strings.Builder
			for _, c := range cells {
				fmt.Fprintf(&turns, "      - code: %q\n", strings.ReplaceAll(c, "{{", `{{"{{"}}`))
			}
			spec := loadSpec(t, mcpSpec(t, lang, "", fmt.Sprintf(`  - id: one
    vars: {word: w1}
    turns:
%s    sub_llm_replies:
      - match: 'shout (?P<w>\w+)'
        steps:
          - tool_calls: [{name: t_echo, arguments: {text: "{{ .groups.w }}!"}}]
          - content: '\boxed{ {{- .tool_result -}} }'
  - id: two
    vars: {word: w2}
    turns: [{code: %q}]
`, turns.String(), map[string]string{"bash": "t_count", "python": "print(t_count())"}[lang])), nil)
			rep := runSpec(t, spec)
			one, two := find(t, rep, "one"), find(t, rep, "two")
			if one.Status != StatusCompleted || two.Status != StatusCompleted {
				t.Fatalf("one: %s %s; two: %s %s", one.Status, one.Error, two.Status, two.Error)
			}
			out := outputs(one)
			want := map[string][]*regexp.Regexp{
				"bash": {
					regexp.MustCompile(`^42 3 as json\n$`),
					regexp.MustCompile(`(?s)^héllo \{\{ world \}\}\none:1:w1\none:2:w1\nstatus 1\nError: the database is locked\n$`),
					regexp.MustCompile(`(?s)it!`),
				},
				"python": {
					regexp.MustCompile(`^Out\[1\]: \[42, 3, 'héllo'\]$`),
					regexp.MustCompile(`(?s)^one:2:w1\nerror: the database is locked$`),
					regexp.MustCompile(`Out\[3\]: \['it!'\]`),
				},
			}[lang]
			for i, re := range want {
				if !re.MatchString(out[i]) {
					t.Errorf("cell %d: %q does not match %s", i, out[i], re)
				}
			}
			// The run's one server keeps each rollout's state apart.
			if !strings.Contains(outputs(two)[0], "two:1:w2") {
				t.Errorf("rollout two: %q", outputs(two)[0])
			}
			tools := 0
			for _, c := range one.Calls {
				if c.Kind == CallTool {
					tools++
				}
			}
			if tools < 5 || one.Metrics["t_add_root_calls"] == nil {
				t.Errorf("%d tool calls recorded, metrics %v", tools, one.Metrics)
			}
		})
	}
}

// TestMCPServerHostSide: the server runs from the spec's folder with a
// scrubbed environment; its stderr goes to the run's log, not the model.
func TestMCPServerHostSide(t *testing.T) {
	t.Setenv("RLMRUN_TEST_SECRET", "hunter2")
	spec := loadSpec(t, mcpSpec(t, "bash", "", `  - id: r
    turns:
      - code: "t_getenv RLMRUN_TEST_SECRET; t_shout 'for the log only'"
`), nil)
	rep := runSpec(t, spec)
	out := outputs(rep.Results[0])[0]
	if !strings.Contains(out, `RLMRUN_TEST_SECRET=""`) || !strings.Contains(out, "cwd="+spec.Dir+" ") || strings.Contains(out, "for the log only") {
		t.Errorf("output %q", out)
	}
	log, err := os.ReadFile(filepath.Join(rep.Dir, "mcp-t.log"))
	if err != nil || !strings.Contains(string(log), "mcptest stderr: for the log only") {
		t.Errorf("the server's log: %q %v", log, err)
	}
}

// TestMCPServerCrashAndTimeout: a crash fails the call in flight and the
// server comes back for the next; a call past its timeout fails alone.
func TestMCPServerCrashAndTimeout(t *testing.T) {
	spec := loadSpec(t, mcpSpec(t, "bash", "    timeout: 1s", `  - id: r
    turns:
      - code: "t_crash; t_echo after"
      - code: "t_nap 10; t_echo again"
`), nil)
	rep := runSpec(t, spec)
	r := rep.Results[0]
	out := outputs(r)
	if out[0] != "after\nError: tool t_crash (MCP server t): the MCP connection is closed: the server exited: exit status 3\n" {
		t.Errorf("crash: %q", out[0])
	}
	if out[1] != "again\nError: tool t_nap timed out after 1s\n" {
		t.Errorf("timeout: %q", out[1])
	}
	log, _ := os.ReadFile(filepath.Join(rep.Dir, "mcp-t.log"))
	if !strings.Contains(string(log), "[rlmrun] MCP server t lost") || !strings.Contains(string(log), "[rlmrun] MCP server t restarted") {
		t.Errorf("log %q", log)
	}
}

// TestMCPRolloutScope: each rollout gets a server of its own, which ends
// with it.
func TestMCPRolloutScope(t *testing.T) {
	spec := loadSpec(t, mcpSpec(t, "bash", "    scope: rollout", `  - id: a
    turns: [{code: "t_instance"}]
  - id: b
    turns: [{code: "t_instance"}]
  - id: none
    turns: [{code: "echo no tool"}]
`), nil)
	rep := runSpec(t, spec)
	ia, ib := outputs(find(t, rep, "a"))[0], outputs(find(t, rep, "b"))[0]
	if !strings.Contains(ia, "-") || ia == ib {
		t.Fatalf("servers of a and b: %q %q", ia, ib)
	}
	// None of the test binary's server processes is left.
	self, _ := os.Executable()
	if !testbin.Within(5*time.Second, func() bool { return len(serverProcs(self)) == 0 }) {
		t.Errorf("servers left: %v", serverProcs(self))
	}
}

// serverProcs are the processes running bin as an MCP server.
func serverProcs(bin string) []string {
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err != nil || !strings.Contains(string(env), mcptest.EnvVar+"=stdio") {
			continue
		}
		if exe, _ := os.Readlink(filepath.Join("/proc", d.Name(), "exe")); exe == bin {
			out = append(out, d.Name())
		}
	}
	return out
}

func TestMCPStartFailures(t *testing.T) {
	self, _ := os.Executable()
	cases := []struct{ name, servers, want string }{
		{"exits at once", `  - name: gone
    command: ["/bin/sh", "-c", "echo 'cannot open config' >&2; exit 4"]
`, "mcp_servers[0]: MCP server gone: initialize: the MCP connection is closed: the server exited: exit status 4"},
		{"never answers", `  - name: mute
    command: ["/bin/sleep", "30"]
    startup_timeout: 500ms
`, "not ready within startup_timeout (500ms)"},
		{"unknown tool", fmt.Sprintf(`  - name: t
    command: [%q]
    env: {%s: stdio}
    tools: [echo, nope]
`, self, mcptest.EnvVar), `mcp_servers[0] (t): the server has no tool "nope" (it has: add, count, crash, echo, fail, getenv, instance, nap, shout)`},
		{"hides a builtin", fmt.Sprintf(`  - name: t
    command: [%q]
    env: {%s: stdio}
`, self, mcptest.EnvVar), `MCP server t (mcp_servers[0]): a root tool "echo" would hide Bash's builtin echo in the REPL: give the server a prefix (mcp_servers[0].prefix) or leave the tool out (mcp_servers[0].tools)`},
		{"clash", fmt.Sprintf(`  - name: t
    command: [%q]
    env: {%s: stdio}
    tools: [add]
root_tools:
  - {name: add, run: [cat]}
`, self, mcptest.EnvVar), `MCP server t (mcp_servers[0]): tool "add" is also in the spec's tools`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := loadSpec(t, "version: 1\nname: fail\nmcp_servers:\n"+tc.servers+"rollouts: [{id: r, turns: [{code: 'echo never'}]}]\n", nil)
			backend, err := local.New(local.Options{AgentPath: agentBin})
			if err != nil {
				t.Fatal(err)
			}
			_, err = Run(context.Background(), Options{Spec: spec, Backend: backend, OutDir: t.TempDir(), TempDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// TestMCPExampleMatchesCommandTools: the rlm-secrets puzzle gives the same
// deterministic results with its tools as one MCP server as with a process
// per call.
func TestMCPExampleMatchesCommandTools(t *testing.T) {
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			got := map[string]map[string]string{}
			for _, file := range []string{"../examples/rlm-secrets/" + lang + ".yaml", "../examples/rlm-secrets-mcp/" + lang + ".yaml"} {
				spec, err := schema.Load(file)
				if err != nil {
					t.Fatal(err)
				}
				got[file] = map[string]string{}
				for _, r := range runSpec(t, spec).Results {
					if !r.Passed {
						t.Errorf("%s %s: %s %s", file, r.ID, r.Status, r.Error)
					}
					got[file][r.ID] = string(deterministic(t, r))
				}
			}
			cmd, mcp := got["../examples/rlm-secrets/"+lang+".yaml"], got["../examples/rlm-secrets-mcp/"+lang+".yaml"]
			if len(cmd) == 0 || len(cmd) != len(mcp) {
				t.Fatalf("rollouts: %d and %d", len(cmd), len(mcp))
			}
			for id, c := range cmd {
				if mcp[id] != c {
					t.Errorf("%s differs:\n commands %s\n MCP      %s", id, c, mcp[id])
				}
			}
		})
	}
}

// TestMCPServerByURL: a streamable HTTP server's tools, in both scopes.
func TestMCPServerByURL(t *testing.T) {
	for _, scope := range []string{"run", "rollout"} {
		t.Run(scope, func(t *testing.T) {
			srv := httptest.NewServer(mcptest.HTTPHandler())
			defer srv.Close()
			spec := loadSpec(t, fmt.Sprintf(`version: 1
name: url
mcp_servers:
  - {name: web, url: %q, scope: %s, tools: [add, count], prefix: w_}
rollouts:
  - {id: a, vars: {word: x}, turns: [{code: "w_add 20 22; w_count"}]}
  - {id: b, vars: {word: y}, turns: [{code: "w_count"}]}
`, srv.URL, scope), nil)
			rep := runSpec(t, spec)
			if got := outputs(find(t, rep, "a"))[0]; got != "42\na:1:x\n" {
				t.Errorf("a: %q", got)
			}
			if got := outputs(find(t, rep, "b"))[0]; got != "b:1:y\n" {
				t.Errorf("b: %q", got)
			}
		})
	}
}
