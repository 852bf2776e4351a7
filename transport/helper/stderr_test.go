package helper

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestReadLinesCutsLongLines(t *testing.T) {
	in := "short\r\n" + strings.Repeat("x", 200<<10) + "\nafter\nlast without newline"
	var got []string
	readLines(strings.NewReader(in), func(l string) { got = append(got, l) })
	if len(got) != 4 {
		t.Fatalf("got %d lines, want 4: a 200 KiB line must be cut, not end the relay", len(got))
	}
	if got[0] != "short" || got[2] != "after" || got[3] != "last without newline" {
		t.Errorf("lines = %q", []string{got[0], got[2], got[3]})
	}
	if len(got[1]) > maxLine+3 || !strings.HasSuffix(got[1], "...") {
		t.Errorf("long line came out as %d bytes, want at most %d ending in ...", len(got[1]), maxLine+3)
	}
}

func TestLineLimiter(t *testing.T) {
	var l lineLimiter
	now := time.Unix(1000, 0)
	passed := 0
	for range 10000 {
		if _, ok := l.allow(now); ok {
			passed++
		}
	}
	if passed != lineBurst {
		t.Errorf("a burst of 10000 lines let %d through, want %d", passed, lineBurst)
	}
	dropped, ok := l.allow(now.Add(time.Second))
	if !ok || dropped != 10000-lineBurst {
		t.Errorf("a second later: ok=%v dropped=%d, want a line through and %d reported dropped", ok, dropped, 10000-lineBurst)
	}
	passed = 0
	for i := range 10 * lineRate * 3 {
		if _, ok := l.allow(now.Add(time.Second + time.Duration(i)*100*time.Millisecond/lineRate)); ok {
			passed++
		}
	}
	if passed > lineRate*3+lineRate || passed < lineRate*3-lineRate {
		t.Errorf("at 10x the rate for 3 s, %d lines passed, want about %d", passed, lineRate*3)
	}
}

// A node answering a probe with gigabytes must not make us keep them.
func TestCapBuffer(t *testing.T) {
	b := capBuffer{max: 10}
	for range 1000 {
		if n, err := b.Write([]byte("0123456789abcdef")); n != 16 || err != nil {
			t.Fatalf("Write = %d, %v; want all of it taken", n, err)
		}
	}
	if b.String() != "0123456789" {
		t.Errorf("kept %q, want the first 10 bytes", b.String())
	}
}

// A helper's log line becomes a record with its own level and attributes,
// from the node; anything else stays a line at info. Nothing the node wrote
// reaches the log unescaped.
func TestLogNodeLine(t *testing.T) {
	var b strings.Builder
	log := slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
	for _, line := range []string{
		`level=DEBUG msg="dial failed" dst=10.96.0.1:80 err="dial tcp 10.96.0.1:80: connect: connection refused"`,
		`time=2025-01-02T10:00:00Z level=WARN msg="\x1b]0;pwned\a title" n=3 bad="a\x1b[31mred"`,
		`level=INFO+2 msg=plain`,
		"panic: \x1b[2J oops",
		`level=DEBUG msg="unterminated`,
		`level=BOGUS msg=x`,
		`msg="no level"`,
	} {
		logNodeLine(log, line)
	}
	want := `level=DEBUG msg="dial failed" dst=10.96.0.1:80 err="dial tcp 10.96.0.1:80: connect: connection refused" from=node
level=WARN msg="\\x1b]0;pwned\\a title" n=3 bad=a\x1b[31mred from=node
level=INFO+2 msg=plain from=node
level=INFO msg="panic: \\x1b[2J oops" from=node
level=INFO msg="level=DEBUG msg=\"unterminated" from=node
level=INFO msg="level=BOGUS msg=x" from=node
level=INFO msg="msg=\"no level\"" from=node
`
	if got := b.String(); got != want {
		t.Errorf("logged\n%s\nwant\n%s", got, want)
	}
}
