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
	"github.com/rlmrun/rlmrun/internal/testbin"
	"github.com/rlmrun/rlmrun/schema"
)

var agentBin string

func TestMain(m *testing.M) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		if testbin.Required() {
			fmt.Println("FAIL: bubblewrap is not installed, and RLMRUN_REQUIRE_ALL is set")
			os.Exit(1)
		}
		fmt.Println("SKIP: bubblewrap is not installed (apt-get install -y bubblewrap; scripts/test installs it)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "rlmrun-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin, err = testbin.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
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

func settings() schema.Sandbox {
	return schema.Sandbox{Provider: "bwrap", CPUCores: 1, MemoryGB: 0.5, DiskSizeGB: 0.05, PIDs: 64, Network: "none", Lifetime: schema.Duration{Duration: time.Hour}}
}

// sandboxed starts an agent in a fresh sandbox with a running Bash worker.
func sandboxed(t testing.TB, s schema.Sandbox) (*client.Session, *bwrap.Provider, *backends.Facts) {
	t.Helper()
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: stateRoot(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, AgentPath: agentBin})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	runID := fmt.Sprintf("test%d", time.Now().UnixNano())
	root := ex.AgentRoot(runID, "r")
	sess, facts, err := ex.Start(ctx, backends.StartRequest{RunID: runID, RolloutID: "r", Root: root, Language: "bash", Sandbox: s, StartupTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(context.Background()) })
	if err := sess.Init(ctx, protocol.InitArgs{Root: root, Language: "bash"}); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Put(ctx, t.TempDir(), protocol.PutArgs{}); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return sess, p, facts
}

func run(t *testing.T, sess *client.Session, code string) *protocol.ExecReply {
	t.Helper()
	rep, err := sess.Exec(context.Background(), 1, protocol.ExecArgs{Code: code, TimeoutMS: 20000, MaxOutputBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	return rep
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
			rep := run(t, sess, tc.code)
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
	go func() { run(t, sess, "exec -a "+marker+" sleep 5") }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, pid := range testbin.Procs(marker) {
			status, _ := os.ReadFile(filepath.Join("/proc", pid, "status"))
			for _, line := range strings.Split(string(status), "\n") {
				if strings.HasPrefix(line, "Uid:") {
					f := strings.Fields(line)
					for _, u := range f[1:] {
						if u != "65534" {
							t.Fatalf("sandboxed process runs as host uid %s: %s", u, line)
						}
					}
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("probe process never seen")
}

// TestLimits checks the limits this machine can enforce.
func TestLimits(t *testing.T) {
	sess, p, _ := sandboxed(t, settings())
	t.Logf("enforced here: %s", p.Enforced())
	// disk_size_gb: the working directory's tmpfs is 0.05 GiB.
	rep := run(t, sess, "head -c 100000000 /dev/zero > big 2>/dev/null; echo $?; rm -f big")
	if rep.Stdout != "1\n" {
		t.Errorf("writing past disk_size_gb: %q %q", rep.Stdout, rep.Stderr)
	}
	// pids: of 200 forked processes, no more than the limit (64) start.
	rep = run(t, sess, `/usr/bin/python3 -c '
import os, signal, time
pids = []
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(3)
        os._exit(0)
    pids.append(pid)
print("capped" if len(pids) < 64 else len(pids))
for p in pids:
    os.kill(p, signal.SIGKILL)
'`)
	if rep.Stdout != "capped\n" {
		t.Errorf("pids limit: %+v", rep)
	}
	// memory_gb: 0.5 GiB; allocating 1 GiB fails (killed or refused).
	rep = run(t, sess, "/usr/bin/python3 -c 'b = bytearray(1 << 30); print(len(b))' >/dev/null 2>&1; echo $?")
	if rep.Status == protocol.StatusOK && rep.Stdout == "0\n" {
		t.Errorf("allocated 1 GiB under a 0.5 GiB limit: %q", rep.Stdout)
	}
}

func TestLifetimeIsEnforced(t *testing.T) {
	s := settings()
	s.Lifetime = schema.Duration{Duration: 1500 * time.Millisecond}
	sess, _, _ := sandboxed(t, s)
	start := time.Now()
	_, err := sess.Exec(context.Background(), 1, protocol.ExecArgs{Code: "sleep 30", TimeoutMS: 60000, MaxOutputBytes: 100})
	if err == nil || time.Since(start) > 15*time.Second {
		t.Fatalf("cell outlived the sandbox's lifetime: %v after %v", err, time.Since(start))
	}
	if !errors.Is(err, client.ErrAgentGone) {
		t.Logf("error: %v", err)
	}
}

func TestDeleteLeavesNothing(t *testing.T) {
	root := stateRoot(t)
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	ex, _ := sandbox.NewExecutor(sandbox.Options{Provider: p, AgentPath: agentBin})
	sess, facts, err := ex.Start(context.Background(), backends.StartRequest{RunID: "del", RolloutID: "r", Root: ex.AgentRoot("del", "r"), Sandbox: settings(), StartupTimeout: 30 * time.Second})
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
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Fatalf("state left behind: %v", entries)
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
	stage := b.TempDir()
	for i := 0; i < 100; i++ {
		if err := os.WriteFile(filepath.Join(stage, fmt.Sprintf("f%03d.txt", i)), make([]byte, 10<<10), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	p, err := bwrap.New(bwrap.Options{AgentPath: agentBin, StateRoot: stateRoot(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	ex, _ := sandbox.NewExecutor(sandbox.Options{Provider: p, AgentPath: agentBin})
	var total, interp []float64
	for i := 0; i < b.N; i++ {
		ctx := context.Background()
		runID := fmt.Sprintf("bench%d", i)
		root := ex.AgentRoot(runID, "r")
		t0 := time.Now()
		sess, _, err := ex.Start(ctx, backends.StartRequest{RunID: runID, RolloutID: "r", Root: root, Language: "bash", Sandbox: settings(), StartupTimeout: 30 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		if err := sess.Init(ctx, protocol.InitArgs{Root: root, Language: "bash", FSFiles: 100, FSBytes: 100 * 10 << 10}); err != nil {
			b.Fatal(err)
		}
		up := make(chan error, 1)
		go func() { _, err := sess.Put(ctx, stage, protocol.PutArgs{}); up <- err }()
		d, err := sess.Start(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := <-up; err != nil {
			b.Fatal(err)
		}
		// Builtins only: the cell's own process start-ups are not the backend's.
		rep, err := sess.Exec(ctx, 1, protocol.ExecArgs{Code: "f=(*); echo ${#f[@]}", TimeoutMS: 10000, MaxOutputBytes: 100})
		if err != nil || rep.Stdout != "100\n" {
			b.Fatalf("%+v %v", rep, err)
		}
		total = append(total, float64(time.Since(t0).Microseconds())/1000)
		interp = append(interp, float64(d.Microseconds())/1000)
		b.StopTimer()
		sess.Close(ctx)
		b.StartTimer()
	}
	b.ReportMetric(medianOf(total), "cold-start-ms")
	b.ReportMetric(medianOf(interp), "worker-start-ms")
}

// BenchmarkTrivialCell measures `true` in a sandboxed Bash REPL (target:
// <= 1.5 x the local backend's median).
func BenchmarkTrivialCell(b *testing.B) {
	sess, _, _ := sandboxed(b, settings())
	var times []float64
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := sess.Exec(ctx, i+1, protocol.ExecArgs{Code: "true", TimeoutMS: 10000, MaxOutputBytes: 1 << 15}); err != nil {
			b.Fatal(err)
		}
		times = append(times, float64(time.Since(t0).Microseconds())/1000)
	}
	b.ReportMetric(medianOf(times), "median-ms")
}

func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
