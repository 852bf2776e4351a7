package cmdtransport

import "errors"

// SplitWords splits s into words as a POSIX shell would, without expanding
// anything: blanks separate words, single quotes keep everything, double
// quotes keep all but \" \\ \$ \`, a backslash outside quotes keeps the next
// character. sshuttle splits -e the same way.
func SplitWords(s string) ([]string, error) {
	var words []string
	var word []rune
	inWord := false
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words, word, inWord = append(words, string(word)), nil, false
			}
			continue
		case c == '\\':
			if i+1 == len(rs) {
				return nil, errors.New("a backslash ends the command")
			}
			i++
			word = append(word, rs[i])
		case c == '\'':
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				j++
			}
			if j == len(rs) {
				return nil, errors.New("unterminated single quote")
			}
			word, i = append(word, rs[i+1:j]...), j
		case c == '"':
			j := i + 1
			for ; j < len(rs) && rs[j] != '"'; j++ {
				if rs[j] == '\\' && j+1 < len(rs) && (rs[j+1] == '"' || rs[j+1] == '\\' || rs[j+1] == '$' || rs[j+1] == '`') {
					j++
				}
				word = append(word, rs[j])
			}
			if j == len(rs) {
				return nil, errors.New("unterminated double quote")
			}
			i = j
		default:
			word = append(word, c)
		}
		inWord = true
	}
	if inWord {
		words = append(words, string(word))
	}
	return words, nil
}
