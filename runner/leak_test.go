package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/backends/sandbox/bwrap"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// openFDs lists this process's open descriptors with what they point at.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the descriptor ReadDir itself used
		}
		out[e.Name()] = target
	}
	return out
}

// children lists the processes whose parent is this one, zombies included.
func children() []string {
	self := strconv.Itoa(os.Getpid())
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == self {
			out = append(out, d.Name()+" "+s[:strings.LastIndexByte(s, ')')+1])
		}
	}
	return out
}

// settle waits for cond, polling: goroutines and descriptors of finished
// work are released asynchronously (a connection's reader sees EOF a little
// after Close). It bounds waiting for something that must happen, not speed.
func settle(cond func() bool) bool { return testbin.Within(5*time.Second, cond) }

const leakSpec = `version: 1
name: leaks
repl: {code_execution_timeout: 2s}
sub_llm: {stagger_ms: 0, stagger_jitter_ms: 0, replies: [{match: ".", reply: '\boxed{ok}'}]}
root_tools:
  - name: probe
    run: [tools/probe.sh]
rollouts:
  - id: work
    repeat: 3
    turns:
      - code: "probe x; llm_batch a b c"
      - code: "(exec -a %[1]s sleep 1000 &) ; sleep 1000 & echo started"
      - code: "export RLM_CONTENT=done RLM_READY=1"
  - id: timeout
    turns:
      - code: "exec -a %[1]s sleep 1000"
  - id: agent-dies
    turns:
      - code: "kill -9 $PPID"
`

// TestNoLeaks runs rollouts that call tools, the sub-LLM, leave background
// processes, time out and lose their agent, on the local backend and in
// bubblewrap: afterwards no descriptor, goroutine or process of the run may
// be left.
func TestNoLeaks(t *testing.T) {
	for _, be := range []string{"local", "bwrap"} {
		t.Run(be, func(t *testing.T) {
			marker := fmt.Sprintf("rlmrun-leak-%d-%s", os.Getpid(), be)
			spec := loadSpec(t, fmt.Sprintf(leakSpec, marker), map[string]string{"tools/probe.sh": toolFiles["tools/probe.sh"]})
			tmp, err := os.MkdirTemp("/tmp", "rlmrun-test-tmp-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(tmp)
			_ = os.Chmod(tmp, 0o711)
			out := t.TempDir()

			runtime.GC()
			fds0, g0 := openFDs(t), runtime.NumGoroutine()

			var backend Backend
			closeBackend := func() {}
			state := ""
			if be == "local" {
				backend, err = local.New(local.Options{AgentPath: agentBin})
				if err != nil {
					t.Fatal(err)
				}
			} else {
				var p *bwrap.Provider
				backend, p, state = newBwrap(t, spec)
				spec.Backend.Type = "sandbox"
				closeBackend = func() { _ = p.Close() }
			}
			rep, err := Run(context.Background(), Options{Spec: spec, Backend: backend, OutDir: out, TempDir: tmp, Concurrency: 3})
			closeBackend()
			if err != nil {
				t.Fatal(err)
			}
			statuses := map[string]string{}
			for _, r := range rep.Results {
				statuses[r.ID] = r.Status
			}
			want := map[string]string{"work#1": "completed", "work#2": "completed", "work#3": "completed", "timeout": "completed", "agent-dies": "error"}
			if be == "local" {
				// The local agent leads its own PID namespace: a cell cannot
				// kill it (the kernel protects a namespace's first process).
				want["agent-dies"] = "completed"
			}
			if fmt.Sprint(statuses) != fmt.Sprint(want) {
				t.Errorf("statuses %v, want %v", statuses, want)
			}

			if !settle(func() bool { return len(children()) == 0 }) {
				t.Errorf("child processes left: %v", children())
			}
			if !settle(func() bool { return len(testbin.Procs(marker)) == 0 }) {
				t.Errorf("cell processes left: %v", testbin.Procs(marker))
			}
			if !settle(func() bool { return runtime.NumGoroutine() <= g0 }) {
				buf := make([]byte, 1<<20)
				t.Errorf("goroutines: %d before, %d after:\n%s", g0, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
			}
			var extra []string
			settle(func() bool {
				extra = extra[:0]
				for fd, target := range openFDs(t) {
					if _, ok := fds0[fd]; !ok {
						extra = append(extra, fd+" -> "+target)
					}
				}
				return len(extra) == 0
			})
			if len(extra) > 0 {
				t.Errorf("descriptors left open: %v", extra)
			}
			if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
				t.Errorf("temp files left: %v", entries)
			}
			if entries, _ := os.ReadDir(state); len(entries) > 0 {
				// The provider's state root may hold its (empty) bookkeeping
				// folder, never a sandbox.
				for _, e := range entries {
					if sub, _ := os.ReadDir(filepath.Join(state, e.Name())); len(sub) > 0 || strings.HasPrefix(e.Name(), "rlmrun-") {
						t.Errorf("sandbox state left: %s %v", e.Name(), sub)
					}
				}
			}
		})
	}
}
