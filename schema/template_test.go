package schema

import (
	"errors"
	"strings"
	"testing"
)

// What a template renders is capped, whatever its loops say.
func TestRenderIsCapped(t *testing.T) {
	text := "{{ range 100000 }}" + strings.Repeat("x", 200) + "{{ end }}"
	_, err := Render("t", text, map[string]any{})
	if !errors.Is(err, errTooLarge) {
		t.Fatalf("err = %v", err)
	}
	out, err := Render("t", "{{ range 3 }}ab{{ end }}", map[string]any{})
	if err != nil || out != "ababab" {
		t.Fatalf("%q %v", out, err)
	}
}
