package config

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

var envNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandEnv replaces ${VAR} and ${VAR:-default} in the raw file bytes and
// turns $$ into $. Expansion is textual (before YAML parsing), as
// docs/reference.md#2-configuration says, so it works in keys, flow lists
// and comments alike; a lone $ not followed by { or $ is kept. An unset
// ${VAR} becomes empty; the default applies when VAR is unset or empty, as
// in a POSIX shell.
//
// lines maps each output line (index = line-1) to its line in the input, so
// a variable whose value holds newlines does not shift error positions.
func expandEnv(file string, data []byte, lookup func(string) (string, bool)) (out []byte, lines []int, errs []*Error) {
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	if !bytes.Contains(data, []byte("$")) {
		return data, nil, nil
	}
	var b bytes.Buffer
	b.Grow(len(data))
	lines = []int{1}
	line, lineStart := 1, 0
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case c == '\n':
			b.WriteByte(c)
			line++
			lineStart = i + 1
			lines = append(lines, line)
		case c == '$' && i+1 < len(data) && data[i+1] == '$':
			b.WriteByte('$')
			i++
		case c == '$' && i+1 < len(data) && data[i+1] == '{':
			col := i - lineStart + 1
			end := -1
			for j := i + 2; j < len(data) && data[j] != '\n'; j++ {
				if data[j] == '}' {
					end = j
					break
				}
			}
			if end < 0 {
				errs = append(errs, &Error{File: file, Line: line, Col: col, Msg: "unterminated ${ (missing } on the same line; write $$ for a literal $)"})
				i++ // skip the '{'; the rest of the line is copied as is
				continue
			}
			inner := string(data[i+2 : end])
			name, def, hasDef := strings.Cut(inner, ":-")
			if !envNameRe.MatchString(name) {
				msg := fmt.Sprintf("invalid variable name %s in ${...} (want letters, digits, _)", quote(name))
				if name == "" {
					msg = "empty variable name in ${}"
				}
				errs = append(errs, &Error{File: file, Line: line, Col: col, Msg: msg})
				i = end
				continue
			}
			v, ok := lookup(name)
			if hasDef && (!ok || v == "") {
				v = def
			}
			for range strings.Count(v, "\n") {
				lines = append(lines, line)
			}
			b.WriteString(v)
			i = end
		default:
			b.WriteByte(c)
		}
	}
	return b.Bytes(), lines, errs
}
