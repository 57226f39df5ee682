package docker

import (
	"bytes"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rlmrun/rlmrun/backends/procs"
)

// Init is the container's first process (`rlmrun sandbox-init`). It keeps the
// container alive for the agent exec'd into it, reaps orphans as PID 1 must,
// and exits — stopping the container, which Docker then removes — when the
// lifetime is over, when asked to stop, or when the agent it saw has gone:
// the agent ends when the runner's connection drops, so a killed runner
// leaves no running container behind.
func Init(lifetime, waitAgent time.Duration) int {
	// PID 1 must outlive a cell that uses up the pids limit: were it to die
	// for want of a thread, the container would go with the agent in it.
	procs.ReserveThreads(4)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	// Orphans (a cell's killed children) are reaped as they die, so their
	// pids are free again at once, not at the next tick.
	child := make(chan os.Signal, 1)
	signal.Notify(child, syscall.SIGCHLD)
	deadline := time.Now().Add(lifetime)
	// A runner killed before it could exec the agent leaves a container
	// nobody will use: it stops if no agent has come by then.
	agentBy := time.Now().Add(waitAgent)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	seen := false
	for {
		select {
		case <-sig:
			return 0
		case <-child:
			reap()
			continue
		case <-tick.C:
		}
		reap()
		n := agents()
		// An agent that came and went between two looks left its mark.
		if _, err := os.Stat(AgentMark); n > 0 || err == nil {
			seen = true
		}
		if (seen && n == 0) || time.Now().After(deadline) || (!seen && time.Now().After(agentBy)) {
			return 0
		}
	}
}

// reap collects every child that has exited, as PID 1 must.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

// AgentMark is created by the agent once it runs (agent --mark).
const AgentMark = "/tmp/.rlmrun-agent-started"

// agents counts the agent processes in the container.
func agents() int {
	n := 0
	matches, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		args := bytes.Split(b, []byte{0})
		if len(args) > 1 && string(args[1]) == "agent" {
			n++
		}
	}
	return n
}
