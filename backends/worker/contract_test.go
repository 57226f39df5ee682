package worker

import (
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// TestPythonWorkerFollowsTheContract holds the embedded Python worker to
// package wire: the environment it reads, the JSON it sends and reads back,
// the default timeout. The Go ends use wire's definitions directly; the
// Python end is text, so it is checked here.
func TestPythonWorkerFollowsTheContract(t *testing.T) {
	src := string(pythonWorker)
	quoted := func(s string) bool { return strings.Contains(src, strconv.Quote(s)) }
	for _, env := range []string{wire.EnvRootToolURL, wire.EnvSecret, wire.EnvToolTimeoutMS} {
		if !quoted(env) {
			t.Errorf("the Python worker does not read %s", env)
		}
	}
	// Every RLM_ name it uses is the contract's (or its own boot variable).
	known := map[string]bool{"RLM_WORKER_SCRIPT": true}
	for _, env := range []string{wire.EnvRootToolURL, wire.EnvInterceptionURL, wire.EnvSecret, wire.EnvToolTimeoutMS, wire.EnvRootToolNames, wire.EnvWorkdir} {
		known[env] = true
	}
	for _, m := range regexp.MustCompile(`RLM_[A-Z_]+`).FindAllString(src, -1) {
		if !known[m] {
			t.Errorf("the Python worker uses %s, which package wire does not define", m)
		}
	}
	// The JSON fields of a tool call and its answer.
	for _, v := range []any{wire.ToolRequest{}, wire.ToolResponse{}} {
		rt := reflect.TypeOf(v)
		for i := 0; i < rt.NumField(); i++ {
			name, opts, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if rt == reflect.TypeOf(wire.ToolRequest{}) && strings.Contains(opts, "omitempty") {
				continue // optional in a request: the worker need not send it
			}
			if !quoted(name) {
				t.Errorf("the Python worker does not use the %s field %q", rt.Name(), name)
			}
		}
	}
	def := strconv.FormatInt(wire.DefaultToolTimeout.Milliseconds(), 10)
	if !strings.Contains(src, `os.environ.get("`+wire.EnvToolTimeoutMS+`", "`+def+`")`) {
		t.Errorf("the Python worker's default tool timeout is not %s ms", def)
	}
	if !strings.Contains(src, `"Authorization": "Bearer " + secret`) {
		t.Error("the Python worker does not send the rollout's secret as a bearer token")
	}
}
