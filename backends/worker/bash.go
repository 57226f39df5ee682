package worker

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// bashREPL is one persistent `bash --noprofile --norc` without a PTY.
// Cells are written to a file the shell sources (parsed whole, so an
// unclosed quote is an error, not a hang); a status pipe carries each cell's
// sequence number, exit status and the answer variables.
type bashREPL struct {
	cellFile *os.File // rewritten before every cell
}

func (b *bashREPL) spawn(w *Worker) error {
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return err
	}
	statusR, statusW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return err
	}
	out, errp, err := w.launch([]string{"bash", "--noprofile", "--norc"}, stdinR, []*os.File{statusW})
	stdinR.Close()
	statusW.Close()
	if err != nil {
		stdinW.Close()
		statusR.Close()
		return err
	}
	w.attach(stdinW, out, errp, statusR, readBashStatus)
	cell := filepath.Join(w.spawn.StateDir, "cell")
	cf, err := os.OpenFile(cell, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create cell file: %w", err)
	}
	b.cellFile = cf
	w.closers = append(w.closers, cf)
	// The shell keeps private copies of its output pipes (91, 92) and the
	// status pipe (93), so a cell that redirects or closes 1, 2 or 3 cannot
	// lose the end markers. Fd 90 is /dev/null, the cells' stdin; fd 95 stays
	// open on the cell file, which the agent rewrites before every cell.
	//
	// `source` parses the whole cell before running it, so an unclosed quote
	// or heredoc is an error, not a hang, and reading it through /dev/fd/95
	// keeps line numbers in bash's messages relative to the cell. The driver
	// sits in a variable and is eval'ed at top level (a function would make
	// the cell's `declare`s local), because bash reads its stdin a byte at a
	// time: the line sent per cell must stay short.
	driver := "builtin source /dev/fd/95 <&90; " + bashEndOfCell()
	// When a sandbox runs out of memory, the kernel must kill the cell's
	// processes, not the agent: the rollout then goes on with a fresh
	// worker. The worker raises its own score (no privilege needed; children
	// inherit it) through /proc/self, which names it in any PID namespace.
	init := fmt.Sprintf("builtin echo 1000 2>/dev/null >/proc/self/oom_score_adj\n__rlm_mark=%s\n__rlm_d=%s\nexec 90</dev/null 91>&1 92>&2 93>&3 3>&- 95<%s\n",
		bashQuoteBytes(w.marker), shellQuote(driver), shellQuote(cell))
	_, err = io.WriteString(stdinW, init)
	return err
}

// configureBash exports the environment (nothing else was exported: the
// shell started with only PATH and LANG, both of which the environment
// sets), moves to the working directory and reports ready.
func (b *bashREPL) configure(w *Worker, cfg Config) error {
	var sb strings.Builder
	for _, kv := range cfg.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validName(k) {
			continue
		}
		fmt.Fprintf(&sb, "export %s=%s\n", k, shellQuote(v))
	}
	sb.WriteString(cfg.Prelude)
	fmt.Fprintf(&sb, "cd -- %s || exit 97\n", shellQuote(cfg.Workdir))
	// Sourced from a file: bash reads its stdin a byte at a time.
	setup := filepath.Join(w.spawn.StateDir, "setup.sh")
	if err := os.WriteFile(setup, []byte(sb.String()), 0o600); err != nil {
		return fmt.Errorf("write worker setup: %w", err)
	}
	_, err := io.WriteString(w.control, "builtin source "+shellQuote(setup)+"; __rlm_n=0; "+bashEndOfCell()+"\n")
	return err
}

func validName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// send writes the cell to the cell file and has the shell source it.
func (b *bashREPL) send(w *Worker, o ExecOptions) error {
	// Rewritten in place: bash reopens it through /dev/fd/95.
	if err := b.cellFile.Truncate(0); err != nil {
		return fmt.Errorf("write cell: %w", err)
	}
	if _, err := b.cellFile.WriteAt([]byte(o.Code), 0); err != nil {
		return fmt.Errorf("write cell: %w", err)
	}
	_, err := io.WriteString(w.control, "__rlm_n="+strconv.Itoa(o.Seq)+"; builtin eval \"$__rlm_d\"\n")
	return err
}

// answerRequest reads the answer: every cell reports the answer variables,
// so an empty cell (":") does.
func (b *bashREPL) answerRequest() ExecOptions {
	return ExecOptions{Seq: -1, Code: ":", Timeout: 10 * time.Second, MaxOutputBytes: 1}
}

// bashEndOfCell writes the markers and the status record of cell $__rlm_n.
func bashEndOfCell() string {
	return "__rlm_s=$?; builtin printf '%s' \"$__rlm_mark\" >&91; builtin printf '%s' \"$__rlm_mark\" >&92; " +
		fmt.Sprintf("builtin printf '%%s\\0%%s\\0%%s\\0%%s\\0' \"$__rlm_n\" \"$__rlm_s\" \"${%s-}\" \"${%s-}\" >&93", wire.EnvAnswerReady, wire.EnvAnswerContent)
}

// readBashStatus reads one status record: seq, exit status, RLM_READY and
// RLM_CONTENT, each NUL-terminated. The content is the model's and may be
// anything: only its first protocol.MaxAnswerBytes are kept.
func readBashStatus(br *bufio.Reader) (statusMsg, error) {
	var f [4]string
	var cut bool
	for i := range f {
		limit := 64
		if i == 3 {
			limit = protocol.MaxAnswerBytes
		}
		s, over, err := readField(br, limit)
		if err != nil {
			return statusMsg{}, err
		}
		f[i], cut = s, cut || (i == 3 && over)
	}
	seq, _ := strconv.Atoi(f[0])
	code, _ := strconv.Atoi(f[1])
	ans := protocol.Answer{Ready: bashTruthy(f[2]), Content: wholeRunes(f[3], cut), Truncated: cut}
	return statusMsg{Seq: seq, Status: protocol.StatusOK, ExitCode: code, Answer: &ans, Ready: seq == 0}, nil
}

// readField reads up to a NUL, keeping at most limit bytes of it (over
// reports the rest was dropped).
func readField(br *bufio.Reader, limit int) (string, bool, error) {
	var b []byte
	over := false
	for {
		chunk, err := br.ReadSlice(0)
		if room := limit - len(b); room > 0 {
			keep := chunk
			if err == nil {
				keep = chunk[:len(chunk)-1]
			}
			if len(keep) > room {
				keep, over = keep[:room], true
			}
			b = append(b, keep...)
		} else if len(chunk) > 1 || (err != nil && len(chunk) > 0) {
			over = true
		}
		switch {
		case err == nil:
			return string(b), over, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return "", false, err
		}
	}
}

// bashTruthy follows the reference: RLM_READY set to 1/true/yes/y/on.
func bashTruthy(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "1", "true", "yes", "y", "on":
		return true
	}
	return false
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// bashQuoteBytes writes b as a $'...' string.
func bashQuoteBytes(b []byte) string {
	var sb strings.Builder
	sb.WriteString("$'")
	for _, c := range b {
		fmt.Fprintf(&sb, "\\x%02x", c)
	}
	sb.WriteString("'")
	return sb.String()
}
