package mcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rlmrun/rlmrun/internal/mcptest"
	"github.com/rlmrun/rlmrun/internal/testbin"
)

func TestMain(m *testing.M) {
	mcptest.MainIfServer()
	os.Exit(m.Run())
}

var info = Implementation{Name: "rlmrun-test", Version: "1"}

// startProcess starts argv as a stdio server and connects to it; the
// process ends with the test.
func startProcess(t *testing.T, argv []string, env ...string) (*Client, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = io.Discard
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := ConnectStdio(ctx, out, in, info, nil)
	if err != nil {
		t.Fatalf("connect %v: %v", argv, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, cmd
}

// sdkServer is this test binary as the Go SDK's server.
func sdkServer(t *testing.T) (*Client, *exec.Cmd) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return startProcess(t, []string{self}, mcptest.EnvVar+"=stdio")
}

func callText(t *testing.T, c *Client, name string, args map[string]any) string {
	t.Helper()
	res, err := c.Call(context.Background(), name, args, nil)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var parts []string
	for _, ct := range res.Content {
		parts = append(parts, ct.Text)
	}
	return strings.Join(parts, "")
}

func TestSDKServerOverStdio(t *testing.T) {
	c, _ := sdkServer(t)
	if c.Server.Name != "mcptest" || c.Protocol == "" {
		t.Errorf("server %+v protocol %q", c.Server, c.Protocol)
	}
	tools, err := c.Tools(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Tool{}
	for _, tl := range tools {
		byName[tl.Name] = tl
	}
	if got := byName["add"].ParamNames(); strings.Join(got, ",") != "a,b" {
		t.Errorf("add's parameters in order: %v (%s)", got, byName["add"].InputSchema)
	}
	if got := callText(t, c, "add", map[string]any{"a": 2, "b": 40}); got != "42" {
		t.Errorf("add: %q", got)
	}
	res, err := c.Call(context.Background(), "count", nil, map[string]any{"rlmrun/rollout": "r1", "rlmrun/vars": map[string]any{"word": "w"}})
	if err != nil || res.Content[0].Text != "r1:1:w" {
		t.Errorf("count with _meta: %+v %v", res, err)
	}
	res, err = c.Call(context.Background(), "fail", nil, nil)
	if err != nil || !res.IsError || res.Content[0].Text != "the database is locked" {
		t.Errorf("fail: %+v %v", res, err)
	}
	// A cancelled call is told to the server, and the connection goes on.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err = c.Call(ctx, "nap", map[string]any{"seconds": 30}, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("sleep past its deadline: %v", err)
	}
	if got := callText(t, c, "echo", map[string]any{"text": "still here"}); got != "still here" {
		t.Errorf("after a cancelled call: %q", got)
	}
	// Concurrent calls are told apart by id.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			want := fmt.Sprintf("call %d", i)
			if got := callText(t, c, "echo", map[string]any{"text": want}); got != want {
				t.Errorf("got %q, want %q", got, want)
			}
		}(i)
	}
	wg.Wait()
}

// TestServerDeathFailsCallsInFlight: a server that dies fails the calls
// waiting on it, with why, and the client is Done.
func TestServerDeathFailsCallsInFlight(t *testing.T) {
	c, _ := sdkServer(t)
	waiting := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), "nap", map[string]any{"seconds": 30}, nil)
		waiting <- err
	}()
	time.Sleep(100 * time.Millisecond)
	_, err := c.Call(context.Background(), "crash", nil, nil)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("the crashing call: %v", err)
	}
	select {
	case err := <-waiting:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("the call in flight: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call in flight never ended")
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("not Done")
	}
	if _, err := c.Call(context.Background(), "echo", map[string]any{"text": "x"}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("a call after: %v", err)
	}
}

func TestSDKServerOverHTTP(t *testing.T) {
	srv := httptest.NewServer(mcptest.HTTPHandler())
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ConnectHTTP(ctx, srv.URL, info, HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := callText(t, c, "add", map[string]any{"a": 1, "b": 2}); got != "3" {
		t.Errorf("add: %q", got)
	}
	tools, err := c.Tools(ctx)
	if err != nil || len(tools) < 5 {
		t.Fatalf("%d tools, %v", len(tools), err)
	}
}

// npmServer is the path of an npm reference server's command.
func npmServer(t *testing.T, name string) string {
	t.Helper()
	p, _ := filepath.Abs(filepath.Join("testdata", "npm", "node_modules", ".bin", name))
	_, err := os.Stat(p)
	_, nodeErr := exec.LookPath("node")
	testbin.Need(t, err == nil && nodeErr == nil, "node and the npm MCP reference servers (scripts/test installs them: npm ci --prefix mcp/testdata/npm)")
	return p
}

func TestReferenceServerEverything(t *testing.T) {
	bin := npmServer(t, "mcp-server-everything")
	check := func(t *testing.T, c *Client) {
		tools, err := c.Tools(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]Tool{}
		for _, tl := range tools {
			names[tl.Name] = tl
		}
		for _, want := range []string{"echo", "get-sum", "get-structured-content"} {
			if _, ok := names[want]; !ok {
				t.Fatalf("no tool %s in %v", want, names)
			}
		}
		if got := names["get-sum"].ParamNames(); strings.Join(got, ",") != "a,b" {
			t.Errorf("get-sum parameters %v", got)
		}
		if got := callText(t, c, "echo", map[string]any{"message": "héllo"}); got != "Echo: héllo" {
			t.Errorf("echo: %q", got)
		}
		if got := callText(t, c, "get-sum", map[string]any{"a": 2, "b": 3}); !strings.Contains(got, "5") {
			t.Errorf("get-sum: %q", got)
		}
		res, err := c.Call(context.Background(), "get-structured-content", map[string]any{"location": "Chicago"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var weather map[string]any
		if err := json.Unmarshal(res.StructuredContent, &weather); err != nil || weather["conditions"] == nil {
			t.Errorf("structured content %s (%v)", res.StructuredContent, err)
		}
		// A call the server refuses (bad arguments) is an answer, not a
		// broken connection.
		if res, err := c.Call(context.Background(), "get-sum", map[string]any{"a": "x"}, nil); err == nil && !res.IsError {
			t.Errorf("bad arguments: %+v", res)
		}
		if err := c.Ping(context.Background()); err != nil {
			t.Errorf("ping: %v", err)
		}
	}
	t.Run("stdio", func(t *testing.T) {
		c, _ := startProcess(t, []string{bin, "stdio"})
		check(t, c)
	})
	t.Run("streamable HTTP", func(t *testing.T) {
		port := freePort(t)
		cmd := exec.Command(bin, "streamableHttp")
		cmd.Env = append(os.Environ(), "PORT="+port)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}()
		url := "http://127.0.0.1:" + port + "/mcp"
		var c *Client
		if !testbin.Within(20*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var err error
			c, err = ConnectHTTP(ctx, url, info, HTTPOptions{})
			return err == nil
		}) {
			t.Fatal("the server never answered")
		}
		defer c.Close()
		check(t, c)
	})
}

func TestReferenceServerFilesystem(t *testing.T) {
	bin := npmServer(t, "mcp-server-filesystem")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "note.txt"), []byte("hello from a file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, _ := startProcess(t, []string{bin, dir})
	got := callText(t, c, "read_text_file", map[string]any{"path": filepath.Join(dir, "note.txt")})
	if !strings.Contains(got, "hello from a file") {
		t.Errorf("read_text_file: %q", got)
	}
	// Outside its folder, the server refuses: an error result.
	res, err := c.Call(context.Background(), "read_text_file", map[string]any{"path": "/etc/passwd"}, nil)
	if err != nil || !res.IsError {
		t.Errorf("outside the folder: %+v %v", res, err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// fakeStdio is a server scripted by a function of each request line.
func fakeStdio(t *testing.T, answer func(msg map[string]any, w io.Writer)) *Client {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go func() {
		defer outW.Close()
		_ = readLines(inR, func(line []byte) {
			var m map[string]any
			if json.Unmarshal(line, &m) == nil {
				answer(m, outW)
			}
		})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ConnectStdio(ctx, outR, inW, info, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func reply(w io.Writer, id any, result any) {
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "result": result})
	_, _ = w.Write(append(b, '\n'))
}

// TestProtocolEdges: pages of tools, the server's own requests and noise,
// a version the client does not speak.
func TestProtocolEdges(t *testing.T) {
	var mu sync.Mutex
	var answered []map[string]any
	c := fakeStdio(t, func(m map[string]any, w io.Writer) {
		switch m["method"] {
		case "initialize":
			reply(w, m["id"], map[string]any{"protocolVersion": "2025-03-26", "serverInfo": map[string]any{"name": "fake", "version": "0"}, "capabilities": map[string]any{}})
		case "tools/list":
			p, _ := m["params"].(map[string]any)
			if p["cursor"] == nil {
				// Noise, a notification and requests of its own first.
				fmt.Fprintln(w, "not json at all")
				fmt.Fprintln(w, `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}`)
				fmt.Fprintln(w, `{"jsonrpc":"2.0","id":"s1","method":"ping"}`)
				fmt.Fprintln(w, `{"jsonrpc":"2.0","id":"s2","method":"sampling/createMessage","params":{}}`)
				reply(w, m["id"], map[string]any{"tools": []any{map[string]any{"name": "a", "inputSchema": map[string]any{"type": "object"}}}, "nextCursor": "p2"})
				return
			}
			reply(w, m["id"], map[string]any{"tools": []any{map[string]any{"name": "b", "inputSchema": json.RawMessage(`{"type":"object","properties":{"z":{},"y":{},"x":{}}}`)}}})
		default:
			if m["id"] != nil && m["method"] == nil {
				mu.Lock()
				answered = append(answered, m)
				mu.Unlock()
			}
		}
	})
	if c.Protocol != "2025-03-26" {
		t.Errorf("protocol %q", c.Protocol)
	}
	tools, err := c.Tools(context.Background())
	if err != nil || len(tools) != 2 || tools[1].Name != "b" || strings.Join(tools[1].ParamNames(), "") != "zyx" {
		t.Fatalf("tools %+v %v", tools, err)
	}
	if !testbin.Within(5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(answered) == 2 }) {
		t.Fatalf("the server's requests were not answered: %v", answered)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range answered {
		switch a["id"] {
		case "s1":
			if a["result"] == nil {
				t.Errorf("ping answer %v", a)
			}
		case "s2":
			if e, _ := a["error"].(map[string]any); e == nil || e["code"] != float64(-32601) {
				t.Errorf("sampling answer %v", a)
			}
		}
	}

	// A server that speaks another protocol is refused at once.
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go func() {
		_ = readLines(inR, func(line []byte) {
			var m map[string]any
			_ = json.Unmarshal(line, &m)
			if m["method"] == "initialize" {
				reply(outW, m["id"], map[string]any{"protocolVersion": "1999-01-01"})
			}
		})
	}()
	_, err = ConnectStdio(context.Background(), outR, inW, info, nil)
	if err == nil || !strings.Contains(err.Error(), `"1999-01-01"`) {
		t.Errorf("an unknown protocol: %v", err)
	}
}

// TestHostileServer: a message past the limit ends the connection rather
// than the memory; an answer that is not a result fails only its call.
func TestHostileServer(t *testing.T) {
	c := fakeStdio(t, func(m map[string]any, w io.Writer) {
		switch m["method"] {
		case "initialize":
			reply(w, m["id"], map[string]any{"protocolVersion": ProtocolVersion, "serverInfo": map[string]any{"name": "evil"}})
		case "tools/list":
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%v,"result":"not an object"}`+"\n", m["id"])
		case "tools/call":
			_, _ = w.Write([]byte(`{"jsonrpc":"2.0","result":"`))
			chunk := []byte(strings.Repeat("x", 1<<20))
			for i := 0; i < MaxMessage>>20+2; i++ {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}
	})
	if _, err := c.Tools(context.Background()); err == nil || !strings.Contains(err.Error(), "malformed result") {
		t.Errorf("a malformed result: %v", err)
	}
	_, err := c.Call(context.Background(), "big", nil, nil)
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "over") {
		t.Errorf("a message past the limit: %v", err)
	}
}

func TestHTTPSessionAndErrors(t *testing.T) {
	var mu sync.Mutex
	var sessions, versions []string
	deleted := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sessions = append(sessions, r.Header.Get("Mcp-Session-Id"))
		versions = append(versions, r.Header.Get("MCP-Protocol-Version"))
		if r.Method == http.MethodDelete {
			deleted = true
		}
		mu.Unlock()
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusOK)
			return
		}
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		switch m["method"] {
		case "initialize":
			w.Header().Set("Mcp-Session-Id", "sess-1")
			w.Header().Set("Content-Type", "application/json")
			reply(w, m["id"], map[string]any{"protocolVersion": ProtocolVersion, "serverInfo": map[string]any{"name": "h"}})
		case "notifications/initialized":
			w.WriteHeader(http.StatusAccepted)
		case "tools/call":
			// SSE: a notification, then the answer.
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n")
			b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": m["id"], "result": map[string]any{"content": []any{map[string]any{"type": "text", "text": "line1\nline2"}}}})
			fmt.Fprintf(w, "id: 7\ndata: %s\n\n", b)
		default:
			http.Error(w, "no such method", http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	c, err := ConnectHTTP(context.Background(), srv.URL, info, HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Call(context.Background(), "x", nil, nil)
	if err != nil || res.Content[0].Text != "line1\nline2" {
		t.Fatalf("SSE answer %+v %v", res, err)
	}
	if _, err := c.Tools(context.Background()); err == nil || !strings.Contains(err.Error(), "HTTP 400") {
		t.Errorf("an HTTP error: %v", err)
	}
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	if sessions[0] != "" || sessions[1] != "sess-1" || versions[0] != "" || versions[1] != ProtocolVersion || !deleted {
		t.Errorf("sessions %v, versions %v, deleted %v", sessions, versions, deleted)
	}
}
