package runner

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/rlmrun/rlmrun/backends/protocol"
)

// truncationMarker follows output cut at max_output_length, as in the reference.
const truncationMarker = "\n... [output truncated]"

// noOutput is shown for a cell that printed nothing.
const noOutput = "(no output)"

// validUTF8 replaces every byte that is not part of valid UTF-8 with U+FFFD,
// one replacement per byte, as Python's errors="replace" does.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size <= 1 {
			b.WriteRune(utf8.RuneError)
			i++
			continue
		}
		b.WriteString(s[i : i+size])
		i += size
	}
	return b.String()
}

// truncate cuts s to max characters (not bytes) and marks the cut. cutEarlier
// forces the marker when the agent already dropped output while reading.
func truncate(s string, max int, cutEarlier bool) string {
	if utf8.RuneCountInString(s) > max {
		n := 0
		for i := range s {
			if n == max {
				return s[:i] + truncationMarker
			}
			n++
		}
	}
	if cutEarlier {
		return s + truncationMarker
	}
	return s
}

// seconds renders a duration the way the reference printed its timeout
// (120 -> "120", 1.5 -> "1.5").
func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}

// captureBytes is how much of each stream the agent keeps for a cell: enough
// for max characters of UTF-8, whatever the script.
func captureBytes(maxChars int) int { return 4*maxChars + 4 }

func capturedLess(rep *protocol.ExecReply) bool {
	return rep.StdoutBytes > int64(len(rep.Stdout)) || rep.StderrBytes > int64(len(rep.Stderr))
}

// formatBash is the reference's Bash layout: stdout then stderr as they are,
// the note (if any) when there is no output, "(no output)" when empty, cut at
// max characters.
func formatBash(rep *protocol.ExecReply, note string, max int) string {
	out := validUTF8(rep.Stdout) + validUTF8(rep.Stderr)
	if note != "" {
		if out != "" && !strings.HasSuffix(out, "\n") {
			out += "\n"
		}
		out += note
	}
	if out == "" {
		out = noOutput
	}
	return truncate(out, max, capturedLess(rep))
}

// formatPython is the reference's Python layout: stdout (right-trimmed),
// "stderr:\n" and stderr, then the traceback or Out[n], joined by newlines;
// "(no output)" when empty; cut at max characters. The execution-time line is
// added separately, as it is not reproducible.
func formatPython(rep *protocol.ExecReply, note string, max int) string {
	var parts []string
	if s := strings.TrimRight(validUTF8(rep.Stdout), " \t\n\r\v\f"); s != "" {
		parts = append(parts, s)
	}
	if s := strings.TrimRight(validUTF8(rep.Stderr), " \t\n\r\v\f"); s != "" {
		parts = append(parts, "stderr:\n"+s)
	}
	switch {
	case note != "":
		parts = append(parts, note)
	case rep.Status == protocol.StatusError && rep.Error != "":
		parts = append(parts, strings.TrimRight(validUTF8(rep.Error), " \t\n\r\v\f"))
	case rep.Status == protocol.StatusOK && rep.Result != nil:
		parts = append(parts, fmt.Sprintf("Out[%d]: %s", rep.ExecutionCount, validUTF8(*rep.Result)))
	}
	out := noOutput
	if len(parts) > 0 {
		out = strings.Join(parts, "\n")
	}
	return truncate(out, max, capturedLess(rep))
}

// executionTimeLine is what the reference appended to Python output, after
// a newline: the model saw output + "\n" + this line.
func executionTimeLine(d time.Duration) string {
	return fmt.Sprintf("[Execution time: %.2fs]", d.Seconds())
}

// Messages the model sees when a cell ends badly (the reference's wording).
func timeoutMessage(timeout time.Duration, restarted bool, restartErr string) string {
	msg := fmt.Sprintf("Code execution timed out after %s seconds.", seconds(timeout))
	switch {
	case restarted:
		return msg + " The worker was restarted and the REPL state was reset."
	case restartErr != "":
		return msg + " The worker could not be restarted: " + restartErr
	}
	return msg
}

func crashMessage(rep *protocol.ExecReply) string {
	how := fmt.Sprintf("exit status %d", rep.ExitCode)
	if rep.Signal != "" {
		how = "killed by signal: " + rep.Signal
	}
	msg := fmt.Sprintf("The REPL process exited while running this cell (%s).", how)
	if rep.Reason != "" {
		msg = "The REPL was ended while running this cell: " + rep.Reason + "."
	}
	switch {
	case rep.Restarted:
		return msg + " The worker was restarted and the REPL state was reset."
	case rep.RestartError != "":
		return msg + " The worker could not be restarted: " + rep.RestartError
	}
	return msg
}

func desyncMessage(want, got int) string {
	return fmt.Sprintf("Communication desync detected: received stale response (expected seq=%d, got seq=%d). This may happen after a timeout. Please retry your command.", want, got)
}
