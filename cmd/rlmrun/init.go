package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/internal/safetext"
)

func initCommand() *cli.Command {
	return &cli.Command{
		Name:      "init",
		Usage:     "start a new environment: a spec that runs and passes, to edit from there",
		ArgsUsage: "[DIR]",
		UsageText: `rlmrun init [--language bash|python] [--provider local|bwrap|docker] [DIR]

Writes a working environment into DIR (default: here): spec.yaml (with the
schema line editors use), context files, one root tool, rewards and one
scripted rollout that passes, so that rlmrun run DIR/spec.yaml exits 0 at
once. Existing files are never overwritten.

EXAMPLES:
   rlmrun init my-env && rlmrun run my-env/spec.yaml
   rlmrun init --language python --provider bwrap my-env
   rlmrun init --provider docker --image python:3.12-slim my-env`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "language", Value: "bash", Usage: "the REPL's `LANGUAGE`: bash or python"},
			&cli.StringFlag{Name: "provider", Value: "local", Usage: "where the REPL runs: local (a confined process), bwrap or docker"},
			&cli.StringFlag{Name: "image", Usage: "the docker `IMAGE` (default python:3.12-slim)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return withCode(exitUsage, fmt.Errorf("init takes at most one DIR, got %d", c.NArg()))
			}
			dir := "."
			if c.NArg() == 1 {
				dir = c.Args().First()
			}
			opts := initOptions{language: c.String("language"), provider: c.String("provider"), image: c.String("image")}
			files, err := opts.files(dir)
			if err != nil {
				return withCode(exitUsage, err)
			}
			if err := writeNew(dir, files); err != nil {
				return withCode(exitFailed, err)
			}
			spec := filepath.Join(dir, "spec.yaml")
			fmt.Fprintf(c.App.Writer, "created %s (%s REPL, %s)\nrun it:  rlmrun run %s\n", safetext.Line(spec), opts.language, opts.provider, safetext.Line(spec))
			return nil
		},
	}
}

type initOptions struct {
	language, provider, image string
}

var nameCleaner = regexp.MustCompile(`[^a-z0-9]+`)

// envName makes a spec name (lowercase letters, digits and '-') of a folder.
func envName(dir string) string {
	base := filepath.Base(dir)
	if abs, err := filepath.Abs(dir); err == nil {
		base = filepath.Base(abs)
	}
	name := strings.Trim(nameCleaner.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if name == "" || name[0] < 'a' || name[0] > 'z' {
		name = "env-" + name
	}
	return strings.TrimSuffix(name, "-")
}

// files are the new environment's files, by path in dir.
func (o initOptions) files(dir string) (map[string]string, error) {
	if o.language != "bash" && o.language != "python" {
		return nil, fmt.Errorf("--language must be bash or python, got %q", safetext.Line(o.language))
	}
	backend, python := "", ""
	switch o.provider {
	case "local":
		backend = "backend:\n  type: local  # a process on this machine, confined to its working directory (Landlock)\n"
	case "bwrap":
		backend = "backend:\n  type: sandbox\n  sandbox:\n    provider: bwrap  # bubblewrap: no network, its own PIDs and /tmp\n"
	case "docker":
		image := o.image
		if image == "" {
			image = "python:3.12-slim"
			if o.language == "python" {
				python = "  python: /usr/local/bin/python3  # where this image has python3\n"
			}
		}
		backend = fmt.Sprintf("backend:\n  type: sandbox\n  sandbox:\n    provider: docker\n    image: %q\n", image)
	default:
		return nil, fmt.Errorf("--provider must be local, bwrap or docker, got %q", safetext.Line(o.provider))
	}
	name := envName(dir)
	turns := `    turns:
      - code: cat README.txt
      - code: |
          total=$(awk '{ s += $1 } END { print s }' numbers.txt)
          check_total "$total"
      - code: |
          echo "$total" > total.txt
          export RLM_CONTENT=$total RLM_READY=1
`
	if o.language == "python" {
		turns = `    turns:
      - code: print(open("README.txt").read())
      - code: |
          total = sum(int(line) for line in open("numbers.txt"))
          check_total(total)
      - code: |
          open("total.txt", "w").write(f"{total}\n")
          answer["content"] = str(total)
          answer["ready"] = True
`
	}
	repl := fmt.Sprintf("repl:\n  language: %s\n  max_iterations: 10\n  code_execution_timeout: 30s\n", o.language) + python
	spec := `# yaml-language-server: $schema=https://rlmrun.dev/schema/v1/spec.schema.json
# ` + name + `: made by rlmrun init. Edit it from here; check it with
#   rlmrun validate spec.yaml
# and run it with
#   rlmrun run spec.yaml
# A model plays a rollout without turns (see rlmrun run --help: --base-url, --model).
# The format is described at docs/spec.md of rlmrun.
version: 1
name: ` + name + `
description: Add up the numbers of numbers.txt, check the total with a tool, and answer it.
` + repl + backend + `filesystem:
  context_dir: context  # copied into each rollout's working directory
root_tools:
  - name: check_total
    description: Tell whether a total of numbers.txt is right, too low or too high.
    parameters:
      type: object
      properties:
        total: {type: integer, description: The total to check.}
      required: [total]
    run: [tools/check_total.py]  # runs on this machine, from this folder
rewards:
  - name: right_answer
    answer: {equals: "{{ .vars.total }}"}
  - name: wrote_total
    files: {content: {path: total.txt, equals: "{{ .vars.total }}\n"}}
rollouts:
  - id: add-up
    prompt: Add up the numbers in numbers.txt, check the total with check_total, write it to total.txt and answer it.
    vars: {total: 29}
` + turns + `    expect: {status: completed, answer: "29", reward: 2}
`
	tool := `#!/usr/bin/python3 -SE
"""Root tool check_total: the call arrives as JSON on stdin, the result is
what this prints. It runs on the host, from the spec's folder."""
import json
import sys

call = json.load(sys.stdin)
total = call["arguments"]["total"]
with open("context/numbers.txt") as f:
    right = sum(int(line) for line in f if line.strip())
if not isinstance(total, int):
    print("Error: total must be an integer")
elif total == right:
    print("correct")
else:
    print("too low" if total < right else "too high")
`
	return map[string]string{
		"spec.yaml":            spec,
		"context/numbers.txt":  "3\n5\n8\n13\n",
		"context/README.txt":   "numbers.txt holds one number per line.\nAdd them up, check the total with check_total, write it to total.txt and answer it.\n",
		"tools/check_total.py": tool,
	}, nil
}

// writeNew writes files into dir, refusing to replace any that exists.
func writeNew(dir string, files map[string]string) error {
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("%s exists; init never overwrites (choose another DIR)", safetext.Line(filepath.Join(dir, name)))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "tools/") {
			mode = 0o755
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(content); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}
