package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rlmrun/rlmrun/backends/procs"
)

// Exec streams speak Kubernetes' channel protocol over a WebSocket: every
// message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 the
// exec's final status, 255 in v5: a stream closed). v5.channel.k8s.io is
// offered first (Kubernetes >= 1.30), v4.channel.k8s.io for older servers;
// SPDY, which client-go still falls back to, is not spoken.
const (
	protocolV5 = "v5.channel.k8s.io"
	protocolV4 = "v4.channel.k8s.io"
)

const (
	chanStdin  = 0
	chanStdout = 1
	chanStderr = 2
	chanError  = 3
	chanClose  = 255
)

// maxStdinChunk bounds one stdin message (large messages carry the agent
// faster through the API server and the kubelet: 17 MB in ~0.2 s, not ~0.4).
const maxStdinChunk = 256 << 10

// execStream is a process started with exec: its stdin and stdout are the
// stream, its stderr is kept (the tail) for messages.
type execStream struct {
	ws     *wsConn
	v5     bool
	out    *io.PipeReader
	outW   *io.PipeWriter
	stderr *procs.Tail

	mu     sync.Mutex
	status error // the exec's outcome, from channel 3
	done   chan struct{}
	once   sync.Once
}

// exec starts argv in a pod's container.
func (a *apiClient) exec(ctx context.Context, ns, pod, container string, argv []string) (*execStream, error) {
	q := url.Values{"container": {container}, "stdin": {"true"}, "stdout": {"true"}, "stderr": {"true"}}
	for _, arg := range argv {
		q.Add("command", arg)
	}
	req, err := a.request(ctx, http.MethodGet, fmt.Sprintf("/api/v1/namespaces/%s/pods/%s/exec%s", ns, pod, query(q)), nil)
	if err != nil {
		return nil, err
	}
	a.requests.add("exec")
	ws, err := wsHandshake(a.upgrade, req, []string{protocolV5, protocolV4})
	if err != nil {
		return nil, fmt.Errorf("exec in pod %s: %w", pod, err)
	}
	r, w := io.Pipe()
	s := &execStream{ws: ws, v5: ws.protocol == protocolV5, out: r, outW: w, stderr: procs.NewTail(8 << 10), done: make(chan struct{})}
	go s.readLoop()
	go s.keepalive(keepaliveEvery)
	return s, nil
}

// keepaliveEvery is how often an exec stream is pinged: load balancers and
// proxies between the runner and the API server drop connections idle for
// minutes, and a rollout may think (or wait on its model) for longer.
const keepaliveEvery = 30 * time.Second

// keepalive pings the server until the stream ends.
func (s *execStream) keepalive(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			if s.ws.writeFrame(opPing, nil) != nil {
				return
			}
		}
	}
}

func (s *execStream) readLoop() {
	defer close(s.done)
	for {
		msg, err := s.ws.readMessage()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.EOF
			}
			s.outW.CloseWithError(err)
			return
		}
		if len(msg) == 0 {
			continue
		}
		ch, data := msg[0], msg[1:]
		switch ch {
		case chanStdout:
			if len(data) > 0 {
				if _, err := s.outW.Write(data); err != nil {
					return // the reader is gone
				}
			}
		case chanStderr:
			_, _ = s.stderr.Write(data)
		case chanError:
			if err := execStatus(data); err != nil {
				s.mu.Lock()
				s.status = err
				s.mu.Unlock()
			}
		}
	}
}

// execStatus reads the exec's final Status: nil for Success.
func execStatus(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	var st struct {
		Status  string `json:"status"`
		Message string `json:"message"`
		Reason  string `json:"reason"`
		Details struct {
			Causes []struct {
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"causes"`
		} `json:"details"`
	}
	if json.Unmarshal(data, &st) != nil {
		return fmt.Errorf("exec: %s", strings.TrimSpace(string(data)))
	}
	if st.Status == "Success" {
		return nil
	}
	for _, c := range st.Details.Causes {
		if c.Reason == "ExitCode" {
			return fmt.Errorf("exit status %s", c.Message)
		}
	}
	return fmt.Errorf("exec: %s", st.Message)
}

// Read reads the process's stdout.
func (s *execStream) Read(p []byte) (int, error) { return s.out.Read(p) }

// Write writes to the process's stdin.
func (s *execStream) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxStdinChunk)]
		msg := make([]byte, 1+len(chunk))
		msg[0] = chanStdin
		copy(msg[1:], chunk)
		if err := s.ws.writeFrame(opBinary, msg); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// CloseStdin tells the process its input ended (v5 only; with v4 the
// process must know where its input ends).
func (s *execStream) CloseStdin() error {
	if !s.v5 {
		return nil
	}
	return s.ws.writeFrame(opBinary, []byte{chanClose, chanStdin})
}

// wait waits for the exec to end and returns its outcome.
func (s *execStream) wait(ctx context.Context) error {
	select {
	case <-s.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status != nil && s.stderr.String() != "" {
		return fmt.Errorf("%w: %s", s.status, strings.TrimSpace(s.stderr.String()))
	}
	return s.status
}

// Close ends the stream (and with it the process's stdin and stdout).
func (s *execStream) Close() error {
	var err error
	s.once.Do(func() {
		err = s.ws.close()
		s.out.Close()
	})
	return err
}

// Diagnostics is the end of what the process wrote on stderr, and how the
// exec ended.
func (s *execStream) Diagnostics() string {
	s.mu.Lock()
	status := s.status
	s.mu.Unlock()
	d := strings.TrimSpace(s.stderr.String())
	if status != nil {
		if d != "" {
			d += "; "
		}
		d += status.Error()
	}
	return d
}
