package agent

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rlmrun/rlmrun/backends/toolcmd"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// Root tools reach the REPL two ways. Each is a command on PATH (a link to
// this binary, which answers under the tool's name), so scripts, xargs and
// subprocesses can call it. In the Bash REPL itself a shell function of the
// same name takes precedence: it hands the command line to the agent over a
// loopback connection (bash's /dev/tcp, no process started), the agent runs
// the very same toolcmd code, writes the output to two files, and the
// function prints them. Starting a Go binary per call costs more than the
// whole call is allowed to.

// toolURL is the root-tool route the worker uses.
func (a *Agent) toolURL() string {
	return wire.RolloutPrefix(a.base, a.init.RolloutKey) + wire.ToolsRoute
}

// toolTimeout bounds one tool call made from the REPL.
func (a *Agent) toolTimeout() time.Duration {
	if a.init.ToolTimeoutMS > 0 {
		return time.Duration(a.init.ToolTimeoutMS) * time.Millisecond
	}
	return wire.DefaultToolTimeout
}

// caller calls tools like the worker would, but through the session itself
// when there is a tunnel (no loopback hop).
func (a *Agent) caller() toolcmd.Caller {
	client := &http.Client{Timeout: a.toolTimeout()}
	if a.init.BaseURL == "" {
		client.Transport = &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return a.session.Open()
			},
			MaxIdleConns:    4,
			IdleConnTimeout: 30 * time.Second,
		}
	}
	return toolcmd.HTTPCaller(client, a.toolURL(), a.init.Secret)
}

// startToolPort listens for the Bash functions' calls.
func (a *Agent) startToolPort() error {
	ln := a.preTool
	a.preTool = nil
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return fmt.Errorf("tool port: %w", err)
		}
	}
	a.toolPort = ln
	dir := filepath.Join(a.private, "tools")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	call := a.caller()
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go a.serveToolConn(c, call, filepath.Join(dir, strconv.FormatInt(n.Add(1), 10)))
		}
	}()
	return nil
}

// serveToolConn answers one Bash function call. The request is NUL-separated:
// secret, tool, argc, args..., "1" and stdin or "0". The reply is the exit
// status and the paths of the stdout and stderr files, NUL-terminated; the
// files go when the function closes the connection.
func (a *Agent) serveToolConn(c net.Conn, call toolcmd.Caller, base string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(a.toolTimeout() + 30*time.Second))
	br := bufio.NewReaderSize(c, 64<<10)
	field := func() (string, error) {
		s, err := br.ReadString(0)
		return strings.TrimSuffix(s, "\x00"), err
	}
	secret, err := field()
	if err != nil || subtle.ConstantTimeCompare([]byte(secret), []byte(a.init.Secret)) != 1 {
		return
	}
	name, err := field()
	if err != nil {
		return
	}
	argcS, err := field()
	argc, aerr := strconv.Atoi(argcS)
	if err != nil || aerr != nil || argc < 0 || argc > 1<<20 {
		return
	}
	argv := make([]string, argc)
	for i := range argv {
		if argv[i], err = field(); err != nil {
			return
		}
	}
	hasStdin, err := field()
	if err != nil {
		return
	}
	var stdin func() (string, error)
	if hasStdin == "1" {
		s, err := field()
		if err != nil && !errors.Is(err, io.EOF) {
			return
		}
		stdin = func() (string, error) { return s, nil }
	}
	ctx, cancel := context.WithTimeout(context.Background(), a.toolTimeout())
	res := toolcmd.Run(ctx, name, argv, stdin, call)
	cancel()
	out, errf := base+".out", base+".err"
	defer os.Remove(out)
	defer os.Remove(errf)
	if os.WriteFile(out, []byte(res.Stdout), 0o600) != nil || os.WriteFile(errf, []byte(res.Stderr), 0o600) != nil {
		return
	}
	if _, err := fmt.Fprintf(c, "%d\x00%s\x00%s\x00", res.Code, out, errf); err != nil {
		return
	}
	// Wait until the function has read the files and hung up.
	_, _ = io.Copy(io.Discard, br)
}

// bashToolFunctions defines the REPL's tool functions. The stdin rule is
// toolcmd.NeedsStdin's; a function that cannot reach the agent falls back to
// the PATH command.
func (a *Agent) bashToolFunctions() string {
	if a.toolPort == nil || len(a.init.Tools) == 0 {
		return ""
	}
	port := a.toolPort.Addr().(*net.TCPAddr).Port
	var b strings.Builder
	fmt.Fprintf(&b, `__rlm_tool() {
  local __n=$1; shift
  local __i __j __a __pos=0 __lines=0 __json=0 __payload=0 __need=0 __in= __fd __code __of __ef __o __e
  for ((__i = 1; __i <= $#; __i++)); do
    __a=${!__i}
    if [[ $__a == --lines ]]; then __lines=1
    elif [[ $__a == --json ]]; then
      __json=1; __j=$((__i + 1))
      if ((__j <= $#)) && [[ ${!__j} != --* ]]; then __payload=1; __i=$__j; fi
    else __pos=$((__pos + 1)); fi
  done
  if ((__lines)) || ((__json && !__payload)); then __need=1; fi
  if [[ $__n == %s ]] && ((!__json && !__lines && __pos == 0)); then __need=1; fi
  if ((__need)); then IFS= builtin read -r -d '' __in; fi
  if ! { exec {__fd}<>/dev/tcp/127.0.0.1/%d; } 2>/dev/null; then command "$__n" "$@"; return; fi
  builtin printf '%%s\0' "$%s" "$__n" "$#" "$@" >&$__fd
  if ((__need)); then builtin printf '1\0%%s\0' "$__in" >&$__fd; else builtin printf '0\0' >&$__fd; fi
  IFS= builtin read -r -d '' __code <&$__fd
  IFS= builtin read -r -d '' __of <&$__fd
  IFS= builtin read -r -d '' __ef <&$__fd
  if [[ -z $__code ]]; then exec {__fd}>&-; builtin printf 'Error: the agent did not answer the call of %%s\n' "$__n" >&2; return 1; fi
  IFS= builtin read -r -d '' __o <"$__of"
  IFS= builtin read -r -d '' __e <"$__ef"
  exec {__fd}>&-
  builtin printf '%%s' "$__o"
  builtin printf '%%s' "$__e" >&2
  return "$__code"
}
`, wire.ReservedToolName, port, wire.EnvSecret)
	for _, t := range a.init.Tools {
		fmt.Fprintf(&b, "%s() { __rlm_tool %s \"$@\"; }\n", t.Name, t.Name)
	}
	return b.String()
}
