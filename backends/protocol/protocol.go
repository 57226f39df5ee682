// Package protocol defines what the runner and `rlmrun agent` say to each
// other. They share one yamux session over the agent's stdin/stdout. Small
// requests (hello, init, start, exec, answer, restart, shutdown) share one
// long-lived control stream: a JSON request line with an id, answered by a
// JSON reply line with the same id; a "cancel" line with a request's id
// cancels it. put and get have a stream each: a JSON header line, then a
// tar stream (put: the request's body; get: after the reply, followed by a
// trailer line). Streams the agent opens carry tunnelled HTTP connections
// from the REPL worker to the runner's interception server.
package protocol

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/hashicorp/yamux"

	rlmfs "github.com/rlmrun/rlmrun/fs"
)

// Version changes whenever the runner and the agent stop understanding each other.
const Version = 2

// Operations.
const (
	OpHello    = "hello"    // check the agent answers; returns facts about it
	OpInit     = "init"     // configure the rollout: directories, worker, environment
	OpPut      = "put"      // request body: tar stream extracted into the working directory
	OpStart    = "start"    // start the REPL worker
	OpExec     = "exec"     // run one cell
	OpAnswer   = "answer"   // read the answer the REPL holds
	OpRestart  = "restart"  // kill and start the worker (fresh state)
	OpGet      = "get"      // reply body: tar stream of the working directory
	OpShutdown = "shutdown" // kill the worker, remove the agent's directories, exit
	OpCancel   = "cancel"   // give up on the running request with this id
)

// Request is the header line of a control stream.
type Request struct {
	Op string `json:"op"`
	// ID pairs a reply with its request on the shared control stream.
	ID   uint64    `json:"id,omitempty"`
	Seq  int       `json:"seq,omitempty"`
	Init *InitArgs `json:"init,omitempty"`
	Exec *ExecArgs `json:"exec,omitempty"`
	Put  *PutArgs  `json:"put,omitempty"`
}

// InitArgs configure the agent for one rollout.
type InitArgs struct {
	// Root is the rollout's directory: Root/work is the REPL's working
	// directory, Root/agent holds the agent's own files. The runner picks the
	// same path on every backend so the model sees the same paths.
	Root string `json:"root"`
	// Language is "bash" or "python".
	Language string `json:"language"`
	// Python is the interpreter of the Python worker.
	Python string `json:"python"`
	// Env is the worker's whole environment (rlmrun adds PATH, HOME and the
	// RLM_* variables it owns when they are missing).
	Env map[string]string `json:"env"`
	// Tools are the root tools the REPL gets as commands or functions.
	Tools []ToolInfo `json:"tools,omitempty"`
	// Tunnel asks the agent to listen on loopback and carry each connection
	// to the runner as a yamux stream (the worker's RLM_*_URL point there).
	Tunnel bool `json:"tunnel,omitempty"`
	// BaseURL, when set, is used instead of the tunnel (interception_url).
	BaseURL string `json:"base_url,omitempty"`
	// RolloutKey and Secret address and authenticate this rollout's routes.
	RolloutKey string `json:"rollout_key,omitempty"`
	Secret     string `json:"secret,omitempty"`
	// ToolTimeoutMS bounds one tool call made by the worker (HTTP timeout).
	ToolTimeoutMS int64 `json:"tool_timeout_ms,omitempty"`
	// FS describes the uploaded working directory (Python's fs_metadata),
	// so the worker can start while the upload runs.
	FS rlmfs.Metadata `json:"fs"`
}

// ToolInfo describes a root tool to the worker.
type ToolInfo struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Params      []string `json:"params,omitempty"`
}

// PutArgs bound an upload.
type PutArgs struct {
	MaxBytes int64 `json:"max_bytes"`
	MaxFiles int   `json:"max_files"`
}

// ExecArgs describe one cell.
type ExecArgs struct {
	Code      string `json:"code"`
	TimeoutMS int64  `json:"timeout_ms"`
	// MaxOutputBytes caps what is kept of stdout and of stderr; the rest is
	// counted and dropped while reading.
	MaxOutputBytes int `json:"max_output_bytes"`
	// RestartOnFailure restarts the worker after a timeout or a crash.
	RestartOnFailure bool `json:"restart_on_failure"`
}

// Reply is the header line the agent answers with.
type Reply struct {
	ID    uint64 `json:"id,omitempty"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`

	Hello  *HelloReply  `json:"hello,omitempty"`
	Exec   *ExecReply   `json:"exec,omitempty"`
	Answer *Answer      `json:"answer,omitempty"`
	Stats  *rlmfs.Stats `json:"stats,omitempty"`
	// Start reports the worker's start-up (and restart) time.
	StartMS float64 `json:"start_ms,omitempty"`
}

// HelloReply tells the runner about the agent.
type HelloReply struct {
	Version  int    `json:"version"`
	PID      int    `json:"pid"`
	UID      int    `json:"uid"`
	Hostname string `json:"hostname"`
	// Confinement is what confines the agent and its REPL: "landlock-abi-N",
	// "none", or empty where the agent was not asked (sandboxes).
	Confinement string `json:"confinement,omitempty"`
}

// Cell outcomes.
const (
	StatusOK      = "ok"      // the cell ran (its code may still have failed)
	StatusError   = "error"   // Python: the cell raised; Error holds the traceback
	StatusTimeout = "timeout" // the cell outran its timeout and the worker was killed
	StatusCrashed = "crashed" // the worker process died during the cell
)

// ExecReply is the outcome of one cell.
type ExecReply struct {
	// Seq is the sequence number the worker answered for; a reply for
	// another cell is a desync.
	Seq    int    `json:"seq"`
	Status string `json:"status"`
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// StdoutBytes and StderrBytes count everything the cell wrote, kept or not.
	StdoutBytes int64 `json:"stdout_bytes"`
	StderrBytes int64 `json:"stderr_bytes"`
	// ExitCode is the Bash cell's exit status, or the crashed worker's.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed a crashed worker.
	Signal string `json:"signal,omitempty"`
	// Reason says why a worker that had not exited was ended as crashed.
	Reason string `json:"reason,omitempty"`
	// Error is Python's traceback (StatusError).
	Error string `json:"error,omitempty"`
	// Result is the repr of Python's trailing expression, when not None.
	Result         *string `json:"result,omitempty"`
	ExecutionCount int     `json:"execution_count"`
	Answer         Answer  `json:"answer"`
	// Restarted tells whether a fresh worker replaced a timed-out or crashed
	// one; RestartError says why it could not.
	Restarted    bool    `json:"restarted,omitempty"`
	RestartError string  `json:"restart_error,omitempty"`
	DurationMS   float64 `json:"duration_ms"`
}

// Answer is what the REPL holds as its answer.
type Answer struct {
	Ready   bool   `json:"ready"`
	Content string `json:"content"`
	// Truncated says Content was cut at MaxAnswerBytes.
	Truncated bool `json:"truncated,omitempty"`
}

// MaxAnswerBytes bounds an answer: what is longer is cut (and marked).
const MaxAnswerBytes = 1 << 20

// MaxHeader bounds a header line; code cells travel in it.
const MaxHeader = 64 << 20

// WriteJSON writes v as one JSON line.
func WriteJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// ReadJSON reads one JSON line into v from r. r must be the same
// *bufio.Reader for every read from a stream, so buffered bytes of a body that
// follows are not lost.
func ReadJSON(r *bufio.Reader, v any) error {
	line, err := readLine(r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("bad protocol line: %w", err)
	}
	return nil
}

// ErrHeaderTooLarge is returned for a header line over MaxHeader.
var ErrHeaderTooLarge = errors.New("protocol header too large")

func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxHeader {
			return nil, ErrHeaderTooLarge
		}
		if err == nil {
			return buf, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) && len(buf) > 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
}

// YamuxConfig is the session configuration both ends use.
func YamuxConfig(logw io.Writer) *yamux.Config {
	cfg := yamux.DefaultConfig()
	// The default 256 KB stream window, not more: a larger one lets a
	// transfer outrun the reader, and the receiving agent, a fresh process,
	// pays for the buffering in page faults. Measured here (bwrap
	// BenchmarkColdStart, 100 files / 1 MB uploaded: 71-81 ms against 79-114
	// ms with 4 MB; 64 MB to a local agent: 170-190 ms against 180-300 ms).
	cfg.MaxStreamWindowSize = 256 << 10
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 15 * time.Second
	cfg.ConnectionWriteTimeout = 30 * time.Second
	cfg.StreamOpenTimeout = 30 * time.Second
	// Streams the other end opens beyond what this end has accepted are
	// refused, not queued without bound: each may hold a window of data.
	cfg.AcceptBacklog = 32
	cfg.LogOutput = nil
	cfg.Logger = log.New(logw, "yamux: ", 0)
	return cfg
}
