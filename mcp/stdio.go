package mcp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// stdio is the stdio transport: one JSON message per line on the server's
// stdin, and the same back on its stdout.
type stdio struct {
	mu sync.Mutex // one writer at a time: lines must not interleave
	w  io.WriteCloser
	r  io.ReadCloser
	s  *session
}

// ConnectStdio initialises a session with a server over its stdin (w) and
// stdout (r). The caller owns the process; when its stdout ends the client
// is Done, with why (exited, when given, says how the process ended).
func ConnectStdio(ctx context.Context, r io.ReadCloser, w io.WriteCloser, info Implementation, exited func() error) (*Client, error) {
	s := newSession()
	t := &stdio{w: w, r: r, s: s}
	s.t = t
	go func() {
		err := readLines(r, s.receive)
		if exited != nil {
			if e := exited(); e != nil {
				err = fmt.Errorf("%w: the server exited: %v", ErrClosed, e)
			}
		}
		if err == nil {
			err = fmt.Errorf("%w: the server closed its output", ErrClosed)
		}
		s.fail(err)
	}()
	c, err := handshake(ctx, s, info, nil)
	if err != nil {
		t.close()
		return nil, err
	}
	return c, nil
}

func (t *stdio) send(ctx context.Context, msg []byte, _ bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.w.Write(append(msg, '\n')); err != nil {
		// A broken pipe is a server gone: how it went (its exit status)
		// comes with the end of its output, a moment later.
		timer := time.NewTimer(exitWait)
		defer timer.Stop()
		select {
		case <-t.s.done:
			// Not ErrClosed itself: that is the client closed by its owner.
			if lost := t.s.err(); lost != nil && lost != ErrClosed {
				return lost
			}
		case <-timer.C:
		case <-ctx.Done():
		}
		return fmt.Errorf("%w: write to the server: %v", ErrClosed, err)
	}
	return nil
}

// exitWait bounds how long a failed write waits to learn how the server
// ended.
const exitWait = 2 * time.Second

func (t *stdio) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.w.Close()
	t.r.Close()
	return err
}

// readLines hands every line of r to f, up to MaxMessage bytes each. It
// returns nil at the end of r.
func readLines(r io.Reader, f func([]byte)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > MaxMessage {
			return fmt.Errorf("%w: the server sent a message over %d bytes", ErrClosed, MaxMessage)
		}
		switch {
		case err == nil:
			if len(line) > 1 {
				f(line)
			}
			line = nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if len(line) > 0 {
				f(line)
			}
			return nil
		default:
			return fmt.Errorf("%w: read from the server: %v", ErrClosed, err)
		}
	}
}
