package pgtext

import (
	"unicode/utf8"

	"github.com/walhook/walhook/sink"
)

// JSON validation, for json and jsonb text. It is a strict RFC 8259 check
// that also insists on valid UTF-8, matching json.Valid plus utf8.Valid
// (tested against both), at a fraction of json.Valid's cost.

// maxJSONDepth is encoding/json's nesting limit: deeper documents would
// be unreadable to Go consumers anyway, and it bounds the recursion.
const maxJSONDepth = 10000

func validJSON(b []byte) bool {
	i := scanJSONValue(b, skipJSONSpace(b, 0), 0)
	return i >= 0 && skipJSONSpace(b, i) == len(b)
}

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// scanJSONValue returns the index after the value starting at b[i], or
// -1 if there is none. depth counts the containers around it.
func scanJSONValue(b []byte, i, depth int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '{':
		if depth >= maxJSONDepth {
			return -1
		}
		i = skipJSONSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1
		}
		for {
			if i >= len(b) || b[i] != '"' {
				return -1
			}
			if i = scanJSONString(b, i); i < 0 {
				return -1
			}
			i = skipJSONSpace(b, i)
			if i >= len(b) || b[i] != ':' {
				return -1
			}
			if i = scanJSONValue(b, skipJSONSpace(b, i+1), depth+1); i < 0 {
				return -1
			}
			i = skipJSONSpace(b, i)
			if i >= len(b) {
				return -1
			}
			if b[i] == '}' {
				return i + 1
			}
			if b[i] != ',' {
				return -1
			}
			i = skipJSONSpace(b, i+1)
		}
	case '[':
		if depth >= maxJSONDepth {
			return -1
		}
		i = skipJSONSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1
		}
		for {
			if i = scanJSONValue(b, i, depth+1); i < 0 {
				return -1
			}
			i = skipJSONSpace(b, i)
			if i >= len(b) {
				return -1
			}
			if b[i] == ']' {
				return i + 1
			}
			if b[i] != ',' {
				return -1
			}
			i = skipJSONSpace(b, i+1)
		}
	case '"':
		return scanJSONString(b, i)
	case 't':
		return scanLiteral(b, i, "true")
	case 'f':
		return scanLiteral(b, i, "false")
	case 'n':
		return scanLiteral(b, i, "null")
	}
	return scanJSONNumber(b, i)
}

func scanLiteral(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// scanJSONString returns the index after the string whose opening quote
// is at b[i], or -1.
func scanJSONString(b []byte, i int) int {
	i++
	for i < len(b) {
		c := b[i]
		if c < utf8.RuneSelf {
			switch {
			case sink.PlainASCII[c]:
				i++
			case c == '"':
				return i + 1
			case c == '\\':
				if i+1 >= len(b) {
					return -1
				}
				switch b[i+1] {
				case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
					i += 2
				case 'u':
					if len(b)-i < 6 || unhex[b[i+2]]|unhex[b[i+3]]|unhex[b[i+4]]|unhex[b[i+5]] > 15 {
						return -1
					}
					i += 6
				default:
					return -1
				}
			default: // a control character
				return -1
			}
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return -1
		}
		i += size
	}
	return -1
}

// scanJSONNumber returns the index after the number starting at b[i],
// or -1.
func scanJSONNumber(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i
}
