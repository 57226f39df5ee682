package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/client"
	"github.com/rlmrun/rlmrun/backends/protocol"
	rlmfs "github.com/rlmrun/rlmrun/fs"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/subllm"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// cleanupTimeout bounds what a rollout does after its context ended:
// shutting down its agent, syncing back, deleting its sandbox.
const cleanupTimeout = 30 * time.Second

// rollout is one rollout's life.
type rollout struct {
	env     *runEnv
	index   int
	inst    schema.Instance
	way     *wayOut
	data    map[string]any // template data
	root    string         // the rollout's directory as the agent sees it
	staging *rlmfs.Staging
	sess    *client.Session
	seq     int
	res     *Result
	answer  protocol.Answer // last answer the REPL reported
	// answerFinal says answer is the model's final answer in words: the
	// REPL's answer no longer counts.
	answerFinal bool
	alive       bool // a worker is running
	replTime    time.Duration
	// rootStats count the root model's requests and tokens.
	rootStats struct{ turns, promptTokens, completionTokens int }
}

func (env *runEnv) runRollout(ctx context.Context, index int, inst schema.Instance) *Result {
	start := time.Now()
	ro := &rollout{
		env:   env,
		index: index,
		inst:  inst,
		data:  rolloutData(inst),
		root:  env.backend.Root(env.runDir, inst.ID),
		res: &Result{
			ID:      inst.ID,
			Rollout: inst.Rollout.ID,
			Repeat:  inst.RepeatIndex,
			Prompt:  inst.Rollout.Prompt,
			Turns:   []Turn{},
			Volatile: Volatile{
				RunID:       env.runID,
				StartedAt:   start.UTC(),
				Environment: env.environment,
			},
		},
	}
	ro.run(ctx)
	if ctx.Err() != nil && ro.res.Status == StatusError {
		// Interrupted: the run stopped, not the rollout; --resume runs it
		// again.
		ro.res.Volatile.InfraError = true
	}
	ro.res.Volatile.Seconds = time.Since(start).Seconds()
	ro.normalize()
	return ro.res
}

func (ro *rollout) fail(format string, args ...any) {
	if ro.res.Status == "" || ro.res.Status == StatusCompleted {
		ro.res.Status = StatusError
	}
	msg := fmt.Sprintf(format, args...)
	if ro.res.Error == "" {
		ro.res.Error = msg
	} else {
		ro.res.Error += "; " + msg
	}
}

func (ro *rollout) warn(format string, args ...any) {
	ro.res.Volatile.Warnings = append(ro.res.Volatile.Warnings, fmt.Sprintf(format, args...))
}

func (ro *rollout) run(ctx context.Context) {
	t0 := time.Now()
	way, err := ro.env.newWayOut(ro.index, ro.inst, ro.data)
	if err != nil {
		ro.fail("sub-LLM replies: %v", err)
		ro.stop(StopError)
		ro.finish()
		return
	}
	ro.way = way
	defer way.close()
	if err := ro.stage(); err != nil {
		ro.fail("stage: %v", err)
		ro.stop(StopError)
		ro.finish()
		return
	}
	ro.res.Volatile.StageMS = msSince(t0)
	p, err := ro.player()
	if err != nil {
		ro.fail("%v", err)
		ro.stop(StopError)
		ro.finish()
		return
	}
	ro.play(ctx, p)
	ro.finish()
}

// stage builds the staging directory: context, then the spec's and the
// rollout's mutations, in order.
func (ro *rollout) stage() error {
	spec := ro.env.spec
	st, err := rlmfs.New(rlmfs.Options{Dir: filepath.Join(ro.env.runDir, ".staging", ro.inst.ID), SourceDir: spec.Dir, MaxBytes: spec.Filesystem.CopyMaxBytes})
	if err != nil {
		return err
	}
	ro.staging = st
	fsys := spec.Filesystem
	if fsys.ContextDir != "" {
		src := fsys.ContextDir
		if !filepath.IsAbs(src) {
			src = filepath.Join(spec.Dir, src)
		}
		if err := st.CopyContextDir(src); err != nil {
			return err
		}
	} else if fsys.HasContext {
		if err := st.WriteContext(fsys.Context); err != nil {
			return err
		}
	}
	all := append(append([]schema.Mutation{}, fsys.Mutations...), ro.inst.Rollout.Mutations...)
	ms, err := mutations(all, ro.data)
	if err != nil {
		return err
	}
	for i, m := range ms {
		if err := st.Apply(m); err != nil {
			return fmt.Errorf("%s: %w", all[i].Path, err)
		}
	}
	return nil
}

// startAgent is the deferred setup: freeze the staging directory, get an
// agent from the backend, upload the directory and start the worker.
func (ro *rollout) startAgent(ctx context.Context) error {
	spec := ro.env.spec
	ro.staging.Freeze()
	t0 := time.Now()
	sctx, cancel := context.WithTimeout(ctx, spec.REPL.StartupTimeout.Duration)
	defer cancel()
	sess, facts, err := ro.env.backend.Start(sctx, backends.StartRequest{
		RunID:          ro.env.runID,
		RolloutID:      ro.inst.ID,
		Root:           ro.root,
		Language:       spec.REPL.Language,
		Python:         spec.REPL.Python,
		StartupTimeout: spec.REPL.StartupTimeout.Duration,
	})
	if err != nil {
		return startErr(sctx, ctx, spec.REPL.StartupTimeout.Duration, err)
	}
	ro.sess = sess
	go func() { _ = ro.env.server.Serve(sess.Listener()) }()
	ro.res.Volatile.Facts = facts
	ro.res.Volatile.StartMS = msSince(t0)
	ro.res.Volatile.Workdir = filepath.Join(ro.root, "work")
	meta, err := rlmfs.Measure(ro.staging.Dir())
	if err != nil {
		return err
	}
	args := ro.initArgs()
	args.FS = meta
	if err := sess.Init(sctx, args); err != nil {
		return startErr(sctx, ctx, spec.REPL.StartupTimeout.Duration, err)
	}
	// The upload and the worker's start-up run side by side.
	upload := make(chan error, 1)
	go func() {
		t1 := time.Now()
		_, err := sess.Put(sctx, ro.staging.Dir(), protocol.PutArgs{MaxBytes: spec.Filesystem.CopyMaxBytes + 64<<20})
		ro.res.Volatile.UploadMS = msSince(t1)
		upload <- err
	}()
	d, startErrV := sess.Start(sctx)
	if err := <-upload; err != nil {
		return startErr(sctx, ctx, spec.REPL.StartupTimeout.Duration, fmt.Errorf("upload working directory: %w", err))
	}
	if startErrV != nil {
		return startErr(sctx, ctx, spec.REPL.StartupTimeout.Duration, startErrV)
	}
	ro.res.Volatile.WorkerMS = float64(d.Microseconds()) / 1000
	ro.alive = true
	return nil
}

func startErr(sctx, ctx context.Context, timeout time.Duration, err error) error {
	if ctx.Err() == nil && errors.Is(sctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("not ready within startup_timeout (%s): %w", timeout, err)
	}
	return err
}

// initArgs describe the worker the rollout needs.
func (ro *rollout) initArgs() protocol.InitArgs {
	spec := ro.env.spec
	env := map[string]string{}
	for k, v := range spec.Backend.Sandbox.Env {
		env[k] = v
	}
	return protocol.InitArgs{
		Root:     ro.root,
		Language: spec.REPL.Language,
		Python:   spec.REPL.Python,
		Env:      env,
		Tools:    ro.way.toolInfos(),
		// Through the tunnel, unless the worker calls interception_url.
		Tunnel:        ro.env.interceptionURL == "",
		BaseURL:       ro.env.interceptionURL,
		RolloutKey:    ro.way.key,
		Secret:        ro.way.secret,
		ToolTimeoutMS: wire.WorkerToolTimeout(spec.REPL.CodeExecutionTimeout.Duration).Milliseconds(),
	}
}

// turn runs one cell and records it. It returns what the cell showed the
// model, and why the rollout stops ("" when it goes on).
func (ro *rollout) turn(ctx context.Context, c cell) (shownCell, string) {
	spec := ro.env.spec
	timeout := spec.REPL.CodeExecutionTimeout.Duration
	turn := Turn{Code: c.code}
	if c.timeout > 0 && c.timeout < timeout {
		timeout = c.timeout
		turn.Timeout = timeout.String()
	}
	maxLen := spec.REPL.MaxOutputLength
	python := spec.REPL.Language == "python"
	ro.seq++
	seq := ro.seq
	t0 := time.Now()
	rep, err := ro.sess.Exec(ctx, seq, protocol.ExecArgs{
		Code:             c.code,
		TimeoutMS:        timeout.Milliseconds(),
		MaxOutputBytes:   captureBytes(maxLen),
		RestartOnFailure: !spec.REPL.AbortOnCodeTimeout,
	})
	elapsed := time.Since(t0)
	ro.replTime += elapsed
	ro.res.Volatile.TurnSeconds = append(ro.res.Volatile.TurnSeconds, elapsed.Seconds())
	timeLine := ""
	if python {
		timeLine = executionTimeLine(elapsed)
		ro.res.Volatile.ExecutionTimes = append(ro.res.Volatile.ExecutionTimes, timeLine)
	}
	// record keeps the turn; the model sees its output and, in Python,
	// the execution-time line the transcript keeps apart.
	record := func(stop string) (shownCell, string) {
		ro.res.Turns = append(ro.res.Turns, turn)
		shown := shownCell{output: turn.Output}
		if timeLine != "" {
			shown.output += "\n" + timeLine
		}
		return shown, stop
	}
	if err != nil {
		if ctx.Err() != nil {
			ro.fail("interrupted during turn %d", len(ro.res.Turns))
		} else {
			ro.fail("turn %d: %v", len(ro.res.Turns), err)
			ro.res.Volatile.InfraError = errors.Is(err, client.ErrAgentGone)
		}
		ro.alive = false
		turn.Event = "error"
		return record(StopError)
	}
	format := func(note string) string {
		if python {
			return formatPython(rep, note, maxLen)
		}
		return formatBash(rep, note, maxLen)
	}
	switch rep.Status {
	case protocol.StatusTimeout:
		turn.Event = "timeout"
		ro.alive = rep.Restarted
		if spec.REPL.AbortOnCodeTimeout {
			turn.Output = timeoutMessage(timeout, false, "")
			return record(StopTimeout)
		}
		turn.Output = truncate(timeoutMessage(timeout, rep.Restarted, rep.RestartError), maxLen, false)
		if !rep.Restarted {
			ro.fail("turn %d timed out and the worker could not be restarted: %s", len(ro.res.Turns), rep.RestartError)
			return record(StopError)
		}
		return record("")
	case protocol.StatusCrashed:
		turn.Event = "crashed"
		ro.alive = rep.Restarted
		turn.Output = ro.way.unmask(format(crashMessage(rep)))
		if !rep.Restarted {
			ro.fail("the worker exited in turn %d and could not be restarted: %s", len(ro.res.Turns), rep.RestartError)
			return record(StopError)
		}
		return record("")
	}
	if rep.Seq != seq {
		turn.Event = "desync"
		turn.Output = desyncMessage(seq, rep.Seq)
		return record("")
	}
	turn.Output = ro.way.unmask(format(""))
	if !python {
		ec := rep.ExitCode
		turn.ExitCode = &ec
	}
	ro.answer = rep.Answer
	if rep.Answer.Ready {
		return record(StopAnswerReady)
	}
	return record("")
}

// finish reads the answer, syncs the working directory back, ends the agent,
// scores the rollout and keeps or drops its files. It runs whatever happened
// before, with its own deadlines: an interrupted rollout still cleans up.
func (ro *rollout) finish() {
	synced := true
	if ro.sess != nil {
		synced = ro.endAgent()
	}
	ro.res.Answer = ro.answer.Content
	ro.res.AnswerReady = ro.answer.Ready
	ro.res.AnswerTruncated = ro.answer.Truncated
	ro.res.FinalAnswer = ro.answerFinal
	ro.metrics()
	if ro.way != nil {
		ro.res.Calls = ro.way.takeCalls()
	}
	if ro.staging != nil && synced {
		ro.score(ro.staging.Dir())
	}
	ro.checkExpectations()
	ro.retain(synced)
	ro.res.Passed = ro.res.Status != StatusError
	if e := ro.inst.Rollout.Expect; e != nil && e.Status != nil {
		ro.res.Passed = true // the expected status is checked with the rest
	}
	for _, e := range ro.res.Expect {
		if !e.Met {
			ro.res.Passed = false
		}
	}
}

// Sync-back's limits. The time allowed grows with what the spec lets a
// rollout leave behind: disk_size_gb, and syncMaxFiles entries of at least
// syncPerFile bytes, at syncRate; a transfer that stops moving for
// syncStall fails sooner.
const (
	syncMaxFiles = 1_000_000
	syncPerFile  = 1 << 10
	syncRate     = 8 << 20 // bytes per second
	syncBase     = time.Minute
	syncStall    = time.Minute
	answerWait   = 30 * time.Second
)

// syncPolicy is a rollout's sync-back limits, and how to explain them.
type syncPolicy struct {
	limits  rlmfs.Limits
	total   time.Duration
	diskGB  float64
	maxFile int
}

func newSyncPolicy(spec *schema.Spec) syncPolicy {
	p := syncPolicy{limits: rlmfs.Limits{MaxBytes: syncBackMaxBytes(spec), MaxFiles: syncMaxFiles}, diskGB: spec.Backend.Sandbox.DiskSizeGB, maxFile: syncMaxFiles}
	bytes := p.limits.MaxBytes + int64(p.limits.MaxFiles)*syncPerFile
	p.total = syncBase + time.Duration(float64(bytes)/syncRate*float64(time.Second)).Round(time.Second)
	return p
}

// explain says which limit a failed sync-back hit.
func (p syncPolicy) explain(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("it did not finish within %s, the time allowed for disk_size_gb %g and %d files", p.total, p.diskGB, p.maxFile)
	case errors.Is(err, client.ErrStalled):
		return fmt.Sprintf("it stalled: %v", err)
	case errors.Is(err, rlmfs.ErrTooLarge):
		return fmt.Sprintf("%v (the limits: disk_size_gb %g, %d files and directories)", err, p.diskGB, p.maxFile)
	}
	return err.Error()
}

// endAgent reads the final answer, downloads the working directory into
// the staging directory, and ends the agent. A failed download is an error
// (scoring stale files would be wrong), and ends the agent at once.
func (ro *rollout) endAgent() (synced bool) {
	if ro.alive && !ro.answerFinal {
		ctx, cancel := context.WithTimeout(context.Background(), answerWait)
		if ans, err := ro.sess.Answer(ctx); err == nil {
			ro.answer = ans
		} else {
			ro.warn("read the final answer: %v", err)
		}
		cancel()
	}
	policy := newSyncPolicy(ro.env.spec)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), policy.total)
	st, err := ro.sess.Get(ctx, ro.staging.Dir(), client.GetOptions{Limits: policy.limits, Stall: syncStall})
	cancel()
	ro.res.Volatile.DownloadMS = msSince(t0)
	ro.res.Skipped = boundList(st.Skipped, 100)
	synced = err == nil
	if !synced {
		ro.fail("sync the working directory back: %s", policy.explain(err))
	}
	ctx, cancel = context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	end := ro.sess.Close
	if !synced {
		end = ro.sess.Abort
	}
	if err := end(ctx); err != nil {
		ro.warn("end the agent: %v", err)
	}
	ro.sess = nil
	return synced
}

// boundList keeps the first n entries and says how many more there were.
func boundList(list []string, n int) []string {
	if len(list) <= n {
		return list
	}
	return append(append([]string(nil), list[:n]...), fmt.Sprintf("... and %d more", len(list)-n))
}

// syncBackMaxBytes bounds what a rollout may bring back: its disk allowance.
func syncBackMaxBytes(spec *schema.Spec) int64 {
	return int64(spec.Backend.Sandbox.DiskSizeGB * (1 << 30))
}

func (ro *rollout) metrics() {
	n := len(ro.res.Turns)
	ro.res.Metrics = map[string]any{
		"main_rlm_turns":             n,
		"repl_call_count":            n,
		"root_llm_turns":             ro.rootStats.turns,
		"root_llm_prompt_tokens":     ro.rootStats.promptTokens,
		"root_llm_completion_tokens": ro.rootStats.completionTokens,
	}
	mean := 0.0
	if n > 0 {
		mean = ro.replTime.Seconds() / float64(n)
	}
	ro.res.Volatile.Metrics = map[string]any{
		"repl_total_time_seconds": ro.replTime.Seconds(),
		"repl_mean_time_seconds":  mean,
	}
	if ro.way != nil {
		ro.way.fill(ro.res.Metrics, ro.res.Volatile.Metrics)
	}
}

// retain keeps the final working directory under the results directory, or
// removes it. A directory whose sync-back failed is not the rollout's final
// one: it is not kept as if it were.
func (ro *rollout) retain(synced bool) {
	if ro.staging == nil {
		return
	}
	dir := ro.staging.Dir()
	if ro.env.spec.Retention.Filesystem && !synced {
		ro.warn("the working directory is not retained: its sync-back failed")
	}
	if !ro.env.spec.Retention.Filesystem || !synced {
		if err := os.RemoveAll(dir); err != nil {
			ro.warn("remove staging directory: %v", err)
		}
		return
	}
	dst := filepath.Join(ro.env.outDir, ro.inst.ID)
	if err := moveDir(dir, dst); err != nil {
		ro.fail("retain the working directory: %v", err)
		return
	}
	ro.res.Volatile.RetainedDir = dst
}

// moveDir renames src to dst, copying when they are on different filesystems.
func moveDir(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	if err := copyTree(src, dst); err != nil {
		return err
	}
	return os.RemoveAll(src)
}

// Placeholders of the recorded transcript.
const (
	// RolloutPlaceholder stands for the rollout's own directory (its
	// working directory is RolloutPlaceholder + "/work").
	RolloutPlaceholder = "<rollout>"
	// RunPlaceholder stands for the run's directory.
	RunPlaceholder = "<run>"
)

// normalize makes the recorded transcript independent of where the run
// happened and of the rollout's name: the rollout's directory appears as
// "<rollout>" and the run's as "<run>", whether on this machine's temp
// directory or in a sandbox's /tmp. (A replay renames repeated rollouts;
// its transcript stays the same.)
func (ro *rollout) normalize() {
	inside := filepath.Dir(ro.root)
	repl := func(s string) string {
		s = replacePath(s, ro.root, RolloutPlaceholder)
		s = strings.ReplaceAll(s, ro.env.runDir, RunPlaceholder)
		return strings.ReplaceAll(s, inside, RunPlaceholder)
	}
	for i := range ro.res.Turns {
		ro.res.Turns[i].Output = repl(ro.res.Turns[i].Output)
	}
	ro.res.Answer = repl(ro.res.Answer)
	ro.res.Error = repl(ro.res.Error)
	for i := range ro.res.Skipped {
		ro.res.Skipped[i] = repl(ro.res.Skipped[i])
	}
	for i := range ro.res.Calls {
		normalizeCall(&ro.res.Calls[i], repl)
	}
}

// replacePath replaces the path p in s where it is whole: not where it
// is the start of a longer name (the directory of rollout "a" in that of
// "ab").
func replacePath(s, p, with string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, p)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		rest := s[i+len(p):]
		if rest != "" && isNameByte(rest[0]) {
			b.WriteString(p)
		} else {
			b.WriteString(with)
		}
		s = rest
	}
}

func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '#'
}

// normalizeCall applies repl to every string a call carries. The root
// conversation (Result.Messages) is left as it was sent; the calls are
// what a digest of a scripted run compares.
func normalizeCall(c *Call, repl func(string) string) {
	c.Prompt, c.Reply, c.Error = repl(c.Prompt), repl(c.Reply), repl(c.Error)
	c.Result = normalizeValue(c.Result, repl)
	for i, a := range c.Args {
		c.Args[i] = normalizeValue(a, repl)
	}
	for k, v := range c.Kwargs {
		c.Kwargs[k] = normalizeValue(v, repl)
	}
	if len(c.Messages) > 0 {
		msgs := make([]subllm.Message, len(c.Messages))
		for i, m := range c.Messages {
			n := m
			n.Content = repl(m.Content)
			n.ToolCalls = nil
			for _, tc := range m.ToolCalls {
				tc.Function.Arguments = repl(tc.Function.Arguments)
				n.ToolCalls = append(n.ToolCalls, tc)
			}
			if n.Content != m.Content || !equalCalls(n.ToolCalls, m.ToolCalls) {
				n.Raw = nil // the raw message no longer says the same
			}
			msgs[i] = n
		}
		c.Messages = msgs
	}
}

func equalCalls(a, b []subllm.ToolCall) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// normalizeValue applies repl to the strings inside a JSON value.
func normalizeValue(v any, repl func(string) string) any {
	switch x := v.(type) {
	case string:
		return repl(x)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalizeValue(e, repl)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = normalizeValue(e, repl)
		}
		return out
	}
	return v
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// copyTree copies a directory tree by streaming it through the same tar
// packer and safe extractor that move files to and from agents.
func copyTree(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := rlmfs.Pack(context.Background(), src, pw)
		pw.CloseWithError(err)
	}()
	_, err := rlmfs.Unpack(context.Background(), pr, dst, rlmfs.Limits{})
	pr.CloseWithError(err)
	return err
}
