package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/rlmrun/rlmrun/backends/protocol"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

func testServer(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	s := NewServer(Limits{})
	s.Register(&Rollout{
		Key:    "r1",
		Secret: "secret-one",
		Tools: map[string]ToolFunc{
			"echo": func(_ context.Context, args []any, kwargs map[string]any) (any, []string, error) {
				return map[string]any{"args": args, "kwargs": kwargs}, []string{"printed"}, nil
			},
			"broken": func(context.Context, []any, map[string]any) (any, []string, error) {
				return nil, nil, &wire.ToolError{Msg: "tool broken failed: boom"}
			},
			"picky": func(context.Context, []any, map[string]any) (any, []string, error) {
				return nil, nil, &wire.BadRequest{Msg: "picky() missing 1 required argument(s): 'x'"}
			},
		},
		Chat: func(_ context.Context, body []byte) (any, error) {
			return map[string]any{"echo": json.RawMessage(body)}, nil
		},
	})
	s.Register(&Rollout{Key: "r2", Secret: "secret-two", Tools: map[string]ToolFunc{}})
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return s, hs
}

func post(t *testing.T, url, secret, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("reply is not JSON: %q", b)
	}
	return resp.StatusCode, out
}

func TestServerRoutes(t *testing.T) {
	_, hs := testServer(t)
	tools := hs.URL + "/rollout/r1/v1/rlm/tools"
	cases := []struct {
		name, url, secret, body string
		status                  int
		errIn                   string
	}{
		{"no secret", tools, "", `{"tool_name":"echo"}`, 401, "secret"},
		{"wrong secret", tools, "nope", `{"tool_name":"echo"}`, 401, "secret"},
		{"another rollout's secret", tools, "secret-two", `{"tool_name":"echo"}`, 401, "secret"},
		{"unknown rollout", hs.URL + "/rollout/zz/v1/rlm/tools", "secret-one", `{"tool_name":"echo"}`, 404, "Rollout not found"},
		{"unknown route", hs.URL + "/rollout/r1/v1/other", "secret-one", `{}`, 404, "not found"},
		{"unknown tool", tools, "secret-one", `{"tool_name":"nope"}`, 404, "Tool 'nope' not found"},
		{"malformed body", tools, "secret-one", `{"tool_name":`, 400, "Invalid JSON"},
		{"no tool name", tools, "secret-one", `{"args":[]}`, 400, "Tool name not provided"},
		{"pickle", tools, "secret-one", `{"tool_name":"echo","serialization":"pickle"}`, 400, "serialization"},
		{"bad arguments", tools, "secret-one", `{"tool_name":"picky"}`, 400, "missing 1 required"},
		{"tool failed", tools, "secret-one", `{"tool_name":"broken"}`, 500, "boom"},
		{"oversized body", tools, "secret-one", `{"tool_name":"echo","args":["` + strings.Repeat("x", MaxBody) + `"]}`, 413, "over"},
		{"other rollout's tools", hs.URL + "/rollout/r2/v1/rlm/tools", "secret-two", `{"tool_name":"echo"}`, 404, "Tool 'echo' not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(t, tc.url, tc.secret, tc.body)
			if status != tc.status {
				t.Errorf("status %d, want %d (%v)", status, tc.status, body)
			}
			if msg, _ := body["error"].(string); !strings.Contains(msg, tc.errIn) {
				t.Errorf("error %q lacks %q", msg, tc.errIn)
			}
		})
	}
	status, body := post(t, tools, "secret-one", `{"tool_name":"echo","args":[1,"a"],"kwargs":{"k":true}}`)
	if status != 200 || body["print_lines"].([]any)[0] != "printed" {
		t.Fatalf("success: %d %v", status, body)
	}
	res := body["result"].(map[string]any)
	if res["args"].([]any)[1] != "a" || res["kwargs"].(map[string]any)["k"] != true {
		t.Errorf("result %v", res)
	}
	status, body = post(t, hs.URL+"/rollout/r1/v1/chat/completions", "secret-one", `{"messages":[]}`)
	if status != 200 || body["echo"] == nil {
		t.Errorf("chat: %d %v", status, body)
	}
	resp, err := http.Get(tools)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", resp.StatusCode)
	}
}

// TestServeOverYamux serves the handler on a yamux session, as the runner
// does for every agent: each stream the other end opens is one connection.
func TestServeOverYamux(t *testing.T) {
	s, _ := testServer(t)
	a, b := net.Pipe()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	host, err := yamux.Server(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	remote, err := yamux.Client(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(host) }()
	client := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return remote.Open()
	}}}
	req, _ := http.NewRequest(http.MethodPost, "http://agent/rollout/r1/v1/rlm/tools", strings.NewReader(`{"tool_name":"echo"}`))
	req.Header.Set("Authorization", "Bearer secret-one")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	remote.Close()
	host.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return when the session closed")
	}
}

func TestSecretsAreUnique(t *testing.T) {
	a, b := NewSecret(), NewSecret()
	if a == b || len(a) != 48 {
		t.Fatalf("secrets %q %q", a, b)
	}
}

// TestHeldRequestsAreBounded is one sandbox holding 64 requests that
// declare 15 MB bodies and send most of them: the server buffers a bounded
// amount for it, and another rollout's calls go on meanwhile.
func TestHeldRequestsAreBounded(t *testing.T) {
	s, _ := testServer(t)
	session := func() (*yamux.Session, *yamux.Session) {
		a, b := net.Pipe()
		host, err := yamux.Server(a, protocol.YamuxConfig(io.Discard))
		if err != nil {
			t.Fatal(err)
		}
		remote, err := yamux.Client(b, protocol.YamuxConfig(io.Discard))
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(host)
		t.Cleanup(func() { remote.Close(); host.Close() })
		return host, remote
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	_, attacker := session()
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	for i := 0; i < 64; i++ {
		go func() {
			// Opens beyond what the server accepts block in yamux itself.
			st, err := attacker.Open()
			if err != nil {
				return
			}
			fmt.Fprintf(st, "POST /rollout/r1/v1/rlm/tools HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer secret-one\r\nContent-Length: 15000000\r\n\r\n")
			for j := 0; j < 14; j++ {
				if _, err := st.Write(chunk); err != nil {
					return
				}
			}
			<-make(chan struct{}) // held, never finished
		}()
	}
	time.Sleep(2 * time.Second) // let the server take in all it will
	// Meanwhile another rollout's call is answered.
	_, other := session()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return other.Open()
	}}}
	req, _ := http.NewRequest(http.MethodPost, "http://agent/rollout/r2/v1/rlm/tools", strings.NewReader(`{"tool_name":"none"}`))
	req.Header.Set("Authorization", "Bearer secret-two")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("another rollout's call during the attack: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound { // its tool does not exist: answered
		t.Errorf("another rollout's call: HTTP %d", resp.StatusCode)
	}
	grown := int64(heap()) - int64(before)
	t.Logf("heap grew %d MB while 64 x 15 MB requests were held", grown>>20)
	if grown > 100<<20 {
		t.Fatalf("the server holds %d MB for one sandbox's held requests", grown>>20)
	}
}

// A body declared larger than allowed is refused before it is read.
func TestOversizedBodyRefusedEarly(t *testing.T) {
	s := NewServer(Limits{})
	s.Register(&Rollout{Key: "r", Secret: "k", Tools: map[string]ToolFunc{}})
	hs := httptest.NewServer(s)
	defer hs.Close()
	conn, err := net.Dial("tcp", hs.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /rollout/r/v1/rlm/tools HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: %d\r\n\r\n", int64(MaxBody)+1)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no early answer: %v", err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// interception_url may carry a path: the routes are served under it.
func TestServeURLUnderPrefix(t *testing.T) {
	s, _ := testServer(t)
	l, prefix, err := ListenURL("http://127.0.0.1:0/base/path")
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeURL(l, prefix)
	defer s.Close()
	status, body := post(t, "http://"+l.Addr().String()+"/base/path/rollout/r1/v1/rlm/tools", "secret-one", `{"tool_name":"echo"}`)
	if status != 200 || body["result"] == nil {
		t.Fatalf("under the prefix: %d %v", status, body)
	}
	if status, _ := post(t, "http://"+l.Addr().String()+"/rollout/r1/v1/rlm/tools", "secret-one", `{"tool_name":"echo"}`); status != 404 {
		t.Errorf("outside the prefix: %d", status)
	}
}
