package tunnel

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// Loopback is the agent's end of the tunnel: a listener on the sandbox's
// loopback whose every connection it carries to the runner over a stream of
// its own (a new yamux stream of the agent's session), where Server answers
// it. The worker never needs a route to the host.
type Loopback struct {
	ln net.Listener
}

// LoopbackConns is how many connections are carried at once: as many as the
// runner serves per agent (Limits.ConnsPerAgent), so more wait in the
// sandbox's own listen queue, not in the runner.
const LoopbackConns = 16

// ListenLoopback starts carrying: open gives the stream for each connection;
// logf reports what fails.
func ListenLoopback(open func() (net.Conn, error), logf func(format string, args ...any)) (*Loopback, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen on loopback: %w", err)
	}
	return ServeLoopback(ln, open, logf), nil
}

// ServeLoopback is ListenLoopback on a listener bound beforehand (a
// confined agent binds before Landlock forbids it).
func ServeLoopback(ln net.Listener, open func() (net.Conn, error), logf func(format string, args ...any)) *Loopback {
	slots := make(chan struct{}, LoopbackConns)
	go func() {
		for {
			slots <- struct{}{}
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { <-slots }()
				carry(c, open, logf)
			}()
		}
	}()
	return &Loopback{ln: ln}
}

// URL is the listener's base URL.
func (l *Loopback) URL() string { return "http://" + l.ln.Addr().String() }

// Close stops listening; carried connections end with their streams.
func (l *Loopback) Close() error { return l.ln.Close() }

func carry(c net.Conn, open func() (net.Conn, error), logf func(string, ...any)) {
	defer c.Close()
	s, err := open()
	if err != nil {
		logf("tunnel: open stream: %v", err)
		return
	}
	defer s.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(s, c)
		_ = s.Close() // half-close: the request is complete
	}()
	_, _ = io.Copy(c, s)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	wg.Wait()
}
