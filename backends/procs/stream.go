package procs

import "io"

// Stream is a process's byte stream: what it writes (its stdout) is read,
// what is written goes to its stdin, and Diagnostics is the tail of what it
// said on stderr. The agent's session runs over one, whatever started the
// agent.
type Stream struct {
	R io.ReadCloser
	W io.WriteCloser
	// Stderr, when set, keeps the end of the process's stderr.
	Stderr *Tail
}

func (s Stream) Read(p []byte) (int, error)  { return s.R.Read(p) }
func (s Stream) Write(p []byte) (int, error) { return s.W.Write(p) }

// Close closes both directions.
func (s Stream) Close() error {
	werr := s.W.Close()
	rerr := s.R.Close()
	if werr != nil {
		return werr
	}
	return rerr
}

// Diagnostics is the end of what the process said on stderr.
func (s Stream) Diagnostics() string {
	if s.Stderr == nil {
		return ""
	}
	return s.Stderr.String()
}
