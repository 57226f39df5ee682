package agent

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// startTunnel listens on the sandbox's loopback and carries every connection
// to the runner as a new yamux stream, where the runner's interception server
// answers it. The worker never needs a route to the host.
func (a *Agent) startTunnel() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("tunnel: listen on loopback: %w", err)
	}
	a.tunnel = ln
	// As many connections at once as the runner serves per agent: more
	// wait in this sandbox's own listen queue.
	slots := make(chan struct{}, tunnelConns)
	go func() {
		for {
			slots <- struct{}{}
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { <-slots }()
				a.carry(c)
			}()
		}
	}()
	return nil
}

// tunnelConns is how many tunnelled connections run at once (the runner's
// tunnel.Limits.ConnsPerAgent).
const tunnelConns = 16

func (a *Agent) carry(c net.Conn) {
	defer c.Close()
	s, err := a.session.OpenStream()
	if err != nil {
		a.logger.Printf("tunnel: open stream: %v", err)
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

// toolURLs are the worker's ways out: through the tunnel's loopback port, or
// straight to interception_url. Nil when the rollout has neither.
func (a *Agent) toolURLs() map[string]string {
	base := strings.TrimSuffix(a.init.BaseURL, "/")
	if base == "" {
		if a.tunnel == nil {
			return nil
		}
		base = "http://" + a.tunnel.Addr().String()
	}
	prefix := base + "/rollout/" + a.init.RolloutKey + "/v1"
	env := map[string]string{
		"RLM_INTERCEPTION_URL": prefix + "/chat/completions",
		"RLM_ROOT_TOOL_URL":    prefix + "/rlm/tools",
		"RLM_SECRET":           a.init.Secret,
	}
	if a.init.ToolTimeoutMS > 0 {
		env["RLM_TOOL_TIMEOUT_MS"] = fmt.Sprint(a.init.ToolTimeoutMS)
	}
	return env
}
