package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"
)

func cleanupCommand() *cli.Command {
	return &cli.Command{
		Name:  "cleanup",
		Usage: "remove sandboxes and temporary directories left by killed runs",
		UsageText: `rlmrun cleanup [--dry-run] [--run ID]

Finds what rlmrun runs that are gone left behind (sandboxes and run
directories) and removes it. The owner of each sandbox is checked (its
process id and start time), so a live run's sandboxes are never touched.
Every run also does this when it starts.

EXAMPLES:
   rlmrun cleanup --dry-run
   rlmrun cleanup --run 20261125-231045-a1b2c3`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "list what would be removed, remove nothing"},
			&cli.StringFlag{Name: "run", Usage: "only the leftovers of run `ID`"},
		},
		Action: func(c *cli.Context) error {
			ctx := context.Background()
			sws, closeAll := sweepers(ctx)
			defer closeAll()
			n, err := removeLeftovers(ctx, sws, c.String("run"), c.Bool("dry-run"), c.App.Writer)
			if n == 0 {
				fmt.Fprintln(c.App.Writer, "nothing to clean up")
			}
			if err != nil {
				return withCode(exitFailed, err)
			}
			return nil
		},
	}
}
