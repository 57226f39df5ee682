package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/internal/atomicfile"
	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/report"
)

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:      "report",
		Usage:     "write a run as one self-contained HTML file to open in any browser",
		ArgsUsage: "RUN_DIR|results.jsonl",
		UsageText: `rlmrun report [-o FILE] RUN_DIR|results.jsonl

Writes one HTML file (styles, script and data inline: it opens offline, from
file://, and can be attached to a CI job) showing the run — spec, backend,
times, digest, counts by status, rewards and times as charts, the golden
comparison — and its rollouts: a table to sort and filter, and each
rollout's trajectory (cells and outputs, tool and sub-LLM calls, model
messages, rewards, metrics, the retained files). rlmrun run --report writes
it next to results.jsonl.

EXAMPLES:
   rlmrun report rlmrun-out/20261126-101500-a1b2c3
   rlmrun report -o secrets.html rlmrun-out/20261126-101500-a1b2c3/results.jsonl`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the report to `FILE` (default: report.html in the run's folder)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(exitUsage, fmt.Errorf("report needs exactly one RUN_DIR or results file, got %d (see rlmrun report --help)", c.NArg()))
			}
			src := c.Args().First()
			st, err := os.Stat(src)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("report: %w", err))
			}
			dir, results := src, filepath.Join(src, "results.jsonl")
			if !st.IsDir() {
				dir, results = filepath.Dir(src), src
			}
			out := c.String("output")
			if out == "" {
				out = filepath.Join(dir, "report.html")
			}
			// Never over what the report is made of.
			for _, in := range []string{results, filepath.Join(dir, report.RunFile)} {
				if sameFile(out, in) {
					return withCode(exitUsage, fmt.Errorf("-o %s would overwrite %s, which the report reads", safetext.Line(out), safetext.Line(in)))
				}
			}
			if err := writeReport(src, out); err != nil {
				return withCode(exitFailed, err)
			}
			info, _ := os.Stat(out)
			var size int64
			if info != nil {
				size = info.Size()
			}
			fmt.Fprintf(c.App.Writer, "wrote %s (%s)\n", safetext.Line(out), byteSize(size))
			return nil
		},
	}
}

// writeReport renders the run in src (a folder or results file) into out,
// whole or not at all.
func writeReport(src, out string) error {
	in, err := report.Load(src)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return atomicfile.Write(out, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := report.Write(bw, in); err != nil {
			return err
		}
		return bw.Flush()
	})
}
