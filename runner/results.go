package runner

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-multierror"

	"github.com/rlmrun/rlmrun/backends"
	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/subllm"
)

// Rollout statuses.
const (
	StatusCompleted     = "completed"      // the rollout ended: answer ready, final answer, the script or the model done
	StatusMaxIterations = "max_iterations" // max_iterations turns ran without a ready answer
	StatusTimeout       = "timeout"        // a cell timed out with abort_on_code_timeout
	StatusError         = "error"          // the rollout could not run to its end
	StatusBudget        = "budget"         // the model used more than max_tokens_per_rollout
	StatusContextLength = "context_length" // the conversation outgrew the model's context
)

// Why a rollout stopped.
const (
	StopAnswerReady   = "answer_ready"   // the REPL's answer became ready
	StopMaxIterations = "max_iterations" // the turns ran out
	StopNoToolCalls   = "no_tool_calls"  // tools format: a reply without a tool call
	StopFinalAnswer   = "final_answer"   // ipython format: a reply without a tool call is the answer
	StopBudget        = "budget"         // max_tokens_per_rollout
	StopContextLength = "context_length" // the model's context is full
	StopEndOfScript   = "end_of_script"  // a script's turns are done
	StopTimeout       = "timeout"        // a cell timed out (abort_on_code_timeout)
	StopError         = "error"          // the rollout could not go on
)

// statusOf is the status a stop reason gives.
func statusOf(stop string) string {
	switch stop {
	case StopMaxIterations:
		return StatusMaxIterations
	case StopBudget:
		return StatusBudget
	case StopContextLength:
		return StatusContextLength
	case StopTimeout:
		return StatusTimeout
	case StopError:
		return StatusError
	}
	return StatusCompleted
}

// Result is one rollout's record in results.jsonl. Everything outside
// Volatile repeats exactly between runs and backends for the same spec;
// Volatile holds what depends on time or on the machine.
type Result struct {
	ID          string `json:"id"`
	Rollout     string `json:"rollout"`
	Repeat      int    `json:"repeat"`
	Prompt      string `json:"prompt,omitempty"`
	Status      string `json:"status"`
	Answer      string `json:"answer"`
	AnswerReady bool   `json:"answer_ready"`
	// AnswerTruncated says the answer was cut at 1 MiB
	// (protocol.MaxAnswerBytes).
	AnswerTruncated bool `json:"answer_truncated,omitempty"`
	// FinalAnswer says the answer is the model's final answer in words (a
	// reply without a tool call, or the fenced format's last question),
	// not the REPL's.
	FinalAnswer bool           `json:"final_answer,omitempty"`
	Reward      *float64       `json:"reward,omitempty"`
	Rewards     []RewardScore  `json:"rewards,omitempty"`
	Expect      []Expectation  `json:"expect,omitempty"`
	Passed      bool           `json:"passed"`
	Turns       []Turn         `json:"turns"`
	Metrics     map[string]any `json:"metrics"`
	Error       string         `json:"error,omitempty"`
	// Skipped lists what the sync-back left out of the final working
	// directory, and why: special files, symlinks that lead out.
	Skipped []string `json:"skipped,omitempty"`
	// StopReason says why the rollout stopped (Stop* constants).
	StopReason string `json:"stop_reason,omitempty"`
	// Model is the model that played the rollout ("" for a script).
	Model string `json:"model,omitempty"`
	// Messages is the root conversation, in OpenAI's shape, exactly as sent
	// and received (model-played rollouts).
	Messages []subllm.Message `json:"messages,omitempty"`
	// Calls are the rollout's calls in order: the root model's requests,
	// root tool calls, and sub-LLM conversations.
	Calls    []Call   `json:"calls,omitempty"`
	Volatile Volatile `json:"volatile"`
}

// Call is one call a rollout made: a root model request, a root tool call,
// or a sub-LLM conversation (an llm_batch item, or a chat completion the
// REPL's code asked for). Latencies and
// retries vary between runs: the digest leaves them out.
type Call struct {
	Kind string `json:"kind"`
	// Batch and Item place an llm_batch item: the rollout's batch number
	// (from 0) and the prompt's index in it.
	Batch *int `json:"batch,omitempty"`
	Item  int  `json:"item,omitempty"`
	// A model request.
	*subllm.RequestFacts
	// A tool call.
	Tool   string         `json:"tool,omitempty"`
	Args   []any          `json:"args,omitempty"`
	Kwargs map[string]any `json:"kwargs,omitempty"`
	Result any            `json:"result,omitempty"`
	Error  string         `json:"error,omitempty"`
	// A sub-LLM conversation.
	Prompt    string                `json:"prompt,omitempty"`
	Messages  []subllm.Message      `json:"messages,omitempty"`
	Requests  []subllm.RequestFacts `json:"requests,omitempty"`
	ToolCalls int                   `json:"tool_calls,omitempty"`
	Reply     string                `json:"reply,omitempty"`
	// DurationMS is a tool call's time.
	DurationMS float64 `json:"duration_ms,omitempty"`
}

// Kinds of calls.
const (
	CallModel  = "model"   // a root model request
	CallTool   = "tool"    // a root tool call
	CallSubLLM = "sub_llm" // an llm_batch item: one sub-LLM conversation
	CallChat   = "chat"    // a chat completion the REPL's code asked for
)

// volatileCallKeys are the keys of a call that depend on time.
func volatileCallKeys() []string { return []string{"latency_ms", "retries", "duration_ms"} }

// Turn is one REPL cell and what the model was shown.
type Turn struct {
	Code string `json:"code"`
	// Output is the cell's output as shown to the model, without Python's
	// execution-time line (in Volatile.TurnSeconds).
	Output string `json:"output"`
	// ExitCode is the Bash cell's exit status.
	ExitCode *int `json:"exit_code,omitempty"`
	// Event names what went wrong: timeout, crashed, desync.
	Event string `json:"event,omitempty"`
	// Timeout is the cell's own timeout, when the model asked for one
	// shorter than code_execution_timeout.
	Timeout string `json:"timeout,omitempty"`
}

// RewardScore is one reward function's verdict.
type RewardScore struct {
	Name   string  `json:"name"`
	Weight float64 `json:"weight"`
	Score  float64 `json:"score"`
	Detail string  `json:"detail,omitempty"`
}

// Expectation compares what the spec expected with what happened.
type Expectation struct {
	Field    string `json:"field"`
	Expected string `json:"expected"`
	Got      string `json:"got"`
	Met      bool   `json:"met"`
}

// Volatile holds the facts of a result that vary between runs.
type Volatile struct {
	RunID string `json:"run_id"`
	// Environment is the packed environment the run ran, if it was one.
	Environment *Environment    `json:"environment,omitempty"`
	StartedAt   time.Time       `json:"started_at"`
	Seconds     float64         `json:"seconds"`
	Facts       *backends.Facts `json:"backend,omitempty"`
	Workdir     string          `json:"workdir,omitempty"`
	RetainedDir string          `json:"retained_dir,omitempty"`
	StageMS     float64         `json:"stage_ms"`
	StartMS     float64         `json:"start_ms,omitempty"`
	WorkerMS    float64         `json:"worker_start_ms,omitempty"`
	UploadMS    float64         `json:"upload_ms,omitempty"`
	DownloadMS  float64         `json:"download_ms,omitempty"`
	TurnSeconds []float64       `json:"turn_seconds,omitempty"`
	// ExecutionTimes are the lines the Python REPL appends to each output
	// for the model ("[Execution time: 0.01s]"), index-aligned with turns.
	ExecutionTimes []string       `json:"execution_times,omitempty"`
	Metrics        map[string]any `json:"metrics,omitempty"`
	Warnings       []string       `json:"warnings,omitempty"`
	// Attempts is how often the rollout ran (more than 1 after retries of
	// infrastructure failures).
	Attempts int `json:"attempts,omitempty"`
	// InfraError says the rollout failed for the infrastructure's reason
	// (sandbox creation, a lost agent, an unreachable model): --retries
	// and --resume run it again.
	InfraError bool `json:"infra_error,omitempty"`
}

// resultsWriter appends records as rollouts finish, so an interrupted run
// keeps what finished: to results.jsonl as they come, and to the --output
// copy, which replaces its file whole when the run ends.
type resultsWriter struct {
	mu   sync.Mutex
	live *os.File
	copy *atomicfile.File
}

func newResultsWriter(path, copyPath string, appendTo bool) (*resultsWriter, error) {
	w := &resultsWriter{}
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appendTo {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	var err error
	if w.live, err = os.OpenFile(path, flags, 0o644); err != nil {
		return nil, fmt.Errorf("open results file: %w", err)
	}
	if copyPath != "" {
		if w.copy, err = atomicfile.Create(copyPath); err != nil {
			w.live.Close()
			return nil, fmt.Errorf("open results file: %w", err)
		}
	}
	return w, nil
}

func (w *resultsWriter) Write(r *Result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.live.Write(b); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if w.copy != nil {
		if _, err := w.copy.Write(b); err != nil {
			return fmt.Errorf("write %s: %w", w.copy.Name(), err)
		}
	}
	return nil
}

// writeCopy writes r to the --output copy only (a resumed run's earlier
// results, which results.jsonl holds already).
func (w *resultsWriter) writeCopy(r *Result) error {
	if w.copy == nil {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.copy.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write %s: %w", w.copy.Name(), err)
	}
	return nil
}

func (w *resultsWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var errs *multierror.Error
	if w.live != nil {
		errs = multierror.Append(errs, w.live.Close())
		w.live = nil
	}
	if w.copy != nil {
		errs = multierror.Append(errs, w.copy.Commit())
		w.copy = nil
	}
	return errs.ErrorOrNil()
}

// WriteSummary prints the summary table of a run, its count line, its
// problems and where the results are.
func WriteSummary(w io.Writer, rep *Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLLOUT\tSTATUS\tREWARD\tTURNS\tTIME\tANSWER\t")
	for _, r := range rep.Results {
		reward := "-"
		if r.Reward != nil {
			reward = fmt.Sprintf("%.3g", *r.Reward)
		}
		status := r.Status
		if !r.Passed && r.Status != StatusError {
			status += " (unexpected)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.2fs\t%s\t\n", safetext.Line(r.ID), status, reward, len(r.Turns), r.Volatile.Seconds, safetext.Line(oneLine(r.Answer, 40)))
	}
	tw.Flush()
	fmt.Fprintln(w, SummaryLine(rep))
	WriteProblems(w, rep)
	if rep.ResultsPath != "" {
		fmt.Fprintf(w, "results: %s\n", rep.ResultsPath)
	}
}

// SummaryLine counts the run's rollouts by status.
func SummaryLine(rep *Report) string {
	counts := map[string]int{}
	failed := 0
	for _, r := range rep.Results {
		counts[r.Status]++
		if !r.Passed {
			failed++
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
	}
	line := fmt.Sprintf("%d rollout(s): %s", len(rep.Results), strings.Join(parts, ", "))
	if failed > 0 {
		line += fmt.Sprintf("; %d did not pass", failed)
	}
	if len(rep.NotStarted) > 0 {
		line += fmt.Sprintf("; %d not started", len(rep.NotStarted))
	}
	return line
}

// WriteProblems lists errors and unmet expectations, expected versus got.
// What rollouts wrote is escaped: one problem is one line, and a terminal
// never acts on it.
func WriteProblems(w io.Writer, rep *Report) {
	line := func(id, format string, args ...any) {
		fmt.Fprintf(w, "  %s: %s\n", safetext.Line(id), safetext.Line(fmt.Sprintf(format, args...)))
	}
	for _, r := range rep.Results {
		if r.Error != "" {
			line(r.ID, "%s", r.Error)
		}
		for _, e := range r.Expect {
			if !e.Met {
				line(r.ID, "expected %s %s, got %s", e.Field, e.Expected, e.Got)
			}
		}
		if r.AnswerTruncated {
			line(r.ID, "the answer was cut at its limit of %d bytes", protocol.MaxAnswerBytes)
		}
		if n := len(r.Skipped); n > 0 {
			line(r.ID, "the sync-back left out %d entr%s: %s", n, map[bool]string{true: "y", false: "ies"}[n == 1], strings.Join(r.Skipped, ", "))
		}
	}
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}
