// Package mcptest is an MCP server for tests, built with the official Go
// SDK (so rlmrun's own client is held to the protocol as the SDK speaks
// it): tools that echo, add, count calls per rollout, sleep, fail, crash
// the server, print to stderr and tell their environment.
//
// A test binary becomes the server when RLMRUN_MCPTEST is "stdio": call
// MainIfServer first thing in TestMain, and start the test binary as the
// server's command with that variable set.
package mcptest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// EnvVar makes a test binary the server.
const EnvVar = "RLMRUN_MCPTEST"

// MainIfServer serves MCP on stdin and stdout, and exits, when the process
// was started as the server.
func MainIfServer() {
	if os.Getenv(EnvVar) != "stdio" {
		return
	}
	err := NewServer().Run(context.Background(), &mcp.StdioTransport{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcptest:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// HTTPHandler serves the same server over streamable HTTP.
func HTTPHandler() http.Handler {
	s := NewServer()
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s }, nil)
}

type echoIn struct {
	Text string `json:"text" jsonschema:"what to say back"`
}

type addIn struct {
	A float64 `json:"a"`
	B float64 `json:"b"`
}

type sleepIn struct {
	Seconds float64 `json:"seconds"`
}

type nameIn struct {
	Name string `json:"name"`
}

func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

// NewServer is the test server.
func NewServer() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "mcptest", Version: "1"}, nil)
	instance := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	var mu sync.Mutex
	counts := map[string]int{}
	mcp.AddTool(s, &mcp.Tool{Name: "echo", Description: "Say the text back."}, func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
		return text(in.Text), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "add", Description: "Add two numbers."}, func(ctx context.Context, req *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, any, error) {
		return text(fmt.Sprint(in.A + in.B)), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "count", Description: "Count this rollout's calls."}, func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
		rollout, _ := req.Params.Meta["rlmrun/rollout"].(string)
		vars, _ := req.Params.Meta["rlmrun/vars"].(map[string]any)
		mu.Lock()
		counts[rollout]++
		n := counts[rollout]
		mu.Unlock()
		return text(fmt.Sprintf("%s:%d:%v", rollout, n, vars["word"])), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "nap", Description: "Sleep, then say so."}, func(ctx context.Context, req *mcp.CallToolRequest, in sleepIn) (*mcp.CallToolResult, any, error) {
		select {
		case <-time.After(time.Duration(in.Seconds * float64(time.Second))):
			return text("slept"), nil, nil
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	})
	mcp.AddTool(s, &mcp.Tool{Name: "instance", Description: "This server's own id."}, func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
		return text(instance), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "fail", Description: "Fail as a tool does."}, func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
		r := text("the database is locked")
		r.IsError = true
		return r, nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "crash", Description: "End the server at once."}, func(ctx context.Context, req *mcp.CallToolRequest, in struct{}) (*mcp.CallToolResult, any, error) {
		fmt.Fprintln(os.Stderr, "mcptest: crashing on request")
		os.Exit(3)
		return nil, nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "shout", Description: "Write to stderr, and answer."}, func(ctx context.Context, req *mcp.CallToolRequest, in echoIn) (*mcp.CallToolResult, any, error) {
		fmt.Fprintln(os.Stderr, "mcptest stderr:", in.Text)
		return text("shouted"), nil, nil
	})
	mcp.AddTool(s, &mcp.Tool{Name: "getenv", Description: "An environment variable, the working directory and the pid."}, func(ctx context.Context, req *mcp.CallToolRequest, in nameIn) (*mcp.CallToolResult, any, error) {
		wd, _ := os.Getwd()
		return text(fmt.Sprintf("%s=%q cwd=%s pid=%d", in.Name, os.Getenv(in.Name), wd, os.Getpid())), nil, nil
	})
	return s
}
