package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/runner"
	"github.com/rlmrun/rlmrun/schema"
	"github.com/rlmrun/rlmrun/tunnel/wire"
)

func validateCommand() *cli.Command {
	return &cli.Command{
		Name:      "validate",
		Usage:     "check specs without running them",
		ArgsUsage: "SPEC...",
		UsageText: `rlmrun validate [--print] SPEC|ENV.tar.gz|oci://REF...

Prints "ok: FILE (N rollouts, backend B, repl L)" for each valid spec and every
problem of each invalid one as FILE:LINE:COL: PATH: message (a problem in a
base a spec extends names the base's file). Exits 0 when all specs are valid,
2 otherwise. --print prints each valid spec as loaded instead: every base it
extends merged in, each value a base set marked with a comment.

EXAMPLES:
   rlmrun validate examples/hello-bash.yaml
   rlmrun validate examples/*.yaml examples/*/*.yaml
   rlmrun validate --print examples/extends/python.yaml
   rlmrun validate env.tar.gz oci://ghcr.io/org/envs/rlm-secrets:1.2.0`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "print", Usage: "print each valid spec with every base it extends merged in"},
			insecureFlag(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return withCode(exitUsage, fmt.Errorf("validate needs at least one SPEC file (see rlmrun validate --help)"))
			}
			src, err := newSources(context.Background(), c)
			if err != nil {
				return withCode(exitFailed, err)
			}
			bad, fetch := 0, 0
			for _, file := range c.Args().Slice() {
				l, err := src.load(file)
				var fe *errFetch
				switch {
				case errors.As(err, &fe):
					fetch++
					fmt.Fprintln(c.App.ErrWriter, "rlmrun: "+safetext.Lines(err.Error()))
					continue
				case err != nil:
					bad++
					fmt.Fprintln(c.App.ErrWriter, safetext.Lines(err.Error()))
					continue
				}
				spec := l.spec
				if c.Bool("print") {
					out, err := spec.MergedYAML()
					if err != nil {
						return withCode(exitFailed, err)
					}
					fmt.Fprintf(c.App.Writer, "# %s\n%s", safetext.Line(file), out)
					continue
				}
				fmt.Fprintf(c.App.Writer, "ok: %s (%d rollouts, backend %s, repl %s)\n",
					safetext.Line(file), len(spec.ExpandedRollouts()), backendName(spec), spec.REPL.Language)
			}
			if fetch > 0 {
				return withCode(exitFailed, fmt.Errorf("%d of %d could not be fetched", fetch, c.NArg()))
			}
			if bad > 0 {
				return withCode(exitUsage, fmt.Errorf("%d of %d spec(s) invalid", bad, c.NArg()))
			}
			return nil
		},
	}
}

func backendName(s *schema.Spec) string {
	if s.Backend.Type == "sandbox" {
		return "sandbox/" + s.Backend.Sandbox.Provider
	}
	return s.Backend.Type
}

func schemaCommand() *cli.Command {
	return &cli.Command{
		Name:  "schema",
		Usage: "print the JSON Schema (draft 2020-12) of the spec format",
		UsageText: `rlmrun schema

Editors validate and complete specs with it. For the YAML language server
(VS Code, Neovim, ...), save it and name it on the first line of a spec:

   # yaml-language-server: $schema=./rlmrun.schema.json

EXAMPLE:
   rlmrun schema > rlmrun.schema.json`,
		Action: func(c *cli.Context) error {
			_, err := c.App.Writer.Write(schema.JSON())
			return err
		},
	}
}

// toolNames returns the root and sub tool lists as the REPL and the sub-LLMs
// see them: llm_batch first, then the spec's (schema.Spec.ToolLists).
func toolNames(s *schema.Spec) (root, sub []string) {
	rootTools, subTools := s.ToolLists()
	root = []string{wire.ReservedToolName}
	for _, t := range rootTools {
		root = append(root, t.Name)
	}
	for _, t := range subTools {
		sub = append(sub, t.Name)
	}
	return root, sub
}

func orUnset(s string) string {
	if s == "" {
		return "(not set)"
	}
	return s
}

// printPlan prints what a run would do; MCP servers are started to list
// their tools, and one that cannot start is the error.
func printPlan(c *cli.Context, file string, s *schema.Spec) error {
	w := c.App.Writer
	root, sub := toolNames(s)
	if len(s.MCPServers) > 0 {
		r, sb, err := runner.ToolNames(context.Background(), s)
		if err != nil {
			return err
		}
		root, sub = append([]string{wire.ReservedToolName}, r...), sb
	}
	fmt.Fprintf(w, "plan: %s (%s)\n", s.Name, file)
	fmt.Fprintf(w, "  backend:    %s\n", backendName(s))
	fmt.Fprintf(w, "  repl:       %s (max %d iterations, output %d chars, cell timeout %s)\n",
		s.REPL.Language, s.REPL.MaxIterations, s.REPL.MaxOutputLength, s.REPL.CodeExecutionTimeout.Duration)
	fmt.Fprintf(w, "  root tools: %s\n", strings.Join(root, ", "))
	if len(sub) > 0 {
		fmt.Fprintf(w, "  sub tools:  %s\n", strings.Join(sub, ", "))
	}
	if m := s.Model; m != nil {
		fmt.Fprintf(w, "  model:      %s at %s (format %s, %d requests in flight at most)\n", safetext.Line(orUnset(m.Name)), safetext.Line(orUnset(m.BaseURL)), m.Format, m.MaxConcurrency)
	}
	switch sm := s.SubLLM.Model; sm.Kind {
	case "endpoint":
		fmt.Fprintf(w, "  sub-LLM:    %s at %s\n", safetext.Line(sm.Endpoint.Name), safetext.Line(sm.Endpoint.BaseURL))
	case "root":
		fmt.Fprintf(w, "  sub-LLM:    the root model\n")
	default:
		fmt.Fprintf(w, "  sub-LLM:    scripted\n")
	}
	insts := s.ExpandedRollouts()
	fmt.Fprintf(w, "  rollouts:   %d\n", len(insts))
	for _, in := range insts {
		if in.Rollout.Scripted {
			fmt.Fprintf(w, "    %-24s %d turn(s)\n", in.ID, len(in.Rollout.Turns))
		} else {
			fmt.Fprintf(w, "    %-24s played by the model\n", in.ID)
		}
	}
	return nil
}
