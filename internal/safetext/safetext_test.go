package safetext

import "testing"

func TestLine(t *testing.T) {
	cases := []struct{ in, want string }{
		{"plain text 42", "plain text 42"},
		{"\x1b[2J\x1b]0;pwned\x07", `\x1b[2J\x1b]0;pwned\x07`},
		{"two\nlines\r\n\ttab", `two\nlines\r\n\ttab`},
		{"del\x7f", `del\x7f`},
		{"c1 \u009b31m", `c1 \u009b31m`},
		{"bidi \u202egnp.exe", `bidi \u202egnp.exe`},
		{"sep\u2028x", `sep\u2028x`},
		{"bad utf8 \xff\xfe", `bad utf8 \xff\xfe`},
		{"ünïcödé ✓ 日本", "ünïcödé ✓ 日本"},
	}
	for _, c := range cases {
		if got := Line(c.in); got != c.want {
			t.Errorf("Line(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if got := Lines("a\x1b\nb"); got != "a\\x1b\nb" {
		t.Errorf("Lines = %q", got)
	}
}
