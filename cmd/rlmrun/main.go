// Command rlmrun runs Recursive Language Model environments declared in YAML.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/rlmrun/rlmrun/internal/safetext"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes kept by every command.
const (
	exitOK          = 0
	exitFailed      = 1 // a rollout failed or an expectation was not met
	exitUsage       = 2 // invalid spec or usage
	exitInterrupted = 130
)

// exitError carries an exit code through urfave/cli without printing twice.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

func main() {
	if name, ok := toolName(os.Args[0], os.Getenv); ok {
		os.Exit(runTool(name, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(runMain(os.Args, os.Stdout, os.Stderr))
}

// runMain runs the CLI and returns the process exit code.
func runMain(args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	err := app.Run(normalizeArgs(app, args))
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "rlmrun: "+safetext.Lines(ee.err.Error()))
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "rlmrun: "+safetext.Lines(err.Error()))
	return exitUsage
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "rlmrun",
		Usage:     "run Recursive Language Model environments declared in YAML",
		UsageText: "rlmrun [command] [flags] SPEC...\nrlmrun SPEC.yaml   (same as: rlmrun run SPEC.yaml)",
		Description: `A spec declares an RLM environment once (its REPL, tools, backend, working
directory, retention and rewards) together with scripted rollouts. rlmrun
validates it, runs every rollout on the local machine or in a sandbox, and
reports answers, rewards and metrics.

EXAMPLES:
   rlmrun run examples/hello-bash.yaml            run every rollout of a spec
   rlmrun validate examples/*.yaml                check specs without running them
   rlmrun schema > rlmrun.schema.json             the JSON Schema, for editors
   rlmrun cleanup --dry-run                       list what killed runs left behind
   rlmrun init my-env                             start a new environment
   rlmrun report rlmrun-out/RUN_ID                the run as one HTML file
   rlmrun pack examples/rlm-secrets/bash.yaml     one reproducible archive of a spec and its files
   rlmrun push examples/rlm-secrets/bash.yaml ghcr.io/org/envs/rlm-secrets:1.0.0
   rlmrun run --trust oci://ghcr.io/org/envs/rlm-secrets:1.0.0
   rlmrun version                                 print the version

Exit codes: 0 success, 1 a rollout failed or an expectation was not met,
2 invalid spec or usage, 130 interrupted.`,
		Version:         version,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		Suggest:         true,
		ExitErrHandler:  func(*cli.Context, error) {},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return withCode(exitUsage, fmt.Errorf("%w (see rlmrun --help)", err))
		},
		Commands: []*cli.Command{
			runCommand(),
			validateCommand(),
			schemaCommand(),
			cleanupCommand(),
			packCommand(),
			pushCommand(),
			pullCommand(),
			initCommand(),
			reportCommand(),
			versionCommand(),
			agentCommand(),
			sandboxInitCommand(),
			sandboxInstallCommand(),
			toolCommand(),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return withCode(exitUsage, fmt.Errorf("unknown command %q (see rlmrun --help)", c.Args().First()))
			}
			return cli.ShowAppHelp(c)
		},
	}
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}
	return app
}

// normalizeArgs makes two common forms work: `rlmrun spec.yaml` means
// `rlmrun run spec.yaml`, and flags written after the spec
// (`rlmrun run spec.yaml --concurrency 4`) are moved before it, because
// urfave/cli stops reading flags at the first argument and would otherwise
// drop them silently.
func normalizeArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := append([]string{}, args...)
	first := out[1]
	if app.Command(first) == nil && !strings.HasPrefix(first, "-") && runnable(first) {
		out = append([]string{out[0], "run"}, out[1:]...)
	}
	cmd := app.Command(out[1])
	if cmd == nil || cmd.SkipFlagParsing {
		return out
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		tv := false
		if d, ok := f.(cli.DocGenerationFlag); ok {
			tv = d.TakesValue()
		}
		for _, n := range f.Names() {
			takesValue[n] = tv
		}
	}
	var flags, positional []string
	rest := out[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			positional = append(positional, rest[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			flags = append(flags, a)
			continue
		}
		switch {
		case takesValue[name] && i+1 < len(rest):
			flags = append(flags, a, rest[i+1])
			i++
		case takesValue[name]:
			// No value follows: an empty one, which the command refuses,
			// rather than letting the flag take the "--" added below.
			flags = append(flags, a+"=")
		default:
			flags = append(flags, a)
		}
	}
	res := append([]string{out[0], out[1]}, flags...)
	if len(positional) > 0 {
		res = append(res, "--")
		res = append(res, positional...)
	}
	return res
}

// runnable says a first argument is something to run: a spec, an
// environment archive or a registry reference.
func runnable(arg string) bool {
	for _, suffix := range []string{".yaml", ".yml", ".tar.gz", ".tgz"} {
		if strings.HasSuffix(arg, suffix) {
			return true
		}
	}
	return strings.HasPrefix(arg, "oci://")
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:      "version",
		Usage:     "print the version",
		UsageText: "rlmrun version\n\nEXAMPLE:\n   rlmrun version",
		Action: func(c *cli.Context) error {
			v := version
			if v == "dev" {
				if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" && info.Main.Version != "(devel)" {
					v = info.Main.Version
				}
			}
			fmt.Fprintf(c.App.Writer, "rlmrun %s (%s, %s/%s, spec format v1)\n", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}
