package local

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/confine"
	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/protocol"
	rlmfs "github.com/rlmrun/rlmrun/fs"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

var agentBin string

func TestMain(m *testing.M) {
	testbin.Main(m, &agentBin)
}

// ready starts an agent and its worker, as a rollout's first cell does.
func ready(tb testing.TB, lang string) (*client.Session, string) {
	tb.Helper()
	return readyWith(tb, Options{AgentPath: agentBin}, lang, filepath.Join(tb.TempDir(), "rollout"), protocol.InitArgs{})
}

// readyWith is ready with the executor's options, the rollout's directory
// and more of init's arguments.
func readyWith(tb testing.TB, opts Options, lang, root string, init protocol.InitArgs) (*client.Session, string) {
	tb.Helper()
	ex, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	empty := tb.TempDir()
	ctx := context.Background()
	sess, _, err := ex.Start(ctx, backends.StartRequest{Root: root, Language: lang, Python: "/usr/bin/python3", StartupTimeout: 30 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	init.Root, init.Language, init.Python = root, lang, "/usr/bin/python3"
	if err := sess.Init(ctx, init); err != nil {
		tb.Fatal(err)
	}
	// As the runner does: upload and worker start side by side.
	upload := make(chan error, 1)
	go func() {
		_, err := sess.Put(ctx, empty, protocol.PutArgs{})
		upload <- err
	}()
	if _, err := sess.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := <-upload; err != nil {
		tb.Fatal(err)
	}
	return sess, root
}

func TestSessionLifecycle(t *testing.T) {
	sess, root := ready(t, "bash")
	ctx := context.Background()
	rep, err := sess.Exec(ctx, 1, protocol.ExecArgs{Code: "echo hi > f.txt; cat f.txt", TimeoutMS: 5000, MaxOutputBytes: 100})
	if err != nil || rep.Stdout != "hi\n" || rep.Seq != 1 {
		t.Fatalf("exec: %+v %v", rep, err)
	}
	down := t.TempDir()
	st, err := sess.Get(ctx, down, client.GetOptions{Limits: rlmfsLimits()})
	if err != nil || st.Files != 1 {
		t.Fatalf("get: %+v %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(down, "f.txt")); string(b) != "hi\n" {
		t.Fatalf("downloaded %q", b)
	}
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("agent left %s behind (%v)", root, err)
	}
}

// TestCancelledCellStopsTheWorker: a cell whose caller gives up is killed in
// the agent, not left running.
func TestCancelledCellStopsTheWorker(t *testing.T) {
	sess, _ := ready(t, "bash")
	defer sess.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := sess.Exec(ctx, 1, protocol.ExecArgs{Code: "sleep 30", TimeoutMS: 60000, MaxOutputBytes: 100})
	if err == nil {
		t.Fatal("exec should fail when its context ends")
	}
	// The agent answers promptly afterwards: the worker is gone, not busy.
	actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer acancel()
	if _, err := sess.Answer(actx); err == nil {
		t.Fatal("answer after a cancelled cell should report the missing worker")
	}
}

// BenchmarkTrivialCell measures a cell through the whole path: runner ->
// yamux -> agent -> worker and back. Targets: median <= 1 ms (bash), <= 0.5
// ms (python).
func BenchmarkTrivialCell(b *testing.B) {
	for _, lang := range []string{"bash", "python"} {
		b.Run(lang, func(b *testing.B) {
			sess, _ := ready(b, lang)
			defer sess.Close(context.Background())
			code := map[string]string{"bash": "true", "python": "pass"}[lang]
			ctx := context.Background()
			times := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if _, err := sess.Exec(ctx, i+1, protocol.ExecArgs{Code: code, TimeoutMS: 10000, MaxOutputBytes: 1 << 15}); err != nil {
					b.Fatal(err)
				}
				times = append(times, time.Since(t0))
			}
			b.ReportMetric(median(times), "median-ms")
		})
	}
}

// BenchmarkAgentStartToWorkerReady measures the deferred start of a
// rollout: spawn the agent, initialise it, upload an empty directory, start
// the worker. Targets: <= 20 ms (bash), <= 40 ms (python).
// Confined (the default) and not, to measure Landlock's cost (target:
// <= 1 ms).
func BenchmarkAgentStartToWorkerReady(b *testing.B) {
	for _, c := range []struct{ lang, confinement string }{
		{"bash", confine.BestEffort}, {"bash", confine.Off}, {"python", confine.BestEffort}, {"python", confine.Off},
	} {
		name := c.lang
		if c.confinement == confine.Off {
			name += "/unconfined"
		}
		b.Run(name, func(b *testing.B) {
			times := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				sess, _ := readyWith(b, Options{AgentPath: agentBin, Confinement: c.confinement}, c.lang, filepath.Join(b.TempDir(), "rollout"), protocol.InitArgs{})
				times = append(times, time.Since(t0))
				b.StopTimer()
				_ = sess.Close(context.Background())
				b.StartTimer()
			}
			b.ReportMetric(median(times), "median-ms")
		})
	}
}

func median(ts []time.Duration) float64 {
	if len(ts) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[len(s)/2].Microseconds()) / 1000
}

func rlmfsLimits() rlmfs.Limits { return rlmfs.Limits{MaxBytes: 1 << 20, MaxFiles: 100} }

// Without a PID namespace, what a killed run left is found by its mark.
func TestStaleProcessesFindsMarkedLeftovers(t *testing.T) {
	dead := exec.Command("sleep", "1000")
	dead.Env = []string{OwnerEnv + "=999999999-1"}
	live := exec.Command("sleep", "1000")
	start, _ := procs.StartTime(os.Getpid())
	live.Env = []string{fmt.Sprintf("%s=%d-%s", OwnerEnv, os.Getpid(), start)}
	for _, c := range []*exec.Cmd{dead, live} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer func(c *exec.Cmd) { c.Process.Kill(); c.Wait() }(c)
	}
	got := staleProcesses()
	if !slices.Contains(got, dead.Process.Pid) || slices.Contains(got, live.Process.Pid) {
		t.Fatalf("StaleProcesses() = %v; dead owner's %d, live owner's %d", got, dead.Process.Pid, live.Process.Pid)
	}
}
