// Package safetext makes text that rlmrun does not control (what the model
// wrote: answers, outputs, file names, errors that quote them) safe to print
// for humans: a terminal must show it, never act on it. Control characters
// (C0, DEL, C1), Unicode's bidirectional overrides and line separators, and
// bytes that are not UTF-8 are written as escapes, so one printed line is one
// line and reads in the order it was written.
package safetext

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Line returns s with everything a terminal could act on escaped: "\n",
// "\r" and "\t" as such, other controls as \xNN or \uNNNN.
func Line(s string) string {
	if clean(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// Lines escapes each line of s, keeping its line breaks ("\n").
func Lines(s string) string {
	parts := strings.Split(s, "\n")
	for i, p := range parts {
		parts[i] = Line(p)
	}
	return strings.Join(parts, "\n")
}

// unsafeRune reports C1 controls (terminals may read U+009B as CSI),
// bidirectional formatting characters, and the line and paragraph
// separators.
func unsafeRune(r rune) bool {
	switch {
	case r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

func clean(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}
