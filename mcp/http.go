package mcp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"
)

// streamable is the streamable HTTP transport: every message is a POST to
// the server's endpoint; a request's answer comes back as the response
// body, JSON or an SSE stream (which may carry the server's own messages
// first). The server may give a session id in the answer to initialize;
// it is sent back with every message, and a DELETE ends the session.
type streamable struct {
	url     string
	client  *http.Client
	headers map[string]string

	mu        sync.Mutex
	sessionID string
	version   string
	s         *session
	streams   sync.WaitGroup
	stop      context.CancelFunc
	ctx       context.Context
}

// HTTPOptions configure a streamable HTTP connection.
type HTTPOptions struct {
	// Client is the HTTP client (default: one of its own).
	Client *http.Client
	// Headers are sent with every request (authorization, ...).
	Headers map[string]string
}

// ConnectHTTP initialises a session with the server at url.
func ConnectHTTP(ctx context.Context, url string, info Implementation, o HTTPOptions) (*Client, error) {
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}}
	}
	s := newSession()
	bg, stop := context.WithCancel(context.Background())
	t := &streamable{url: url, client: o.Client, headers: o.Headers, s: s, ctx: bg, stop: stop}
	s.t = t
	c, err := handshake(ctx, s, info, func(v string) {
		t.mu.Lock()
		t.version = v
		t.mu.Unlock()
	})
	if err != nil {
		t.close()
		return nil, err
	}
	return c, nil
}

func (t *streamable) send(ctx context.Context, msg []byte, request bool) error {
	// The exchange ends with the call (its answer is all it carries for
	// this client) or with the transport.
	rctx, cancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(t.ctx, cancel)
	done := func() {
		unhook()
		cancel()
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, t.url, bytes.NewReader(msg))
	if err != nil {
		done()
		return err
	}
	t.header(req)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := t.client.Do(req)
	if err != nil {
		done()
		return fmt.Errorf("MCP POST %s: %w", t.url, err)
	}
	if id := resp.Header.Get("Mcp-Session-Id"); id != "" {
		t.mu.Lock()
		if t.sessionID == "" {
			t.sessionID = id
		}
		t.mu.Unlock()
	}
	switch {
	case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusNoContent:
		resp.Body.Close()
		done()
		return nil
	case resp.StatusCode == http.StatusNotFound && t.hasSession():
		resp.Body.Close()
		done()
		err := fmt.Errorf("%w: the server ended the session (HTTP 404)", ErrClosed)
		t.s.fail(err)
		return err
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		done()
		return fmt.Errorf("MCP POST %s: HTTP %d: %s", t.url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if ct == "text/event-stream" {
		t.streams.Add(1)
		go func() {
			defer t.streams.Done()
			defer done()
			defer resp.Body.Close()
			_ = readEvents(resp.Body, t.s.receive)
		}()
		return nil
	}
	defer done()
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxMessage+1))
	if err != nil {
		return fmt.Errorf("MCP POST %s: %w", t.url, err)
	}
	if len(body) > MaxMessage {
		return fmt.Errorf("MCP POST %s: an answer over %d bytes", t.url, MaxMessage)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if request {
			return fmt.Errorf("MCP POST %s: an empty answer to a request", t.url)
		}
		return nil
	}
	// A batch of answers is a JSON array.
	if trimmed := bytes.TrimSpace(body); trimmed[0] == '[' {
		var batch []json.RawMessage
		if err := json.Unmarshal(trimmed, &batch); err != nil {
			return fmt.Errorf("MCP POST %s: malformed answer: %w", t.url, err)
		}
		for _, m := range batch {
			t.s.receive(m)
		}
		return nil
	}
	t.s.receive(body)
	return nil
}

func (t *streamable) hasSession() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sessionID != ""
}

func (t *streamable) header(req *http.Request) {
	for k, v := range t.headers {
		req.Header.Set(k, v)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sessionID != "" {
		req.Header.Set("Mcp-Session-Id", t.sessionID)
	}
	if t.version != "" {
		req.Header.Set("MCP-Protocol-Version", t.version)
	}
}

// close ends the session on the server (DELETE) and every stream.
func (t *streamable) close() error {
	if t.hasSession() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, t.url, nil)
		if err == nil {
			t.header(req)
			if resp, err := t.client.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		cancel()
	}
	t.stop()
	t.streams.Wait()
	return nil
}

// readEvents hands the data of every SSE event of r to f.
func readEvents(r io.Reader, f func([]byte)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxMessage)
	var data []byte
	flush := func() {
		if len(data) > 0 {
			f(data)
			data = nil
		}
	}
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		if v, ok := strings.CutPrefix(line, "data:"); ok {
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, strings.TrimPrefix(v, " ")...)
		}
		// event:, id:, retry: and comments carry nothing this client uses.
	}
	flush()
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
