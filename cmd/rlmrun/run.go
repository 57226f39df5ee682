package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/schema"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "validate a spec and run its rollouts",
		ArgsUsage: "SPEC",
		UsageText: `rlmrun run [flags] SPEC

EXAMPLES:
   rlmrun run examples/hello-bash.yaml
   rlmrun examples/hello-bash.yaml`,
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
			printPlan(c, file, spec)
			fmt.Fprintln(c.App.Writer, "nothing was run: this build has no runner yet")
			return nil
		},
	}
}
