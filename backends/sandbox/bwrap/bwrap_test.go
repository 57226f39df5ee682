package bwrap_test

import (
	"context"
	"errors"
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
	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/backends/sandbox/sandboxtest"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

var agentBin string

func TestMain(m *testing.M) {
	_, err := exec.LookPath("bwrap")
	testbin.NeedForPackage(err == nil, "bubblewrap")
	testbin.Main(m, &agentBin)
}

// stateRoot is a state directory the sandbox user can traverse.
func stateRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "rlmrun-test-state-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func settings() sandbox.Settings { return sandboxtest.Settings() }

// sandboxed starts an agent in a fresh sandbox with a running Bash worker.
func sandboxed(t testing.TB, s sandbox.Settings) (*client.Session, *bwrap.Provider, *backends.Facts) {
	t.Helper()
	return sandboxedIn(t, stateRoot(t), s)
}

// sandboxedIn is sandboxed with the state under root.
func sandboxedIn(t testing.TB, root string, s sandbox.Settings) (*client.Session, *bwrap.Provider, *backends.Facts) {
	t.Helper()
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	sess, facts := sandboxtest.Start(t, p, s)
	return sess, p, facts
}

// TestIsolation proves the sandbox's promises from inside it.
func TestIsolation(t *testing.T) {
	// A listener on the host's loopback the sandbox must not reach.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	// A root-only file inside what the sandbox sees (/usr is bound read-only).
	secret := "/usr/local/share/rlmrun-test-secret"
	if os.Geteuid() == 0 {
		if err := os.MkdirAll(filepath.Dir(secret), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(secret, []byte("top secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(secret)
	}
	hostTmp, err := os.CreateTemp("/tmp", "rlmrun-host-only-")
	if err != nil {
		t.Fatal(err)
	}
	hostTmp.Close()
	defer os.Remove(hostTmp.Name())

	sess, _, facts := sandboxed(t, settings())
	if facts.AgentUID != 1000 || facts.AgentPID > 10 {
		t.Errorf("agent runs as uid %d, pid %d: want an unprivileged uid in its own PID space", facts.AgentUID, facts.AgentPID)
	}
	cases := []struct {
		name, code, want string
	}{
		{"no network but the tunnel", fmt.Sprintf("(exec 3<>/dev/tcp/127.0.0.1/%d) 2>/dev/null && echo connected || echo refused", port), "refused\n"},
		{"only loopback", "ls /sys/class/net 2>/dev/null || cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '", "lo\n"},
		{"no capabilities", "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status | awk '{print $2}' | sort -u", "0000000000000000\n"},
		{"unprivileged uid", "id -u; id -g", "1000\n1000\n"},
		{"root-only file unreadable", "cat " + secret + " 2>/dev/null || echo denied", "denied\n"},
		{"no shadow", "cat /etc/shadow 2>/dev/null || echo denied", "denied\n"},
		{"system directories read-only", "touch /usr/x /etc/x /bin/x 2>/dev/null || echo read-only", "read-only\n"},
		{"private /tmp", "ls " + hostTmp.Name() + " 2>/dev/null || echo absent", "absent\n"},
		{"private PID space", "ls -d /proc/[0-9]* | wc -l | awk '{print ($1 < 12) ? \"few\" : $1}'", "few\n"},
		{"host processes invisible", "grep -l rlmrun /proc/[0-9]*/cmdline 2>/dev/null | wc -l | awk '{print ($1 < 4) ? \"ok\" : $1}'", "ok\n"},
		{"host paths invisible", "ls -d /root /home /var /opt /srv /work 2>/dev/null | wc -l", "0\n"},
		{"no new user namespaces", "unshare -U true 2>/dev/null && echo allowed || echo denied", "denied\n"},
		{"bash and python run", "echo $BASH_VERSION | cut -d. -f1; /usr/bin/python3 -c 'print(6*7)'", "5\n42\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "root-only file unreadable" && os.Geteuid() != 0 {
				t.Skip("needs root to plant a root-only file")
			}
			rep := sandboxtest.Exec(t, sess, tc.code)
			if rep.Stdout != tc.want {
				t.Errorf("%s: got %q (stderr %q), want %q", tc.code, rep.Stdout, rep.Stderr, tc.want)
			}
		})
	}
}

// TestHostUIDIsUnprivileged checks from the host that the sandbox's
// processes run as nobody when rlmrun is root.
func TestHostUIDIsUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs as root only: otherwise the sandbox maps to the current user")
	}
	sess, _, _ := sandboxed(t, settings())
	marker := fmt.Sprintf("rlmrun-uid-probe-%d", time.Now().UnixNano())
	go func() { sandboxtest.Exec(t, sess, "exec -a "+marker+" sleep 5") }()
	testbin.Eventually(t, "the probe process", 10*time.Second, func() bool { return len(testbin.Procs(marker)) > 0 })
	for _, pid := range testbin.Procs(marker) {
		status, _ := os.ReadFile(filepath.Join("/proc", pid, "status"))
		for _, line := range strings.Split(string(status), "\n") {
			if uids, ok := strings.CutPrefix(line, "Uid:"); ok {
				for _, u := range strings.Fields(uids) {
					if u != "65534" {
						t.Fatalf("sandboxed process runs as host uid %s: %s", u, line)
					}
				}
			}
		}
	}
}

// TestLimits checks the limits this machine can enforce.
func TestLimits(t *testing.T) {
	sess, p, _ := sandboxed(t, settings())
	t.Logf("enforced here: %s", p.Enforced())
	sandboxtest.CheckLimits(t, sess)
}

// TestForkBomb: a cell that uses up the pids limit takes neither the agent
// nor the sandbox down.
func TestForkBomb(t *testing.T) {
	sess, _, _ := sandboxed(t, settings())
	sandboxtest.CheckForkBomb(t, sess)
}

func TestLifetimeIsEnforced(t *testing.T) {
	s := settings()
	s.Lifetime = 1500 * time.Millisecond
	sess, _, _ := sandboxed(t, s)
	start := time.Now()
	_, err := sess.Exec(context.Background(), 1, protocol.ExecArgs{Code: "sleep 30", TimeoutMS: 60000, MaxOutputBytes: 100})
	if err == nil || time.Since(start) > 15*time.Second {
		t.Fatalf("cell outlived the sandbox's lifetime: %v after %v", err, time.Since(start))
	}
	if !errors.Is(err, client.ErrAgentGone) || !strings.Contains(err.Error(), "the sandbox reached its lifetime (1.5s) and was deleted") {
		t.Errorf("error: %v", err)
	}
}

func TestDeleteLeavesNothing(t *testing.T) {
	root := stateRoot(t)
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	ex, _ := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: settings()})
	sess, facts, err := ex.Start(context.Background(), backends.StartRequest{RunID: "del", RolloutID: "r", Root: ex.Root("/tmp/rlmrun-del", "r"), StartupTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	infos, _ := p.List(context.Background(), map[string]string{sandbox.LabelRun: "del"})
	if len(infos) != 1 || infos[0].ID != facts.SandboxID || infos[0].Labels[sandbox.LabelRollout] != "r" {
		t.Fatalf("List = %+v", infos)
	}
	if orphans, _ := sandbox.FindOrphans(context.Background(), p, "del"); len(orphans) != 0 {
		t.Fatalf("a live run's sandbox counted as an orphan: %+v", orphans)
	}
	if err := sess.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Close()
	for _, sub := range []string{"sandboxes", "bin"} {
		if entries, _ := os.ReadDir(filepath.Join(root, sub)); len(entries) != 0 {
			t.Fatalf("state left behind in %s: %v", sub, entries)
		}
	}
}

func TestMissingBwrapIsAClearError(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := bwrap.New(bwrap.Options{AgentPath: agentBin})
	if !errors.Is(err, sandbox.ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install -y bubblewrap") {
		t.Fatalf("err = %v", err)
	}
}

// BenchmarkColdStart measures the deferred start of a sandboxed rollout:
// sandbox created, agent started, 100 files (1 MB) uploaded, worker ready,
// first cell answered (target: <= 30 ms plus the interpreter's start-up).
func BenchmarkColdStart(b *testing.B) {
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: stateRoot(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: settings()})
	if err != nil {
		b.Fatal(err)
	}
	sandboxtest.ColdStarts(b, ex, nil)
}

// BenchmarkTrivialCell measures `true` in a sandboxed Bash REPL (target:
// <= 1.5 x the local backend's median).
func BenchmarkTrivialCell(b *testing.B) {
	sess, _, _ := sandboxed(b, settings())
	sandboxtest.BenchTrivialCell(b, sess)
}
