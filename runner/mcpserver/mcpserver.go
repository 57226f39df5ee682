// Package mcpserver keeps an MCP server up for a run or a rollout: it
// starts the server's process as a host command (the spec's folder, a
// scrubbed environment, contained so that nothing outlives the run, its
// stderr to a log) or connects to its URL, initialises it, lists its
// tools, and restarts it with back-off when it dies. A call in flight when
// the server dies gets an error; calls made while it restarts wait for it.
package mcpserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/rlmrun/rlmrun/mcp"
	"github.com/rlmrun/rlmrun/runner/hostcmd"
)

// Config is one server.
type Config struct {
	// Name names the server in messages.
	Name string
	// Command is the stdio server's argv; URL the streamable HTTP server's
	// endpoint. One of them.
	Command []string
	URL     string
	// Dir and Env are the process's working directory and whole
	// environment (see hostcmd.Environ).
	Dir string
	Env []string
	// StartupTimeout bounds starting and initialising the server.
	StartupTimeout time.Duration
	// Log receives the server's stderr and what rlmrun says of the server
	// (restarts). It must be safe for concurrent use.
	Log io.Writer
	// Spawner starts the process.
	Spawner *hostcmd.Spawner
	// Client names rlmrun to the server.
	Client mcp.Implementation
	// MinBackoff and MaxBackoff bound the wait between restarts.
	MinBackoff, MaxBackoff time.Duration
}

// Server is a running server.
type Server struct {
	cfg   Config
	tools []mcp.Tool

	mu       sync.Mutex
	cur      *conn
	ready    chan struct{} // closed when cur is set
	closed   bool
	restarts int

	stop chan struct{}
	done chan struct{}
}

// conn is one life of the server: its connection and its process.
type conn struct {
	client *mcp.Client
	proc   *hostcmd.Process // nil for a URL
}

// ErrClosed is a call on a server that was closed.
var ErrClosed = errors.New("the MCP server was closed")

// Start starts (or connects to) the server, initialises it and lists its
// tools, within cfg.StartupTimeout and ctx.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	c, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	sctx, cancel := startupCtx(ctx, cfg.StartupTimeout)
	tools, err := c.client.Tools(sctx)
	cancel()
	if err != nil {
		c.end()
		return nil, fmt.Errorf("MCP server %s: %w", cfg.Name, err)
	}
	s := &Server{cfg: cfg, tools: tools, cur: c, ready: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	close(s.ready)
	go s.supervise(c)
	return s, nil
}

func startupCtx(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// connect starts one life of the server.
func connect(ctx context.Context, cfg Config) (*conn, error) {
	sctx, cancel := startupCtx(ctx, cfg.StartupTimeout)
	defer cancel()
	if cfg.URL != "" {
		client, err := mcp.ConnectHTTP(sctx, cfg.URL, cfg.Client, mcp.HTTPOptions{})
		if err != nil {
			return nil, fmt.Errorf("MCP server %s: %s: %w", cfg.Name, cfg.URL, startErr(sctx, cfg, err))
		}
		return &conn{client: client}, nil
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	p, err := cfg.Spawner.Start(hostcmd.Cmd{Argv: cfg.Command, Dir: cfg.Dir, Env: cfg.Env, Stdin: inR, Stdout: outW, Stderr: cfg.Log})
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("MCP server %s: start %s: %w", cfg.Name, cfg.Command[0], err)
	}
	exited := func() error {
		// Its output ended: say how it exited, if it did.
		select {
		case <-p.Exited():
			if err := p.Err(); err != nil {
				return errors.New(hostcmd.Describe(err))
			}
			return errors.New("exit status 0")
		case <-time.After(time.Second):
			return nil
		}
	}
	client, err := mcp.ConnectStdio(sctx, outR, inW, cfg.Client, exited)
	if err != nil {
		p.Kill()
		<-p.Exited()
		return nil, fmt.Errorf("MCP server %s: %w", cfg.Name, startErr(sctx, cfg, err))
	}
	return &conn{client: client, proc: p}, nil
}

func startErr(sctx context.Context, cfg Config, err error) error {
	if errors.Is(sctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("not ready within startup_timeout (%s): %w", cfg.StartupTimeout, err)
	}
	return err
}

// end closes a life of the server: its connection, then its process and
// everything it started.
func (c *conn) end() {
	_ = c.client.Close()
	if c.proc != nil {
		select {
		case <-c.proc.Exited():
		case <-time.After(100 * time.Millisecond):
			// A stdio server ends when its stdin closes; one that does
			// not is killed.
			c.proc.Kill()
			<-c.proc.Exited()
		}
	}
}

// Tools are the tools the server listed when it started.
func (s *Server) Tools() []mcp.Tool { return s.tools }

// Restarts is how often the server was restarted.
func (s *Server) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// supervise restarts the server whenever its connection is lost, with
// exponential back-off and jitter, until Close.
func (s *Server) supervise(c *conn) {
	defer close(s.done)
	backoff := s.cfg.MinBackoff
	for {
		select {
		case <-s.stop:
			return
		case <-c.client.Done():
		}
		why := c.client.Err()
		c.end()
		s.mu.Lock()
		s.cur, s.ready = nil, make(chan struct{})
		s.mu.Unlock()
		for {
			wait := backoff + time.Duration(rand.Int64N(int64(backoff)/4+1))
			fmt.Fprintf(s.cfg.Log, "[rlmrun] MCP server %s lost (%v); restarting in %s\n", s.cfg.Name, why, wait.Round(time.Millisecond))
			select {
			case <-s.stop:
				return
			case <-time.After(wait):
			}
			backoff = min(backoff*2, s.cfg.MaxBackoff)
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-s.stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			next, err := connect(ctx, s.cfg)
			cancel()
			if err != nil {
				why = err
				continue
			}
			fmt.Fprintf(s.cfg.Log, "[rlmrun] MCP server %s restarted\n", s.cfg.Name)
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				next.end()
				return
			}
			s.cur, c = next, next
			s.restarts++
			close(s.ready)
			s.mu.Unlock()
			backoff = s.cfg.MinBackoff
			break
		}
	}
}

// Call calls a tool, waiting for the server if it is restarting.
func (s *Server) Call(ctx context.Context, name string, args, meta map[string]any) (*mcp.Result, error) {
	for {
		s.mu.Lock()
		cur, ready, closed := s.cur, s.ready, s.closed
		s.mu.Unlock()
		if closed {
			return nil, ErrClosed
		}
		if cur == nil {
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("the MCP server %s is restarting: %w", s.cfg.Name, ctx.Err())
			}
		}
		return cur.client.Call(ctx, name, args, meta)
	}
}

// Close stops the server (and its restarts).
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	cur := s.cur
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	if cur != nil {
		cur.end()
	}
}
