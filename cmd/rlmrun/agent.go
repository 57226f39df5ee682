package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/backends/agent"
)

// agentCommand is what the runner starts next to the REPL (locally or in a
// sandbox). It speaks the agent protocol on stdin/stdout; never run by hand.
func agentCommand() *cli.Command {
	return &cli.Command{
		Name:      "agent",
		Usage:     "serve one rollout's REPL over stdin/stdout (started by rlmrun itself)",
		UsageText: "rlmrun agent\n\nEXAMPLE:\n   rlmrun agent   (the runner starts it; stdin/stdout carry the agent protocol)",
		Hidden:    true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "language", Usage: "spawn a worker for `LANG` at once (bash, python)"},
			&cli.StringFlag{Name: "python", Usage: "interpreter of the Python worker"},
			&cli.StringFlag{Name: "tmp", Usage: "make the agent's private directory in `DIR`"},
		},
		Action: func(c *cli.Context) error {
			// Ctrl-C is the runner's to handle: it ends agents in order.
			signal.Ignore(syscall.SIGINT)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
			defer stop()
			self, _ := os.Executable()
			err := agent.Run(ctx, agent.Options{
				Conn:     agent.StdioConn{In: os.Stdin, Out: os.Stdout},
				Log:      os.Stderr,
				Self:     self,
				Language: c.String("language"),
				Python:   c.String("python"),
				TempDir:  c.String("tmp"),
			})
			if err != nil {
				return withCode(exitFailed, err)
			}
			return nil
		},
	}
}
