// Package testbin builds the rlmrun binary for tests that need a real agent
// process (the runner starts `rlmrun agent`, never the test binary).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// BuildTags are the tags rlmrun is built with: urfave_cli_no_docs leaves
// out the CLI library's man-page and Markdown generators (blackfriday, whose
// initialisation every agent and tool process would pay); --help is the
// same.
const BuildTags = "urfave_cli_no_docs"

// Build compiles rlmrun as a static binary into dir and returns its path.
func Build(dir string) (string, error) {
	out := filepath.Join(dir, "rlmrun")
	cmd := exec.Command("go", "build", "-tags", BuildTags, "-o", out, "github.com/rlmrun/rlmrun/cmd/rlmrun")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build rlmrun: %v\n%s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}

// Required reports whether tests must fail, not skip, when a system tool
// they need is missing: scripts/test installs everything and sets
// RLMRUN_REQUIRE_ALL=1, so CI never passes by skipping.
func Required() bool { return os.Getenv("RLMRUN_REQUIRE_ALL") != "" }

// Need skips (or, when Required, fails) a test whose tool is missing.
func Need(t interface {
	Helper()
	Skipf(string, ...any)
	Fatalf(string, ...any)
}, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if Required() {
		t.Fatalf("%s is not available, and RLMRUN_REQUIRE_ALL is set", what)
	}
	t.Skipf("%s is not available (scripts/test installs it)", what)
}

// Procs lists the processes whose argv[0] is name: tests start what must
// not outlive them under a unique name (`exec -a NAME sleep 1000`).
func Procs(name string) []string {
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), name+"\x00") {
			out = append(out, d.Name())
		}
	}
	return out
}

// Main builds rlmrun for a package's tests, stores its path in *bin, runs
// the tests and exits with their code, the binary removed.
func Main(m interface{ Run() int }, bin *string) {
	os.Exit(buildAndRun(m, bin))
}

func buildAndRun(m interface{ Run() int }, bin *string) int {
	dir, err := os.MkdirTemp("", "rlmrun-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *bin, err = Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// NeedForPackage ends a test binary before its tests when something all of
// them need is missing: a SKIP line and exit 0, or, when Required, a FAIL
// line and exit 1.
func NeedForPackage(ok bool, what string) {
	if ok {
		return
	}
	if Required() {
		fmt.Printf("FAIL: %s is not available, and RLMRUN_REQUIRE_ALL is set\n", what)
		os.Exit(1)
	}
	fmt.Printf("SKIP: %s is not available (scripts/test installs it)\n", what)
	os.Exit(0)
}

// Within polls cond every 20 ms until it holds (true) or timeout passes
// (false).
func Within(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// Eventually is Within that fails the test, naming what it waited for.
func Eventually(t interface {
	Helper()
	Fatalf(string, ...any)
}, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !Within(timeout, cond) {
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}
