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
)

// Rollout statuses.
const (
	StatusCompleted     = "completed"      // the answer became ready, or the script ended
	StatusMaxIterations = "max_iterations" // max_iterations turns ran without a ready answer
	StatusTimeout       = "timeout"        // a cell timed out with abort_on_code_timeout
	StatusError         = "error"          // the rollout could not run to its end
)

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
	AnswerTruncated bool           `json:"answer_truncated,omitempty"`
	Reward          *float64       `json:"reward,omitempty"`
	Rewards         []RewardScore  `json:"rewards,omitempty"`
	Expect          []Expectation  `json:"expect,omitempty"`
	Passed          bool           `json:"passed"`
	Turns           []Turn         `json:"turns"`
	Metrics         map[string]any `json:"metrics"`
	Error           string         `json:"error,omitempty"`
	// Skipped lists what the sync-back left out of the final working
	// directory, and why: special files, symlinks that lead out.
	Skipped  []string `json:"skipped,omitempty"`
	Volatile Volatile `json:"volatile"`
}

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
	RunID       string          `json:"run_id"`
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
}

// resultsWriter appends records as rollouts finish, so an interrupted run
// keeps what finished: to results.jsonl as they come, and to the --output
// copy, which replaces its file whole when the run ends.
type resultsWriter struct {
	mu   sync.Mutex
	live *os.File
	copy *atomicfile.File
}

func newResultsWriter(path, copyPath string) (*resultsWriter, error) {
	w := &resultsWriter{}
	var err error
	if w.live, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
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
