package worker

import (
	"bufio"
	_ "embed"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/backends/protocol"
)

//go:embed python_worker.py
var pythonWorker []byte

// pythonBoot starts the Python worker from RLM_WORKER_SCRIPT.
const pythonBoot = "import os;exec(compile(os.environ.pop('RLM_WORKER_SCRIPT'),'<rlmrun-worker>','exec'))"

// pythonREPL is the embedded Python worker: requests on a pipe of its own,
// replies on another, and fd 1/2 the cell's own output.
type pythonREPL struct{}

func (p *pythonREPL) spawn(w *Worker) error {
	reqR, reqW, err := os.Pipe()
	if err != nil {
		return err
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		reqR.Close()
		reqW.Close()
		return err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	// The worker travels in the environment (removed at once) and is
	// compiled under a name of its own, so its frames can be left out of
	// tracebacks; with -c, sys.path[0] is the working directory and the
	// model can import its own modules.
	w.extraEnv = []string{"RLM_WORKER_SCRIPT=" + string(pythonWorker)}
	out, errp, err := w.launch([]string{w.spawn.Python, "-u", "-B", "-c", pythonBoot}, devnull, []*os.File{reqR, repW})
	devnull.Close()
	reqR.Close()
	repW.Close()
	if err != nil {
		reqW.Close()
		repR.Close()
		return err
	}
	w.attach(reqW, out, errp, repR, readPythonStatus)
	return nil
}

// configurePython sends the configuration request: NUL-separated fields
// (marker, working directory, file count, total size, tool names joined by
// spaces, then the environment's KEY=VALUE entries).
func (p *pythonREPL) configure(w *Worker, cfg Config) error {
	fields := []string{string(w.marker), cfg.Workdir, strconv.Itoa(cfg.FSMetadata.FileCount), strconv.FormatInt(cfg.FSMetadata.TotalSize, 10), strings.Join(cfg.ToolNames, " ")}
	fields = append(fields, cfg.Env...)
	payload := strings.Join(fields, "\x00")
	_, err := io.WriteString(w.control, fmt.Sprintf("c 0 %d\n%s", len(payload), payload))
	return err
}

// send writes the cell as a request: "x SEQ SIZE\n" and the code.
func (p *pythonREPL) send(w *Worker, o ExecOptions) error {
	op, code := "x", o.Code
	if o.answerOnly {
		op, code = "a", ""
	}
	_, err := io.WriteString(w.control, fmt.Sprintf("%s %d %d\n%s", op, o.Seq, len(code), code))
	return err
}

// answerRequest asks for the answer with a request of its own, which does
// not count as a cell.
func (p *pythonREPL) answerRequest() ExecOptions {
	return ExecOptions{Seq: -1, Timeout: 10 * time.Second, MaxOutputBytes: 1, answerOnly: true}
}

// pythonHeader is the header line of a Python worker's reply; the error,
// result and answer fields follow, of the lengths it gives.
type pythonHeader struct {
	Seq            int
	Status         string
	ExecutionCount int
	Ready          bool
	ErrorLen       int64
	ResultLen      int64
	HasResult      bool
	ContentLen     int64
}

// parsePythonHeader reads "SEQ STATUS COUNT READY ERRLEN RESLEN HASRES CONTLEN".
func parsePythonHeader(line string) (pythonHeader, bool) {
	f := strings.Fields(line)
	if len(f) != 8 {
		return pythonHeader{}, false
	}
	n := make([]int64, 8)
	for i, x := range f {
		if i == 1 {
			continue
		}
		v, err := strconv.ParseInt(x, 10, 64)
		// The sequence number may be -1 (an answer request); nothing else
		// may be negative.
		if err != nil || (i > 0 && v < 0) {
			return pythonHeader{}, false
		}
		n[i] = v
	}
	return pythonHeader{
		Seq: int(n[0]), Status: f[1], ExecutionCount: int(n[2]), Ready: n[3] == 1,
		ErrorLen: n[4], ResultLen: n[5], HasResult: n[6] == 1, ContentLen: n[7],
	}, true
}

// readPythonStatus reads one reply: "R PID" once the worker is ready, then
// per request a header and its fields. A cell can write to this channel
// too: sizes are read, not trusted; each field keeps at most its limit.
func readPythonStatus(br *bufio.Reader) (statusMsg, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return statusMsg{}, err
	}
	if len(line) > 256 {
		return statusMsg{}, errNotWorker
	}
	if f := strings.Fields(line); len(f) == 2 && f[0] == "R" {
		return statusMsg{Ready: true}, nil
	}
	h, ok := parsePythonHeader(line)
	if !ok {
		return statusMsg{}, errNotWorker
	}
	var fields [3]string
	var cut [3]bool
	for i, size := range []int64{h.ErrorLen, h.ResultLen, h.ContentLen} {
		limit := int64(maxStatusField)
		if i == 2 {
			limit = protocol.MaxAnswerBytes
		}
		buf := make([]byte, min(size, limit))
		if _, err := io.ReadFull(br, buf); err != nil {
			return statusMsg{}, err
		}
		if size > limit {
			if _, err := io.CopyN(io.Discard, br, size-limit); err != nil {
				return statusMsg{}, err
			}
			cut[i] = true
		}
		fields[i] = string(buf)
	}
	m := statusMsg{Seq: h.Seq, Status: h.Status, ExecutionCount: h.ExecutionCount,
		Answer: &protocol.Answer{Ready: h.Ready, Content: wholeRunes(fields[2], cut[2]), Truncated: cut[2]}}
	if h.ErrorLen > 0 {
		m.Error = &fields[0]
	}
	if h.HasResult {
		m.Result = &fields[1]
	}
	return m, nil
}
