package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rlmrun/rlmrun/backends/local"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

// A model that leaves json.py in its working directory must not get it
// imported by a reward's `python3 -c "import json ..."`, and host commands
// must not see the runner's secrets unless the spec passes them.
func TestRewardDoesNotRunModelCode(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "pwned")
	t.Setenv("RLMRUN_TEST_API_KEY", "sk-secret")
	spec := loadSpec(t, fmt.Sprintf(`version: 1
name: reward-attack
rewards:
  - name: judge
    run:
      - /usr/bin/python3
      - -c
      - |
        import json, os, sys
        d = json.load(sys.stdin)
        w = os.environ["RLM_WORKDIR"]
        ok = "RLMRUN_TEST_API_KEY" not in os.environ and d["workdir"] == w and os.path.exists(os.path.join(w, "json.py"))
        print(1 if ok else 0)
  - name: passed_key
    pass_env: [RLMRUN_TEST_API_KEY]
    env: {EXTRA: "yes"}
    run: [/bin/sh, -c, 'test "$RLMRUN_TEST_API_KEY" = sk-secret && test "$EXTRA" = yes']
root_tools:
  - name: show_env
    run: [/bin/sh, -c, 'env | cut -d= -f1 | sort | tr "\n" " "']
rollouts:
  - id: r
    turns:
      - code: |
          printf 'open(%q, "w").write("pwned")\n' > json.py
          printf 'open(%q, "w").write("pwned")\n' > sitecustomize.py
          show_env
          export RLM_READY=1
    expect: {reward: 2}
`, marker, marker), nil)
	r := runSpec(t, spec).Results[0]
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a reward imported the model's json.py: model code ran on the host")
	}
	if !r.Passed {
		t.Errorf("rewards: %+v (expect %+v)", r.Rewards, r.Expect)
	}
	if len(r.Turns) != 1 || strings.Contains(r.Turns[0].Output, "RLMRUN_TEST_API_KEY") || !strings.Contains(r.Turns[0].Output, "RLM_TOOL_NAME") {
		t.Errorf("a tool's environment: %q", outputs(r))
	}
}

// A tool's timeout holds, and nothing a tool starts outlives it, even what
// left its process group (setsid) while holding the tool's stdout open.
func TestToolTreeEndsWithTool(t *testing.T) {
	leaves := fmt.Sprintf("rlmrun-leftover-%d", os.Getpid())
	hangs := fmt.Sprintf("rlmrun-hangs-%d", os.Getpid())
	spec := loadSpec(t, fmt.Sprintf(`version: 1
name: tool-tree
repl: {code_execution_timeout: 60s}
root_tools:
  - name: leaves_child
    run: [/bin/bash, -c, 'echo done; setsid bash -c "exec -a %s sleep 1000" & exit 0']
  - name: hangs
    timeout: 2s
    run: [/bin/bash, -c, 'setsid bash -c "exec -a %s sleep 1000" & sleep 1000']
rollouts:
  - id: r
    turns:
      - code: leaves_child
      - code: hangs
`, leaves, hangs), nil)
	r := runSpec(t, spec).Results[0]
	checkOutputs(t, r, []string{"done\n", "Error: tool hangs timed out after 2s\n"})
	for _, name := range []string{leaves, hangs} {
		if left := testbin.Procs(name); len(left) > 0 {
			t.Errorf("%s outlived its tool: pids %v", name, left)
		}
	}
}

// escapes are cells that start processes which leave the worker's process
// group and session, each under a name of its own.
func escapes(tag string) []string {
	return []string{
		fmt.Sprintf(`setsid bash -c 'exec -a %s-setsid sleep 1000' &`, tag),
		fmt.Sprintf(`setsid -f bash -c 'exec -a %s-setsid-f sleep 1000'`, tag),
		fmt.Sprintf(`/usr/bin/python3 -c '
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("bash", ["bash", "-c", "exec -a %s-doublefork sleep 1000"])
    os._exit(0)
'`, tag),
		fmt.Sprintf(`/usr/bin/python3 -c '
import subprocess
subprocess.Popen(["bash", "-c", "exec -a %s-popen sleep 1000"], start_new_session=True)
'`, tag),
	}
}

func escaped(tag string) map[string][]string {
	left := map[string][]string{}
	for _, kind := range []string{"setsid", "setsid-f", "doublefork", "popen"} {
		if pids := testbin.Procs(tag + "-" + kind); len(pids) > 0 {
			left[kind] = pids
		}
	}
	return left
}

// Everything a rollout started ends with it on the local backend, and with
// a worker restart, however it left the worker's process group.
func TestLocalProcessesEndWithRollout(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts local.Options
	}{{"pid-namespace", local.Options{}}, {"subreaper", local.Options{NoNamespaces: true}}} {
		t.Run(mode.name, func(t *testing.T) {
			tag := fmt.Sprintf("rlmrun-escape-%d-%s", os.Getpid(), mode.name)
			var cells strings.Builder
			for _, c := range escapes(tag) {
				fmt.Fprintf(&cells, "      - code: %q\n", c)
			}
			spec := loadSpec(t, fmt.Sprintf(`version: 1
name: escape
repl: {code_execution_timeout: 3s}
rollouts:
  - id: restart
    turns:
%s      - code: "sleep 60"
      - code: "grep -las '^%s-' /proc/[0-9]*/cmdline | wc -l"
  - id: end
    turns:
%s`, cells.String(), tag, cells.String()), nil)
			spec.Rollouts[1].Turns = spec.Rollouts[1].Turns[:4]
			opts := mode.opts
			opts.AgentPath = agentBin
			backend, err := local.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Run(context.Background(), Options{Spec: spec, Backend: backend, OutDir: t.TempDir(), TempDir: t.TempDir(), Concurrency: 1})
			if err != nil {
				t.Fatal(err)
			}
			r := find(t, rep, "restart")
			if n := len(r.Turns); n != 6 || r.Turns[4].Event != "timeout" || r.Turns[5].Output != "0\n" {
				t.Fatalf("restart rollout: %q", outputs(r))
			}
			if c := r.Volatile.Facts.Containment; c != map[bool]string{true: "process-group", false: "pid-namespace"}[mode.opts.NoNamespaces] {
				t.Errorf("containment %q", c)
			}
			if left := escaped(tag); len(left) > 0 {
				t.Fatalf("processes outlived their rollout: %v", left)
			}
		})
	}
}

// BenchmarkTunnelAttackMemory is one bubblewrap sandbox (memory_gb 0.5)
// holding 64 tool requests that declare 15 MB bodies and send 14 MB of
// each, while another rollout calls its tools: it reports the runner's
// peak RSS (target: under 300 MB) and checks the other rollout finished.
func BenchmarkTunnelAttackMemory(b *testing.B) {
	spec := loadSpec(b, `version: 1
name: tunnel-attack
backend: {type: sandbox, sandbox: {memory_gb: 0.5}}
repl: {code_execution_timeout: 60s}
root_tools:
  - name: ping
    run: [/bin/echo, pong]
rollouts:
  - id: attacker
    turns:
      - code: |
          /usr/bin/python3 - <<'EOF'
          import os, socket, threading, time, urllib.parse
          u = urllib.parse.urlsplit(os.environ["RLM_ROOT_TOOL_URL"])
          chunk = b"x" * (1 << 20)
          def hold():
              try:
                  s = socket.create_connection((u.hostname, u.port))
                  s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 15000000\r\n\r\n" % (u.path, os.environ["RLM_SECRET"])).encode())
                  for _ in range(14):
                      s.sendall(chunk)
                  time.sleep(20)
              except OSError:
                  pass
          ts = [threading.Thread(target=hold) for _ in range(64)]
          [t.start() for t in ts]
          [t.join() for t in ts]
          EOF
  - id: victim
    turns:
      - code: "sleep 5; for i in $(seq 1 20); do ping >/dev/null; done"
      - code: "test $(ping) = pong && export RLM_CONTENT=done RLM_READY=1"
`, nil)
	ex, _, _ := newBwrap(b, spec)
	for i := 0; i < b.N; i++ {
		rep := runSpec(b, spec, func(o *Options) { o.Backend = ex; o.Concurrency = 2 })
		if v := find(b, rep, "victim"); v.Status != StatusCompleted || v.Answer != "done" {
			b.Fatalf("the other rollout: %s %q %s", v.Status, v.Answer, v.Error)
		}
	}
	b.ReportMetric(float64(peakRSS(b))/(1<<20), "peak-rss-MB")
}

// peakRSS is this process's peak resident set (VmHWM).
func peakRSS(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}
