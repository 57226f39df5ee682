package local

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/confine"
	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// needLandlock skips (or, under scripts/test, fails) without Landlock.
func needLandlock(t *testing.T) {
	t.Helper()
	testbin.Need(t, confine.KernelABI() >= 6, "Landlock ABI >= 6 (a kernel of 6.12 or later)")
}

// cell runs code and returns its output, stdout and stderr together.
func cell(t *testing.T, sess *client.Session, code string) string {
	t.Helper()
	rep, err := sess.Exec(context.Background(), 1, protocol.ExecArgs{Code: code, TimeoutMS: 20000, MaxOutputBytes: 1 << 16})
	if err != nil {
		t.Fatalf("cell %.60q: %v", code, err)
	}
	return rep.Stdout + rep.Stderr + rep.Error
}

// TestConfinementJail is the reference's jail test, for Bash and Python
// alike: the working directory is the REPL's, and the host around it —
// /etc/passwd, the working directory's parent, the run's directory,
// another rollout's directory, the user's home — is refused.
func TestConfinementJail(t *testing.T) {
	needLandlock(t)
	run := t.TempDir()
	other := filepath.Join(run, "other-rollout", "work")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "secret.txt"), []byte("theirs"), 0o644); err != nil {
		t.Fatal(err)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			root := filepath.Join(run, lang+"-rollout")
			refused := map[string]string{
				"/etc/passwd":              "/etc/passwd",
				"the parent":               root,
				"the run's directory":      run,
				"another rollout's file":   filepath.Join(other, "secret.txt"),
				"another rollout's folder": other,
				"the user's home":          home,
			}
			sess, _ := readyWith(t, Options{AgentPath: agentBin}, lang, root, protocol.InitArgs{})
			defer sess.Close(context.Background())
			inside := map[string]string{
				"bash":   "echo mine > f.txt && cat f.txt && mkdir -p d/e && ls d",
				"python": "open('f.txt', 'w').write('mine\\n'); print(open('f.txt').read(), end=''); import os; os.makedirs('d/e'); print(os.listdir('d')[0])",
			}[lang]
			if got := cell(t, sess, inside); got != "mine\ne\n" {
				t.Errorf("inside the working directory: %q", got)
			}
			for what, path := range refused {
				code := map[string]string{
					"bash":   fmt.Sprintf("if [ -d %[1]q ]; then ls %[1]q; else cat %[1]q; fi", path),
					"python": fmt.Sprintf("import os\np = %q\ntry:\n    print(os.listdir(p) if os.path.isdir(p) else open(p).read())\nexcept PermissionError as e:\n    print('PermissionError', e.errno)", path),
				}[lang]
				want := map[string]string{"bash": "Permission denied", "python": "PermissionError 13"}[lang]
				if got := cell(t, sess, code); !strings.Contains(got, want) {
					t.Errorf("%s (%s): %q, want %q", what, path, got, want)
				}
			}
		})
	}
}

// TestConfinementSecrets: with two rollouts at once, a cell reads neither
// a host process's API key (the runner's, as a process started with it
// stands in here) nor the other rollout's secret (in the environment of
// what its cells start) through /proc — and without confinement it would:
// the test can fail.
func TestConfinementSecrets(t *testing.T) {
	needLandlock(t)
	host := exec.Command("sleep", "120")
	host.Env = []string{"OPENAI_API_KEY=sk-runner-key-0123456789"}
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = host.Process.Kill(); _ = host.Wait() }()
	probe := fmt.Sprintf("cat /proc/%d/environ /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -e sk-runner-key-0123456789 -e their-secret-0123456789 | sort -u | wc -l", host.Process.Pid)
	for _, c := range []struct {
		confinement string
		found       string
	}{{confine.BestEffort, "0"}, {confine.Off, "2"}} {
		t.Run(c.confinement, func(t *testing.T) {
			opts := Options{AgentPath: agentBin, Confinement: c.confinement}
			theirs, _ := readyWith(t, opts, "bash", filepath.Join(t.TempDir(), "theirs"), protocol.InitArgs{Secret: "their-secret-0123456789", Tunnel: true})
			defer theirs.Close(context.Background())
			// A cell's background job carries the rollout's environment.
			cell(t, theirs, "sleep 60 &")
			mine, _ := readyWith(t, opts, "bash", filepath.Join(t.TempDir(), "mine"), protocol.InitArgs{})
			defer mine.Close(context.Background())
			if got := strings.TrimSpace(cell(t, mine, probe)); got != c.found {
				t.Errorf("secrets found through /proc: %s, want %s", got, c.found)
			}
		})
	}
}

// TestConfinementNetwork: a cell cannot connect to a host listener, nor
// listen itself; with network: host it can.
func TestConfinementNetwork(t *testing.T) {
	needLandlock(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	code := fmt.Sprintf("(exec 3<>/dev/tcp/127.0.0.1/%d) 2>/dev/null && echo connected || echo refused; /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(); print(\"listening\")' 2>/dev/null || echo no-listen", port)
	for _, c := range []struct {
		network bool
		want    string
	}{{false, "refused\nno-listen\n"}, {true, "connected\nlistening\n"}} {
		t.Run(fmt.Sprintf("network=%v", c.network), func(t *testing.T) {
			sess, _ := readyWith(t, Options{AgentPath: agentBin, Network: c.network}, "bash", filepath.Join(t.TempDir(), "rollout"), protocol.InitArgs{})
			defer sess.Close(context.Background())
			if got := cell(t, sess, code); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestConfinementKeepsTheREPLWorking: what a REPL legitimately does still
// works confined: interpreters, pipes, sort, subprocesses, temporary files,
// the standard library; and the result says what confined it.
func TestConfinementKeepsTheREPLWorking(t *testing.T) {
	needLandlock(t)
	ex, err := New(Options{AgentPath: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "rollout")
	sess, facts, err := ex.Start(context.Background(), backends.StartRequest{Root: root, Language: "bash", Python: "/usr/bin/python3", StartupTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(context.Background())
	if facts.Confinement != fmt.Sprintf("landlock-abi-%d", min(confine.KernelABI(), 7)) {
		t.Errorf("confinement %q", facts.Confinement)
	}
	if err := sess.Init(context.Background(), protocol.InitArgs{Root: root, Language: "bash", Python: "/usr/bin/python3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	code := `printf 'b\na\n' | sort | tr a-z A-Z
/usr/bin/python3 -c 'import json, subprocess, tempfile, sqlite3, hashlib, decimal
with tempfile.NamedTemporaryFile("w") as f:
    f.write("x")
print(json.dumps(subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip()))
print(hashlib.sha256(b"").hexdigest()[:8])'
t=$(mktemp) && echo temp > "$t" && cat "$t"
ls /usr/bin/env >/dev/null && echo system-readable`
	if got := cell(t, sess, code); got != "A\nB\n\"sub\"\ne3b0c442\ntemp\nsystem-readable\n" {
		t.Errorf("got %q", got)
	}
}

// TestConfinementAbstractSockets: a host service on an abstract Unix socket
// (D-Bus, X11 and others listen there) is out of a confined cell's reach.
func TestConfinementAbstractSockets(t *testing.T) {
	needLandlock(t)
	name := fmt.Sprintf("rlmrun-test-%d", os.Getpid())
	ln, err := net.Listen("unix", "@"+name)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	code := fmt.Sprintf(`/usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\0%s")
    print("connected")
except PermissionError:
    print("refused")'`, name)
	for _, c := range []struct{ confinement, want string }{{confine.BestEffort, "refused\n"}, {confine.Off, "connected\n"}} {
		t.Run(c.confinement, func(t *testing.T) {
			sess, _ := readyWith(t, Options{AgentPath: agentBin, Confinement: c.confinement}, "bash", filepath.Join(t.TempDir(), "rollout"), protocol.InitArgs{})
			defer sess.Close(context.Background())
			if got := cell(t, sess, code); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}
