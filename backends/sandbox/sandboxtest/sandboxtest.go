// Package sandboxtest holds what the tests of every sandbox provider share:
// running a cell in a session, the limits every provider must enforce, and
// the trivial-cell benchmark. Only tests import it.
package sandboxtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/backends/sandbox"
	rlmfs "github.com/rlmrun/rlmrun/fs"
)

// Settings are small sandbox settings for tests: 1 CPU, 0.5 GiB of memory,
// 50 MiB of disk, 64 pids, no network, an hour to live.
func Settings() sandbox.Settings {
	return sandbox.Settings{CPUCores: 1, MemoryBytes: 512 << 20, DiskBytes: 50 << 20, PIDs: 64, Lifetime: time.Hour}
}

// root is a rollout's directory in a sandbox, for a run directory named
// after runID.
func root(ex *sandbox.Executor, runID string) string {
	return ex.Root("/tmp/rlmrun-"+runID, "r")
}

// Start starts an agent in a fresh sandbox of provider p with settings s,
// uploads an empty working directory and starts a Bash worker; the session
// ends with the test.
func Start(t testing.TB, p sandbox.Provider, s sandbox.Settings) (*client.Session, *backends.Facts) {
	t.Helper()
	ex, err := sandbox.NewExecutor(sandbox.Options{Provider: p, Settings: s})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	runID := fmt.Sprintf("test%d", time.Now().UnixNano())
	root := root(ex, runID)
	sess, facts, err := ex.Start(ctx, backends.StartRequest{RunID: runID, RolloutID: "r", Root: root, Language: "bash", StartupTimeout: 60 * time.Second})
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
	return sess, facts
}

// ColdStarts measures b.N deferred starts of a sandboxed rollout, as the
// runner does them: sandbox created, agent started, 100 files (1 MB)
// uploaded while the worker starts, first cell answered. It reports the
// medians of the whole (cold-start-ms) and of the worker's start
// (worker-start-ms); between starts, while the timer is stopped, it calls
// between (if not nil). It returns the median of the whole.
func ColdStarts(b *testing.B, ex *sandbox.Executor, between func()) float64 {
	stage := b.TempDir()
	for i := 0; i < 100; i++ {
		if err := os.WriteFile(filepath.Join(stage, fmt.Sprintf("f%03d.txt", i)), make([]byte, 10<<10), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	var total, worker []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runID := fmt.Sprintf("bench%d-%d", time.Now().UnixNano(), i)
		root := root(ex, runID)
		t0 := time.Now()
		sess, _, err := ex.Start(ctx, backends.StartRequest{RunID: runID, RolloutID: "r", Root: root, Language: "bash", StartupTimeout: 60 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		if err := sess.Init(ctx, protocol.InitArgs{Root: root, Language: "bash", FS: rlmfs.Metadata{FileCount: 100, TotalSize: 100 * 10 << 10}}); err != nil {
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
		worker = append(worker, float64(d.Microseconds())/1000)
		b.StopTimer()
		sess.Close(ctx)
		if between != nil {
			between()
		}
		b.StartTimer()
	}
	b.ReportMetric(Median(total), "cold-start-ms")
	b.ReportMetric(Median(worker), "worker-start-ms")
	return Median(total)
}

// Exec runs code in the session's worker, restarting it if the cell kills
// it, and fails the test if the session breaks.
func Exec(t testing.TB, sess *client.Session, code string) *protocol.ExecReply {
	t.Helper()
	rep, err := sess.Exec(context.Background(), 1, protocol.ExecArgs{Code: code, TimeoutMS: 30000, MaxOutputBytes: 1 << 16, RestartOnFailure: true})
	if err != nil {
		t.Fatalf("cell %.60q: %v", code, err)
	}
	return rep
}

// CheckLimits proves from inside a sandbox created with Settings (50 MiB of
// disk, 64 pids, 0.5 GiB of memory) that it cannot outgrow them.
func CheckLimits(t *testing.T, sess *client.Session) {
	t.Helper()
	// disk_size_gb: 100 MB do not fit in the working directory.
	if rep := Exec(t, sess, "head -c 100000000 /dev/zero > big 2>/dev/null; echo $?; rm -f big"); rep.Stdout != "1\n" {
		t.Errorf("writing past disk_size_gb: %+v", rep)
	}
	// pids: of 200 forked processes, fewer than the limit start.
	rep := Exec(t, sess, `/usr/bin/python3 -c '
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
	// memory_gb: allocating 1 GiB fails (killed or refused).
	rep = Exec(t, sess, "/usr/bin/python3 -c 'b = bytearray(1 << 30); print(len(b))' >/dev/null 2>&1; echo $?")
	if rep.Status == protocol.StatusOK && rep.Stdout == "0\n" {
		t.Errorf("allocated 1 GiB under a 0.5 GiB limit: %+v", rep)
	}
	// What ran out of memory was the cell, not the agent: the session goes on.
	if rep := Exec(t, sess, "echo alive; cat /proc/self/oom_score_adj"); rep.Stdout != "alive\n1000\n" {
		t.Errorf("after the memory limit: %+v", rep)
	}
}

// CheckForkBomb runs cells that fork until the pids limit refuses, and
// hold every pid while printing, so the agent has to work with none left:
// the agent and the sandbox must outlive them, and the session go on.
func CheckForkBomb(t *testing.T, sess *client.Session) {
	t.Helper()
	for i := 0; i < 3; i++ {
		rep := Exec(t, sess, `/usr/bin/python3 -c '
import os, signal, sys, time
pids = []
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    pids.append(pid)
for i in range(2000):
    print("x" * 100)
time.sleep(1)
for p in pids:
    os.kill(p, signal.SIGKILL)
print("forked", len(pids) > 0, file=sys.stderr)
' | tail -c 4`)
		if rep.Stdout != "xxx\n" || !strings.Contains(rep.Stderr, "forked True") {
			t.Errorf("fork bomb %d: %+v", i, rep)
		}
	}
	if rep := Exec(t, sess, "echo alive"); rep.Stdout != "alive\n" {
		t.Errorf("after the fork bombs: %+v", rep)
	}
}

// BenchTrivialCell runs `true` in the session's Bash worker b.N times and
// reports the median round trip.
func BenchTrivialCell(b *testing.B, sess *client.Session) {
	times := make([]float64, 0, b.N)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := sess.Exec(ctx, i+1, protocol.ExecArgs{Code: "true", TimeoutMS: 10000, MaxOutputBytes: 1 << 15}); err != nil {
			b.Fatal(err)
		}
		times = append(times, float64(time.Since(t0).Microseconds())/1000)
	}
	b.ReportMetric(Median(times), "median-ms")
}

// Median is the middle of xs (0 when empty).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// StartExecClose is one rollout's whole life in a sandbox of ex, for
// benchmarks running many at once: start, an empty working directory,
// Bash, one cell (whose output must be "ok\n"), close.
func StartExecClose(ctx context.Context, ex *sandbox.Executor, runID, rolloutID, code string) error {
	root := ex.Root("/tmp/rlmrun-"+runID, rolloutID)
	sess, _, err := ex.Start(ctx, backends.StartRequest{RunID: runID, RolloutID: rolloutID, Root: root, Language: "bash", StartupTimeout: 10 * time.Minute})
	if err != nil {
		return fmt.Errorf("%s: %w", rolloutID, err)
	}
	defer sess.Close(context.Background())
	empty, err := os.MkdirTemp("", "rlmrun-bench-")
	if err != nil {
		return err
	}
	defer os.Remove(empty)
	if err := sess.Init(ctx, protocol.InitArgs{Root: root, Language: "bash"}); err != nil {
		return fmt.Errorf("%s: init: %w", rolloutID, err)
	}
	if _, err := sess.Put(ctx, empty, protocol.PutArgs{}); err != nil {
		return fmt.Errorf("%s: put: %w", rolloutID, err)
	}
	if _, err := sess.Start(ctx); err != nil {
		return fmt.Errorf("%s: worker: %w", rolloutID, err)
	}
	rep, err := sess.Exec(ctx, 1, protocol.ExecArgs{Code: code, TimeoutMS: 60000, MaxOutputBytes: 1 << 10})
	if err != nil {
		return fmt.Errorf("%s: cell: %w", rolloutID, err)
	}
	if rep.Stdout != "ok\n" {
		return fmt.Errorf("%s: cell: %+v", rolloutID, rep)
	}
	return nil
}
