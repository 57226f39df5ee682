package tmpl

import (
	"errors"
	"strings"
	"testing"
)

// What a template renders is capped, whatever its loops say.
func TestRenderIsCapped(t *testing.T) {
	text := "{{ range 100000 }}" + strings.Repeat("x", 200) + "{{ end }}"
	_, err := Render("t", text, map[string]any{})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v", err)
	}
	out, err := Render("t", "{{ range 3 }}ab{{ end }}", map[string]any{})
	if err != nil || out != "ababab" {
		t.Fatalf("%q %v", out, err)
	}
}

func TestRenderMissingVarIsAnError(t *testing.T) {
	out, err := Render("x", "a {{ .vars.y }}", map[string]any{"vars": map[string]string{}})
	if err == nil {
		t.Fatalf("Render = %q, want an error for a missing var", out)
	}
	out, err = Render("x", "{{ shq .vars.q }} {{ json .vars.q }}", map[string]any{"vars": map[string]string{"q": "it's"}})
	if err != nil || out != `'it'\''s' "it's"` {
		t.Fatalf("Render = %q, %v", out, err)
	}
}

func FuzzEscapeRendersItself(f *testing.F) {
	for _, s := range []string{"", "plain", "{{ .vars.x }}", "{{{", "a{{{b", "}}{{", "{{-", "x{{\"{{\"}}y", "{{/* c */}}", "{", "{{{{{"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := Render("escaped", Escape(s), map[string]any{})
		if err != nil {
			t.Fatalf("Escape(%q) does not render: %v", s, err)
		}
		if out != s {
			t.Fatalf("Escape(%q) renders %q", s, out)
		}
	})
}
