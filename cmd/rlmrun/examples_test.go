package main

import (
	"path/filepath"
	"testing"
)

// exampleSpecs lists every spec under examples/.
func exampleSpecs(t *testing.T) []string {
	t.Helper()
	var specs []string
	for _, pat := range []string{"../../examples/*.yaml", "../../examples/*/*.yaml"} {
		m, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		specs = append(specs, m...)
	}
	if len(specs) == 0 {
		t.Fatal("no example specs found")
	}
	return specs
}

func TestExamplesValidate(t *testing.T) {
	for _, spec := range exampleSpecs(t) {
		code, out, errOut := runCLI(t, "validate", spec)
		if code != 0 {
			t.Errorf("validate %s: exit %d\n%s%s", spec, code, out, errOut)
		}
	}
}
