package tui

import "testing"

func TestPrintable(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"plain text, ünïcode", "plain text, ünïcode"},
		{"title \x1b]0;owned\x07 set", `title \x1b]0;owned\a set`},
		{"clip \x1b]52;c;ZWNobyBoaQ==\x1b\\", `clip \x1b]52;c;ZWNobyBoaQ==\x1b\`},
		{"two\nlines\r", `two\nlines\r`},
		{"tab\there", "tab here"},
		{"bad \xff utf8", `bad \xff utf8`},
		{"real \uFFFD kept", "real \uFFFD kept"},
		{"rtl \u202e override", `rtl \u202e override`},
		{"c1 \u009b31m", `c1 \u009b31m`},
	} {
		if got := Printable(tt.in); got != tt.want {
			t.Errorf("Printable(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
