// Package mcp is a client of Model Context Protocol servers: JSON-RPC 2.0
// over a server process's stdin and stdout (the stdio transport) or over
// HTTP (the streamable HTTP transport), and the part of the protocol a tool
// user needs: initialize, tools/list (with pagination) and tools/call,
// cancellation, and polite answers to what a server may ask (ping, and
// "method not found" for the rest).
//
// rlmrun speaks the protocol itself rather than through the official Go
// SDK: linking the SDK adds ~2 ms of package initialisation and ~3 ms to
// every rlmrun process start (measured: `rlmrun version`, median of 80
// runs), and every rollout's agent and Bash tool command is that binary.
// The tests hold this client to real servers: the reference servers from
// npm and a server built with the SDK.
package mcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// ProtocolVersion is the revision the client asks for; Supported are those
// it accepts from a server.
const ProtocolVersion = "2025-06-18"

// Supported are the protocol revisions the client speaks.
var supported = []string{"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"}

// MaxMessage bounds one message from a server.
const MaxMessage = 32 << 20

// Implementation names a client or a server.
type Implementation struct {
	Name    string `json:"name"`
	Title   string `json:"title,omitempty"`
	Version string `json:"version"`
}

// Tool is a tool a server offers.
type Tool struct {
	Name        string          `json:"name"`
	Title       string          `json:"title,omitempty"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"inputSchema"`
}

// ParamNames are the properties of the tool's input schema in the order
// the server wrote them: the order of positional arguments.
func (t Tool) ParamNames() []string { return propertyOrder(t.InputSchema) }

// Content is one piece of a tool's result.
type Content struct {
	Type     string `json:"type"`
	Text     string `json:"text,omitempty"`
	MimeType string `json:"mimeType,omitempty"`
	// Data is base64 (images, audio).
	Data string `json:"data,omitempty"`
	// Resource and URI describe embedded resources and resource links.
	Resource json.RawMessage `json:"resource,omitempty"`
	URI      string          `json:"uri,omitempty"`
	Name     string          `json:"name,omitempty"`
}

// Result is what tools/call returned.
type Result struct {
	Content           []Content       `json:"content"`
	StructuredContent json.RawMessage `json:"structuredContent,omitempty"`
	IsError           bool            `json:"isError,omitempty"`
}

// RPCError is a JSON-RPC error answer.
type RPCError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *RPCError) Error() string {
	return fmt.Sprintf("MCP error %d: %s", e.Code, e.Message)
}

// ErrClosed is a call on a connection that is gone: the server exited, the
// stream ended, or the client was closed.
var ErrClosed = errors.New("the MCP connection is closed")

// message is a JSON-RPC message, any kind.
type message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *RPCError       `json:"error,omitempty"`
}

// transport carries messages to a server; what comes back is handed to
// the session's receive.
type transport interface {
	// send delivers one message. A request's answer (and whatever the
	// server sends meanwhile) arrives through receive.
	send(ctx context.Context, msg []byte, request bool) error
	close() error
}

// session is the JSON-RPC bookkeeping both transports share: ids, calls
// waiting for their answers, and the server's own requests.
type session struct {
	t transport

	mu      sync.Mutex
	next    int64
	pending map[string]chan *message
	lost    error
	done    chan struct{}
}

func newSession() *session {
	return &session{pending: map[string]chan *message{}, done: make(chan struct{})}
}

// receive handles one message from the server.
func (s *session) receive(raw []byte) {
	var m message
	if err := json.Unmarshal(raw, &m); err != nil {
		return // not JSON-RPC: a server's noise is not a reason to fail
	}
	switch {
	case m.Method != "" && len(m.ID) > 0:
		go s.answer(m)
	case m.Method != "":
		// A notification (logging, progress, list changes): nothing to do.
	case len(m.ID) > 0:
		s.mu.Lock()
		ch, ok := s.pending[string(bytes.TrimSpace(m.ID))]
		delete(s.pending, string(bytes.TrimSpace(m.ID)))
		s.mu.Unlock()
		if ok {
			ch <- &m
		}
	}
}

// answer replies to the server's own request: ping is answered, the rest
// (sampling, roots, elicitation) is not offered by this client.
func (s *session) answer(m message) {
	reply := map[string]any{"jsonrpc": "2.0", "id": m.ID}
	if m.Method == "ping" {
		reply["result"] = map[string]any{}
	} else {
		reply["error"] = RPCError{Code: -32601, Message: "method not found: " + m.Method}
	}
	b, _ := json.Marshal(reply)
	_ = s.t.send(context.Background(), b, false)
}

// fail ends the session: every waiting call gets err.
func (s *session) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lost != nil {
		return
	}
	s.lost = err
	for id, ch := range s.pending {
		close(ch)
		delete(s.pending, id)
	}
	close(s.done)
}

func (s *session) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lost
}

// call sends a request and waits for its answer. A cancelled call tells
// the server (notifications/cancelled).
func (s *session) call(ctx context.Context, method string, params, result any) error {
	s.mu.Lock()
	if s.lost != nil {
		err := s.lost
		s.mu.Unlock()
		return err
	}
	s.next++
	id := strconv.FormatInt(s.next, 10)
	ch := make(chan *message, 1)
	s.pending[id] = ch
	s.mu.Unlock()
	forget := func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": json.RawMessage(id), "method": method, "params": params})
	if err != nil {
		forget()
		return err
	}
	if err := s.t.send(ctx, b, true); err != nil {
		forget()
		if lost := s.err(); lost != nil {
			return lost
		}
		return err
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return s.err()
		}
		if m.Error != nil {
			return m.Error
		}
		if result == nil {
			return nil
		}
		if err := json.Unmarshal(m.Result, result); err != nil {
			return fmt.Errorf("MCP %s: malformed result: %w", method, err)
		}
		return nil
	case <-ctx.Done():
		forget()
		_ = s.notify(context.Background(), "notifications/cancelled", map[string]any{"requestId": json.RawMessage(id), "reason": ctx.Err().Error()})
		return ctx.Err()
	}
}

func (s *session) notify(ctx context.Context, method string, params any) error {
	msg := map[string]any{"jsonrpc": "2.0", "method": method}
	if params != nil {
		msg["params"] = params
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	return s.t.send(ctx, b, false)
}

// Client is an initialised connection to one server.
type Client struct {
	s *session
	// Server is what the server says it is; Protocol the revision agreed.
	Server       Implementation
	Protocol     string
	Instructions string
}

// handshake initialises the session (initialize, then
// notifications/initialized).
func handshake(ctx context.Context, s *session, info Implementation, onVersion func(string)) (*Client, error) {
	var res struct {
		ProtocolVersion string          `json:"protocolVersion"`
		ServerInfo      Implementation  `json:"serverInfo"`
		Capabilities    json.RawMessage `json:"capabilities"`
		Instructions    string          `json:"instructions"`
	}
	params := map[string]any{"protocolVersion": ProtocolVersion, "capabilities": map[string]any{}, "clientInfo": info}
	if err := s.call(ctx, "initialize", params, &res); err != nil {
		return nil, fmt.Errorf("initialize: %w", err)
	}
	ok := false
	for _, v := range supported {
		ok = ok || v == res.ProtocolVersion
	}
	if !ok {
		return nil, fmt.Errorf("initialize: the server speaks MCP %q; this client speaks %s", res.ProtocolVersion, strings.Join(supported, ", "))
	}
	if onVersion != nil {
		onVersion(res.ProtocolVersion)
	}
	if err := s.notify(ctx, "notifications/initialized", nil); err != nil {
		return nil, fmt.Errorf("initialized: %w", err)
	}
	return &Client{s: s, Server: res.ServerInfo, Protocol: res.ProtocolVersion, Instructions: res.Instructions}, nil
}

// Tools lists every tool the server offers (following its pages).
func (c *Client) Tools(ctx context.Context) ([]Tool, error) {
	var all []Tool
	cursor := ""
	for page := 0; ; page++ {
		params := map[string]any{}
		if cursor != "" {
			params["cursor"] = cursor
		}
		var res struct {
			Tools      []Tool `json:"tools"`
			NextCursor string `json:"nextCursor"`
		}
		if err := c.s.call(ctx, "tools/list", params, &res); err != nil {
			return nil, fmt.Errorf("tools/list: %w", err)
		}
		all = append(all, res.Tools...)
		if res.NextCursor == "" || page > 1000 {
			return all, nil
		}
		cursor = res.NextCursor
	}
}

// Call calls a tool. meta goes in the request's _meta.
func (c *Client) Call(ctx context.Context, name string, args map[string]any, meta map[string]any) (*Result, error) {
	if args == nil {
		args = map[string]any{}
	}
	params := map[string]any{"name": name, "arguments": args}
	if len(meta) > 0 {
		params["_meta"] = meta
	}
	var res Result
	if err := c.s.call(ctx, "tools/call", params, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Ping checks that the server answers.
func (c *Client) Ping(ctx context.Context) error { return c.s.call(ctx, "ping", map[string]any{}, nil) }

// Done is closed when the connection is lost; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.s.done }

// Err is why the connection was lost (nil while it is up).
func (c *Client) Err() error { return c.s.err() }

// Close ends the connection (it does not stop a server process: its owner
// does).
func (c *Client) Close() error {
	c.s.fail(ErrClosed)
	return c.s.t.close()
}

// propertyOrder reads the keys of a JSON schema's "properties" in the order
// they were written.
func propertyOrder(schema json.RawMessage) []string {
	dec := json.NewDecoder(bytes.NewReader(schema))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil
		}
		if k != "properties" {
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return nil
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('{') {
			return nil
		}
		var names []string
		for dec.More() {
			name, err := dec.Token()
			if err != nil {
				return nil
			}
			s, _ := name.(string)
			names = append(names, s)
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return nil
			}
		}
		return names
	}
	return nil
}
