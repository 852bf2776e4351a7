package helper

import (
	"context"
	"log/slog"
	"strconv"
	"strings"

	"github.com/k8stunnel/k8stunnel/tui"
)

// logNodeLine logs one line of the node's stderr. The helper logs with
// slog's text handler (`level=DEBUG msg="dial failed" dst=...`); such a line
// becomes a record of its own level, message and attributes, so it is not
// logged again inside another record's message. Anything else (a shell's
// complaint, a panic) is logged as it is, at info. Either way it says it came
// from the node, and what the node wrote cannot drive the terminal.
func logNodeLine(log *slog.Logger, line string) {
	level, msg, attrs, ok := parseNodeLine(line)
	if !ok {
		log.Info(tui.Printable(line), "from", "node")
		return
	}
	log.Log(context.Background(), level, msg, append(attrs, "from", "node")...)
}

// parseNodeLine reads a logfmt line with a level and a msg; every key and
// value comes back Printable.
func parseNodeLine(line string) (level slog.Level, msg string, attrs []any, ok bool) {
	var haveLevel, haveMsg bool
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimLeft(s, " ") {
		key, rest, found := strings.Cut(s, "=")
		if !found || key == "" || strings.ContainsAny(key, ` "`) {
			return 0, "", nil, false
		}
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return 0, "", nil, false
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			i := strings.IndexByte(rest, ' ')
			if i < 0 {
				i = len(rest)
			}
			val, rest = rest[:i], rest[i:]
		}
		if rest != "" && rest[0] != ' ' {
			return 0, "", nil, false
		}
		s = rest
		switch {
		case key == slog.LevelKey && !haveLevel:
			if level.UnmarshalText([]byte(val)) != nil {
				return 0, "", nil, false
			}
			haveLevel = true
		case key == slog.MessageKey && !haveMsg:
			msg, haveMsg = tui.Printable(val), true
		case key == slog.TimeKey:
			// The client stamps its own.
		default:
			attrs = append(attrs, tui.Printable(key), tui.Printable(val))
		}
	}
	return level, msg, attrs, haveLevel && haveMsg
}
