package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/backends/sandbox"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "validate a spec and run its rollouts",
		ArgsUsage: "SPEC",
		UsageText: `rlmrun run [flags] SPEC

Runs every rollout of SPEC and writes one JSON object per rollout to
RETENTION_DIR/RUN_ID/results.jsonl (and --output FILE), then prints a summary.
Exits 0 when every rollout ran and met its expectations, 1 when one did not,
2 when the spec is invalid, 130 when interrupted.

EXAMPLES:
   rlmrun run examples/hello-bash.yaml
   rlmrun run --output results.jsonl examples/hello-python.yaml
   rlmrun run --dry-run examples/hello-bash.yaml
   rlmrun examples/hello-bash.yaml`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "also write the JSONL results to `FILE`"},
			&cli.StringFlag{Name: "out-dir", Usage: "write results and retained directories under `DIR` instead of the spec's retention.dir"},
			&cli.IntFlag{Name: "concurrency", Aliases: []string{"j"}, Usage: "rollouts run at once (default: CPU count)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "validate and print the plan (rollouts, backend, tools) without running"},
			&cli.StringFlag{Name: "agent-binary", Usage: "the rlmrun binary to start as the agent (default: this one)", Hidden: true},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(exitUsage, fmt.Errorf("run needs exactly one SPEC file, got %d (see rlmrun run --help)", c.NArg()))
			}
			file := c.Args().First()
			spec, err := schema.Load(file)
			if err != nil {
				fmt.Fprintln(c.App.ErrWriter, err.Error())
				return withCode(exitUsage, fmt.Errorf("%s is invalid", file))
			}
			if c.Bool("dry-run") {
				printPlan(c, file, spec)
				return nil
			}
			agent, err := agentBinary(c.String("agent-binary"))
			if err != nil {
				return withCode(exitFailed, err)
			}
			backend, err := newBackend(spec, agent)
			if err != nil {
				return withCode(exitFailed, err)
			}
			defer backend.Close()
			// What killed runs left behind goes first; a live run's things
			// are never touched.
			var providers []sandbox.Provider
			if ex, ok := backend.(*sandbox.Executor); ok {
				providers = append(providers, ex.Provider())
			}
			var buf strings.Builder
			if n, _ := removeLeftovers(context.Background(), providers, "", false, &buf); n > 0 {
				fmt.Fprint(c.App.ErrWriter, "rlmrun: cleaned up after a killed run:\n"+buf.String())
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			var got os.Signal
			go func() {
				select {
				case got = <-sigs:
					fmt.Fprintf(c.App.ErrWriter, "\nrlmrun: %v: stopping, cleaning up...\n", got)
					cancel()
				case <-ctx.Done():
				}
			}()

			rep, err := runner.Run(ctx, runner.Options{
				Spec:        spec,
				Backend:     backend,
				OutDir:      c.String("out-dir"),
				OutputFile:  c.String("output"),
				Concurrency: c.Int("concurrency"),
			})
			if rep != nil {
				runner.WriteSummary(c.App.Writer, rep)
			}
			if err != nil {
				return withCode(exitFailed, err)
			}
			if rep.Interrupted {
				code := exitInterrupted
				if got == syscall.SIGTERM {
					code = 128 + int(syscall.SIGTERM)
				}
				return withCode(code, errors.New("interrupted; results of finished rollouts were kept"))
			}
			if rep.Failed() {
				return withCode(exitFailed, nil)
			}
			return nil
		},
	}
}
