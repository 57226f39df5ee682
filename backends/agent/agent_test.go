package agent_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/backends/agent"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/protocol"
	rlmfs "github.com/rlmrun/rlmrun/fs"
)

// TestAgentInProcess runs the agent in this process over a pipe, so the race
// detector sees its code, and walks a rollout's whole protocol.
func TestAgentInProcess(t *testing.T) {
	runnerEnd, agentEnd := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(context.Background(), agent.Options{Conn: agentEnd, Language: "bash"})
	}()
	sess, err := client.New(client.Options{Conn: runnerEnd})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := sess.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "r")
	stage := t.TempDir()
	if err := os.WriteFile(filepath.Join(stage, "in.txt"), []byte("input"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sess.Init(ctx, protocol.InitArgs{Root: root, Language: "bash", Env: map[string]string{"GREETING": "hi"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Put(ctx, stage, protocol.PutArgs{MaxBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Start(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := sess.Exec(ctx, 1, protocol.ExecArgs{Code: "cat in.txt; echo \" $GREETING\" > out.txt; export RLM_CONTENT=x", TimeoutMS: 5000, MaxOutputBytes: 100})
	if err != nil || rep.Stdout != "input" || rep.Answer.Content != "x" {
		t.Fatalf("exec = %+v, %v", rep, err)
	}
	// A cancelled cell is stopped in the agent and the control stream stays usable.
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = sess.Exec(cctx, 2, protocol.ExecArgs{Code: "sleep 30", TimeoutMS: 60000, MaxOutputBytes: 100})
	cancel()
	if err == nil {
		t.Fatal("cancelled exec returned no error")
	}
	if err := sess.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = sess.Exec(ctx, 3, protocol.ExecArgs{Code: "cat out.txt", TimeoutMS: 5000, MaxOutputBytes: 100})
	if err != nil || rep.Stdout != " hi\n" || rep.Seq != 3 {
		t.Fatalf("exec after cancel = %+v, %v", rep, err)
	}
	back := t.TempDir()
	if _, err := sess.Get(ctx, back, client.GetOptions{Limits: rlmfs.Limits{MaxBytes: 1 << 20, MaxFiles: 10}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(back, "out.txt")); string(b) != " hi\n" {
		t.Fatalf("downloaded out.txt = %q", b)
	}
	if err := sess.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not exit after shutdown")
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("agent left %s behind", root)
	}
}
