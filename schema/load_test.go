package schema

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the .errors golden files of testdata/invalid")

// TestInvalidSpecs checks every problem of every invalid fixture: message,
// field path, line and column, against testdata/invalid/NAME.errors.
func TestInvalidSpecs(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	loader, err := NewLoader()
	if err != nil {
		t.Fatal(err)
	}
	absDir, _ := filepath.Abs("testdata/invalid")
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			spec, err := loader.Load(file)
			if err == nil {
				t.Fatalf("Load(%s) = %+v, want an error", file, spec)
			}
			got := strings.ReplaceAll(err.Error(), absDir, "$DIR") + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".errors"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden (run go test ./schema -update to create it): %v", err)
			}
			if got != string(want) {
				t.Errorf("problems differ from %s\n--- got\n%s--- want\n%s", golden, got, want)
			}
			line := regexp.MustCompile(`^testdata/invalid/[a-z-]+\.yaml:\d+:\d+: `)
			for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
				if !line.MatchString(l) {
					t.Errorf("line %q is not FILE:LINE:COL: ...", l)
				}
			}
		})
	}
}

// TestProblemPositions pins positions for the cases the issue names: an
// offending value, a missing key (its parent mapping) and an unknown key (the key).
func TestProblemPositions(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []Problem
	}{
		{
			name: "wrong value",
			yaml: "version: 1\nname: x\nrepl:\n  max_iterations: lots\nrollouts: [{id: a, turns: []}]\n",
			want: []Problem{{Pos: Pos{4, 19}, Path: "repl.max_iterations", Message: `expected an integer, got string "lots"`}},
		},
		{
			name: "missing key points at the parent mapping",
			yaml: "version: 1\nname: x\nroot_tools:\n  - {name: t}\nrollouts:\n  - id: a\n    turns: []\n",
			want: []Problem{{Pos: Pos{4, 5}, Path: "root_tools[0].run", Message: "missing required key"}},
		},
		{
			name: "unknown key points at the key",
			yaml: "version: 1\nname: x\nrollouts:\n  - id: a\n    turns: []\n    promt: hi\n",
			want: []Problem{{Pos: Pos{6, 5}, Path: "rollouts[0].promt", Message: `unknown key "promt" (did you mean "prompt"?)`}},
		},
		{
			name: "several at once, in file order",
			yaml: "version: 1\nname: X\nrollouts:\n  - id: a\n    turns: []\n  - id: a\n    turns: []\n",
			want: []Problem{
				{Pos: Pos{2, 7}, Path: "name", Message: `must be lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-', got string "X"`},
				{Pos: Pos{6, 9}, Path: "rollouts[1].id", Message: `duplicate rollout id "a" (first at t.yaml:4:9)`},
			},
		},
	}
	loader, err := NewLoader()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loader.LoadBytes("t.yaml", t.TempDir(), []byte(tc.yaml))
			got := Problems(err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Pos != w.Pos || g.Path != w.Path || g.Message != w.Message || g.File != "t.yaml" {
					t.Errorf("problem %d:\n got  %s:%d:%d %s: %s\n want %d:%d %s: %s", i, g.File, g.Pos.Line, g.Pos.Col, g.Path, g.Message, w.Pos.Line, w.Pos.Col, w.Path, w.Message)
				}
			}
		})
	}
}

// TestDefaults pins the reference's defaults (rlmenv.md, "Options").
func TestDefaults(t *testing.T) {
	s, err := Load("testdata/valid/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"repl.language", s.REPL.Language, "bash"},
		{"repl.python", s.REPL.Python, "/usr/bin/python3"},
		{"repl.max_iterations", s.REPL.MaxIterations, 50},
		{"repl.max_output_length", s.REPL.MaxOutputLength, 8192},
		{"repl.code_execution_timeout", s.REPL.CodeExecutionTimeout.Duration, 120 * time.Second},
		{"repl.abort_on_code_timeout", s.REPL.AbortOnCodeTimeout, false},
		{"repl.startup_timeout", s.REPL.StartupTimeout.Duration, 120 * time.Second},
		{"backend.type", s.Backend.Type, "local"},
		{"backend.interception_url", s.Backend.InterceptionURL, ""},
		{"backend.sandbox.provider", s.Backend.Sandbox.Provider, "bwrap"},
		{"backend.sandbox.image", s.Backend.Sandbox.Image, "python:3.11-slim"},
		{"backend.sandbox.pull", s.Backend.Sandbox.Pull, "if-missing"},
		{"backend.sandbox.cpu_cores", s.Backend.Sandbox.CPUCores, 1.0},
		{"backend.sandbox.memory_gb", s.Backend.Sandbox.MemoryGB, 2.0},
		{"backend.sandbox.disk_size_gb", s.Backend.Sandbox.DiskSizeGB, 5.0},
		{"backend.sandbox.pids", s.Backend.Sandbox.PIDs, 256},
		{"backend.sandbox.lifetime", s.Backend.Sandbox.Lifetime.Duration, time.Hour},
		{"backend.sandbox.network", s.Backend.Sandbox.Network, "none"},
		{"backend.sandbox.create_retries", s.Backend.Sandbox.CreateRetries, 5},
		{"sub_llm.model", s.SubLLM.Model.Kind, "scripted"},
		{"sub_llm.max_parallelism", s.SubLLM.MaxParallelism, 5},
		{"sub_llm.stagger_ms", s.SubLLM.StaggerMS, 200},
		{"sub_llm.stagger_jitter_ms", s.SubLLM.StaggerJitterMS, 50},
		{"sub_llm.tool_max_turns", s.SubLLM.ToolMaxTurns, 5},
		{"filesystem.copy_max_bytes", s.Filesystem.CopyMaxBytes, int64(1_000_000_000)},
		{"retention.filesystem", s.Retention.Filesystem, false},
		{"retention.dir", s.Retention.Dir, "rlmrun-out"},
		{"rollouts[0].repeat", s.Rollouts[0].Repeat, 1},
		{"rollouts[0].turns", len(s.Rollouts[0].Turns), 0},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestFullSpec(t *testing.T) {
	s, err := Load("testdata/valid/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := s.RootTools[0].ParamNames; strings.Join(got, ",") != "file_name,code" {
		t.Errorf("ParamNames = %v, want declaration order file_name,code", got)
	}
	if got := s.RootTools[0].Timeout.Duration; got != 30*time.Second {
		t.Errorf("tool timeout = %v", got)
	}
	if got := s.SubTools[0].Timeout.Duration; got != 30*time.Second {
		t.Errorf("default tool timeout = %v, want 30s", got)
	}
	if got := s.Rewards[0].Weight; got != 0.5 {
		t.Errorf("weight = %v", got)
	}
	if n := len(s.Filesystem.Mutations); n != 5 || s.Filesystem.Mutations[4].Chmod == nil || s.Filesystem.Mutations[4].Chmod.Mode != "0600" {
		t.Errorf("mutations = %+v", s.Filesystem.Mutations)
	}
	r := s.Rollouts[0]
	if r.Vars["position"] != "2" || r.Expect == nil || *r.Expect.Reward != 1.0 || *r.Expect.Status != "completed" {
		t.Errorf("rollout = %+v", r)
	}
	steps := r.SubLLMReplies[1].AllSteps()
	if len(steps) != 1 || steps[0].Content != `\boxed{42}` || !steps[0].HasContent {
		t.Errorf("reply shorthand = %+v", steps)
	}
	if got := s.Where("rollouts[0].turns[1].code"); got != "testdata/valid/full.yaml:74:15" {
		t.Errorf("Where = %s", got)
	}
	if !filepath.IsAbs(s.Dir) {
		t.Errorf("Dir %q is not absolute", s.Dir)
	}
}

func TestAnchorsAndMergeKeys(t *testing.T) {
	s, err := Load("testdata/valid/anchors.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{}
	for _, in := range s.ExpandedRollouts() {
		ids = append(ids, in.ID)
	}
	if got := strings.Join(ids, " "); got != "first second#1 second#2 second#3" {
		t.Errorf("expanded ids = %s", got)
	}
	second := s.Rollouts[1]
	want := map[string]string{"who": "moon", "n": "3", "flag": "true"}
	for k, v := range want {
		if second.Vars[k] != v {
			t.Errorf("merged var %s = %q, want %q", k, second.Vars[k], v)
		}
	}
	if len(second.Turns) != 2 || s.REPL.MaxIterations != 7 || s.REPL.Language != "python" {
		t.Errorf("alias expansion: %+v %+v", second.Turns, s.REPL)
	}
}

func TestAliasBombIsRejected(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nname: bomb\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 9; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	b.WriteString("rollouts: [{id: a}]\n")
	_, err := newTestLoader(t).LoadBytes("bomb.yaml", t.TempDir(), []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "document too large") {
		t.Fatalf("err = %v, want document too large", err)
	}
}

func newTestLoader(t testing.TB) *Loader {
	l, err := NewLoader()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestSchemaIsPublishedJSON(t *testing.T) {
	var v map[string]any
	if err := json.Unmarshal(JSON(), &v); err != nil {
		t.Fatal(err)
	}
	if v["$schema"] != "https://json-schema.org/draft/2020-12/schema" || v["$id"] != SchemaID {
		t.Errorf("$schema/$id = %v %v", v["$schema"], v["$id"])
	}
}

func FuzzLoad(f *testing.F) {
	for _, dir := range []string{"testdata/valid", "testdata/invalid"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for _, file := range files {
			if strings.Contains(file, "bomb") {
				// Hundreds of milliseconds each (by design of the attack):
				// TestInvalidSpecs covers them; as seeds they would slow
				// every mutation made from them.
				continue
			}
			b, err := os.ReadFile(file)
			if err == nil {
				f.Add(b)
			}
		}
	}
	loader, err := NewLoader()
	if err != nil {
		f.Fatal(err)
	}
	line := regexp.MustCompile(`^f\.yaml:\d+:\d+: .+`)
	dir := f.TempDir()
	ref := referenceSchema(f)
	var raw map[string]any
	if err := json.Unmarshal(schemaJSON, &raw); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Whatever the document, the schema interpreter and the reference
		// implementation must agree on it.
		if tree, ok := treeOf(data); ok {
			agree(t, ref, raw, tree, "fuzz input")
		}
		spec, err := loader.LoadBytes("f.yaml", dir, data)
		if err == nil {
			if spec == nil || len(spec.Rollouts) == 0 {
				t.Fatalf("valid spec without rollouts")
			}
			return
		}
		for _, l := range strings.Split(err.Error(), "\n") {
			if !line.MatchString(l) {
				t.Fatalf("unlocated problem line %q", l)
			}
		}
	})
}

func BenchmarkLoad1000Rollouts(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("version: 1\nname: big\nrewards:\n  - name: ok\n    answer: {equals: \"{{ .vars.n }}\"}\nrollouts:\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&sb, "  - id: r%d\n    vars: {n: \"%d\"}\n    turns:\n      - code: echo {{ .vars.n }}\n      - code: export RLM_CONTENT=%d RLM_READY=1\n", i, i, i)
	}
	data := []byte(sb.String())
	loader, err := NewLoader()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := loader.LoadBytes("big.yaml", dir, data); err != nil {
			b.Fatal(err)
		}
	}
}
