package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/backends/toolcmd"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

// toolName reports the root tool this process was started as: inside a
// REPL, every root tool is a link to this binary named after the tool.
func toolName(argv0 string, getenv func(string) string) (string, bool) {
	name := filepath.Base(argv0)
	if name == "rlmrun" || getenv(wire.EnvRootToolURL) == "" {
		return "", false
	}
	var names []string
	if json.Unmarshal([]byte(getenv(wire.EnvRootToolNames)), &names) != nil {
		return "", false
	}
	for _, n := range names {
		if n == name {
			return name, true
		}
	}
	return "", false
}

// runTool runs one root-tool command line from the REPL's environment.
func runTool(name string, argv []string, stdin io.Reader, stdout, stderr io.Writer) int {
	client := &http.Client{Timeout: wire.ToolTimeout(os.Getenv(wire.EnvToolTimeoutMS))}
	call := toolcmd.HTTPCaller(client, os.Getenv(wire.EnvRootToolURL), os.Getenv(wire.EnvSecret))
	read := func() (string, error) {
		b, err := io.ReadAll(stdin)
		return string(b), err
	}
	res := toolcmd.Run(context.Background(), name, argv, read, call)
	fmt.Fprint(stdout, res.Stdout)
	fmt.Fprint(stderr, res.Stderr)
	return res.Code
}

func toolCommand() *cli.Command {
	return &cli.Command{
		Name:            "tool",
		Usage:           "call a root tool from inside a REPL (what the tool commands on PATH run)",
		UsageText:       "rlmrun tool NAME [ARGS...]\n\nEXAMPLE:\n   rlmrun tool decrypt_position abc.txt CODE   (inside a REPL; same as: decrypt_position abc.txt CODE)",
		Hidden:          true,
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return withCode(exitUsage, fmt.Errorf("tool needs a NAME"))
			}
			code := runTool(c.Args().First(), c.Args().Tail(), os.Stdin, c.App.Writer, c.App.ErrWriter)
			if code != 0 {
				return withCode(code, nil)
			}
			return nil
		},
	}
}
