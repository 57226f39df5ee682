package tunnel

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

func testServer(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	s := NewServer()
	s.Register(&Rollout{
		Key:    "r1",
		Secret: "secret-one",
		Tools: map[string]ToolFunc{
			"echo": func(_ context.Context, args []any, kwargs map[string]any) (any, []string, error) {
				return map[string]any{"args": args, "kwargs": kwargs}, []string{"printed"}, nil
			},
			"broken": func(context.Context, []any, map[string]any) (any, []string, error) {
				return nil, nil, &ToolError{Msg: "tool broken failed: boom"}
			},
			"picky": func(context.Context, []any, map[string]any) (any, []string, error) {
				return nil, nil, &BadRequest{Msg: "picky() missing 1 required argument(s): 'x'"}
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
