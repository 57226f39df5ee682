package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runMain(append([]string{"rlmrun"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func writeSpec(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "spec.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const okSpec = "version: 1\nname: ok\nrepl: {language: python}\nrollouts:\n  - id: a\n    repeat: 2\n    turns: []\n  - id: b\n    turns: []\n"

func TestValidateExitCodes(t *testing.T) {
	good := writeSpec(t, okSpec)
	bad := writeSpec(t, "version: 1\nname: Bad\nrollouts: []\n")
	cases := []struct {
		name     string
		args     []string
		code     int
		stdout   string
		stderrIn []string
	}{
		{"valid", []string{"validate", good}, 0, "ok: " + good + " (3 rollouts, backend local, repl python)\n", nil},
		{"invalid", []string{"validate", bad}, 2, "", []string{bad + ":2:7: name: must be lowercase", bad + ":3:11: rollouts: needs at least 1 item(s)", "1 of 1 spec(s) invalid"}},
		{"mixed", []string{"validate", good, bad}, 2, "ok: " + good + " (3 rollouts, backend local, repl python)\n", []string{"1 of 2 spec(s) invalid"}},
		{"missing file", []string{"validate", "/nonexistent/spec.yaml"}, 2, "", []string{"/nonexistent/spec.yaml:1:1: cannot read spec: no such file"}},
		{"no args", []string{"validate"}, 2, "", []string{"validate needs at least one SPEC"}},
		{"unknown flag", []string{"validate", "--frob", good}, 2, "", []string{"flag provided but not defined: -frob"}},
		{"unknown command", []string{"frobnicate"}, 2, "", []string{`unknown command "frobnicate"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, tc.code, errOut)
			}
			if out != tc.stdout {
				t.Errorf("stdout = %q, want %q", out, tc.stdout)
			}
			for _, s := range tc.stderrIn {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr %q lacks %q", errOut, s)
				}
			}
		})
	}
}

// urfave/cli stops parsing flags at the first argument; rlmrun moves flags
// written after the spec so they are never dropped silently.
func TestNormalizeArgs(t *testing.T) {
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	cases := []struct{ in, want string }{
		{"rlmrun spec.yaml", "rlmrun run -- spec.yaml"},
		{"rlmrun validate a.yaml b.yml", "rlmrun validate -- a.yaml b.yml"},
		{"rlmrun version", "rlmrun version"},
		{"rlmrun validate a.yaml --help", "rlmrun validate --help -- a.yaml"},
		{"rlmrun validate -- -odd.yaml", "rlmrun validate -- -odd.yaml"},
	}
	for _, tc := range cases {
		got := strings.Join(normalizeArgs(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("normalizeArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSchemaCommandPrintsTheSchema(t *testing.T) {
	code, out, _ := runCLI(t, "schema")
	var v map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v["title"] != "rlmrun spec v1" {
		t.Fatalf("schema: code %d, output %.80q", code, out)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(out, "rlmrun dev (go") || !strings.Contains(out, "spec format v1") {
		t.Fatalf("version: %d %q", code, out)
	}
}

// Every command's help shows at least one example.
func TestHelpHasExamples(t *testing.T) {
	app := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	_, rootHelp, _ := runCLI(t, "--help")
	if !strings.Contains(rootHelp, "EXAMPLES:") {
		t.Errorf("root help lacks EXAMPLES:\n%s", rootHelp)
	}
	for _, cmd := range app.Commands {
		if cmd.Hidden {
			continue
		}
		_, help, _ := runCLI(t, cmd.Name, "--help")
		if !strings.Contains(help, "EXAMPLE") || !strings.Contains(help, "rlmrun "+cmd.Name) {
			t.Errorf("help of %s has no example:\n%s", cmd.Name, help)
		}
		if !strings.Contains(rootHelp, cmd.Name) {
			t.Errorf("root help does not list %s", cmd.Name)
		}
	}
}

func TestRunDryRunPrintsThePlan(t *testing.T) {
	spec := writeSpec(t, okSpec)
	code, out, errOut := runCLI(t, "run", spec, "--dry-run")
	if code != 0 || !strings.Contains(out, "plan: ok") || !strings.Contains(out, "a#2") || !strings.Contains(out, "root tools: llm_batch") {
		t.Fatalf("dry run: %d\n%s%s", code, out, errOut)
	}
}

// A spec that never ends (or is merely huge) is refused at its size limit.
func TestValidateEndlessInput(t *testing.T) {
	code, out, errOut := runCLI(t, "validate", "/dev/zero")
	if code != exitUsage || !strings.Contains(errOut, "/dev/zero:1:1: the spec is larger than 32 MiB") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
}

// Flags without a usable value are usage errors, not silently accepted.
func TestBadRunFlags(t *testing.T) {
	spec := "../../examples/hello-bash.yaml"
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-j", "0", spec}, "--concurrency (-j) must be at least 1, got 0"},
		{[]string{"-j", "-1", spec}, "--concurrency (-j) must be at least 1, got -1"},
		{[]string{spec, "--image"}, `--image needs an image name, got ""`},
		{[]string{"--image", "", spec}, `--image needs an image name, got ""`},
	} {
		code, out, errOut := runCLI(t, append([]string{"run", "--dry-run"}, tc.args...)...)
		if code != exitUsage || !strings.Contains(errOut, tc.msg) {
			t.Errorf("%v: exit %d\n%s%s", tc.args, code, out, errOut)
		}
	}
}

// syncBuffer is a bytes.Buffer a test may read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}
