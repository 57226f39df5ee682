package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/backends/agent"
	"github.com/rlmrun/rlmrun/backends/confine"
	"github.com/rlmrun/rlmrun/backends/procs"
	"github.com/rlmrun/rlmrun/backends/sandbox/docker"
)

// agentThreads are the OS threads the agent keeps ready: its goroutines
// that block in system calls at once (the worker's wait, file transfers,
// the control stream) stay well below it.
const agentThreads = 8

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
			&cli.StringFlag{Name: "mark", Usage: "create `FILE` once running (a container's init waits for it)"},
			&cli.BoolFlag{Name: "init", Usage: "the agent is the first process of a PID namespace made for it"},
			&cli.StringFlag{Name: "confine", Usage: "confine the agent and its REPL with Landlock to the rollout directory `ROOT` (local backend)"},
			&cli.StringFlag{Name: "confinement", Value: confine.BestEffort, Usage: "with --confine: best-effort or required"},
			&cli.BoolFlag{Name: "network", Usage: "with --confine: leave TCP alone (network: host)"},
		},
		Action: func(c *cli.Context) error {
			// Ctrl-C is the runner's to handle: it ends agents in order.
			signal.Ignore(syscall.SIGINT)
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
			defer stop()
			// A cell may use up the sandbox's pids limit: the agent makes
			// its threads while the worker starts (a few ms against tens),
			// off the start-up's critical path, so they exist before the
			// first cell runs.
			go procs.ReserveThreads(agentThreads)
			if m := c.String("mark"); m != "" {
				_ = os.WriteFile(m, nil, 0o644)
			}
			self, _ := os.Executable()
			var conf *agent.Confine
			if root := c.String("confine"); root != "" {
				conf = &agent.Confine{Root: root, Mode: c.String("confinement"), Network: c.Bool("network")}
			}
			err := agent.Run(ctx, agent.Options{
				Conn:     procs.Stream{R: os.Stdin, W: os.Stdout},
				Log:      os.Stderr,
				Self:     self,
				Language: c.String("language"),
				Python:   c.String("python"),
				TempDir:  c.String("tmp"),
				Init:     c.Bool("init"),
				Confine:  conf,
			})
			if err != nil {
				return withCode(exitFailed, err)
			}
			return nil
		},
	}
}

// sandboxInstallCommand copies this binary to a sandbox's agent volume
// (the init container of a Kubernetes pod made from an agent image).
func sandboxInstallCommand() *cli.Command {
	return &cli.Command{
		Name:      "sandbox-install",
		Usage:     "copy this binary to DEST (an agent image's init container)",
		UsageText: "rlmrun sandbox-install DEST\n\nEXAMPLE:\n   rlmrun sandbox-install /.rlmrun/rlmrun",
		Hidden:    true,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(exitUsage, errors.New("sandbox-install needs DEST"))
			}
			self, err := os.Executable()
			if err != nil {
				return withCode(exitFailed, err)
			}
			if err := copyExecutable(self, c.Args().First()); err != nil {
				return withCode(exitFailed, err)
			}
			return nil
		},
	}
}

// copyExecutable copies src to dst (mode 0755), whole or not at all.
func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".part"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// sandboxInitCommand is a Docker sandbox's (or Kubernetes pod's) first
// process.
func sandboxInitCommand() *cli.Command {
	return &cli.Command{
		Name:      "sandbox-init",
		Usage:     "keep a sandbox container alive for its agent (started by rlmrun itself)",
		UsageText: "rlmrun sandbox-init --lifetime 1h\n\nEXAMPLE:\n   rlmrun sandbox-init --lifetime 1h   (a container's first process)",
		Hidden:    true,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "lifetime", Value: time.Hour},
			&cli.DurationFlag{Name: "wait-agent", Value: 5 * time.Minute},
		},
		Action: func(c *cli.Context) error {
			if code := docker.Init(c.Duration("lifetime"), c.Duration("wait-agent")); code != 0 {
				return withCode(code, nil)
			}
			return nil
		},
	}
}
