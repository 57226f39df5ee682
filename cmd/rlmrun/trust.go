package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/rlmrun/rlmrun/envpack"
	"github.com/rlmrun/rlmrun/internal/safetext"
	"github.com/rlmrun/rlmrun/schema"
)

// untrusted is a registry environment whose host commands need trust.
type untrusted struct {
	ref, digest string
	commands    []schema.HostCommand
}

// needTrust lists the registry environments (the one given, and registry
// bases) that would run commands on this host, less those trusted.
func needTrust(l *loaded, trusted map[string]bool) []untrusted {
	var out []untrusted
	cmds := l.spec.HostCommands()
	if l.remote {
		if len(cmds) > 0 && !trusted[l.env.Digest] {
			out = append(out, untrusted{l.given, l.env.Digest, cmds})
		}
		return out
	}
	for _, b := range l.spec.Bases {
		if b.Ref == "" || trusted[b.Digest] {
			continue
		}
		var mine []schema.HostCommand
		for _, hc := range cmds {
			if d := l.spec.CommandDir(hc.Command); d == b.Dir || strings.HasPrefix(d, b.Dir+string(filepath.Separator)) {
				mine = append(mine, hc)
			}
		}
		if len(mine) > 0 {
			out = append(out, untrusted{b.Ref, b.Digest, mine})
		}
	}
	return out
}

// trustFile is where digests of trusted environments are listed, one per
// line ("sha256:...", then anything as a comment).
func trustFile(getenv func(string) string) string {
	if f := getenv("RLMRUN_TRUST_FILE"); f != "" {
		return f
	}
	if d := getenv("XDG_CONFIG_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "rlmrun", "trusted")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".config", "rlmrun", "trusted")
	}
	return ""
}

// readTrust reads the trust file (absent: nothing is trusted).
func readTrust(file string) (map[string]bool, error) {
	out := map[string]bool{}
	if file == "" {
		return out, nil
	}
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("trust file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		d := strings.Fields(line)[0]
		if !envpack.ValidDigest(d) {
			return nil, fmt.Errorf("%s:%d: %q is not a digest (sha256:<64 hex digits>)", file, n, safetext.Line(d))
		}
		out[d] = true
	}
	return out, sc.Err()
}

// checkTrust refuses to run registry environments that would run host
// commands unless --trust is given or their digests are trusted; the error
// lists what would run.
func checkTrust(l *loaded, trust bool) error {
	if trust {
		return nil
	}
	file := trustFile(os.Getenv)
	trusted, err := readTrust(file)
	if err != nil {
		return err
	}
	need := needTrust(l, trusted)
	if len(need) == 0 {
		return nil
	}
	var b strings.Builder
	for _, u := range need {
		fmt.Fprintf(&b, "%s (%s) would run these commands on this machine, as you:\n", safetext.Line(u.ref), u.digest)
		for _, hc := range u.commands {
			fmt.Fprintf(&b, "  %s %s: %s\n", hc.Where, safetext.Line(hc.Name), safetext.Line(hc.Command.String()))
		}
	}
	fmt.Fprintf(&b, "If you trust its author, run it with --trust, or add its digest to %s.", file)
	return errors.New(b.String())
}
