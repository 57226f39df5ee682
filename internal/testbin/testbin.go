// Package testbin builds the rlmrun binary for tests that need a real agent
// process (the runner starts `rlmrun agent`, never the test binary).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build compiles rlmrun as a static binary into dir and returns its path.
func Build(dir string) (string, error) {
	out := filepath.Join(dir, "rlmrun")
	cmd := exec.Command("go", "build", "-o", out, "github.com/rlmrun/rlmrun/cmd/rlmrun")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build rlmrun: %v\n%s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}
