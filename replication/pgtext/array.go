package pgtext

import "github.com/walhook/walhook/sink"

// maxArrayDims is Postgres's MAXDIM: deeper nesting is not an array
// Postgres could have sent.
const maxArrayDims = 6

// arraySpace is Postgres's array_isspace: the whitespace array_in skips
// around elements.
func arraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func skipArraySpace(s []byte, i int) int {
	for i < len(s) && arraySpace(s[i]) {
		i++
	}
	return i
}

// appendArray renders array text as a JSON array, or, when the text is
// not a well-formed array, as a JSON string of it.
func appendArray(dst []byte, elem kind, delim byte, s []byte) []byte {
	start := len(dst)
	out, ok := appendArrayBody(dst, elem, delim, s)
	if !ok {
		return sink.AppendJSONString(out[:start], s)
	}
	return out
}

// appendArrayBody parses array_out's syntax: an optional bounds
// decoration ("[0:1]=", dropped: JSON arrays start at 0 anyway), then
// nested braces of delimiter-separated elements, each NULL, bare, or
// double-quoted with backslash escapes. It reports false for anything
// array_in would reject that could otherwise turn into invalid JSON.
func appendArrayBody(dst []byte, elem kind, delim byte, s []byte) ([]byte, bool) {
	i := skipArraySpace(s, 0)
	if i < len(s) && s[i] == '[' {
		for i < len(s) && s[i] == '[' {
			for i < len(s) && s[i] != ']' {
				i++
			}
			i++
		}
		i = skipArraySpace(s, i)
		if i >= len(s) || s[i] != '=' {
			return dst, false
		}
		i = skipArraySpace(s, i+1)
	}
	if i >= len(s) || s[i] != '{' {
		return dst, false
	}
	dst = append(dst, '[')
	i++
	depth := 1
	open := true // just after a '{': a '}' here closes an empty array
	for {
		// An element, a sub-array or, when open, a '}' comes next.
		i = skipArraySpace(s, i)
		if i >= len(s) {
			return dst, false
		}
		switch {
		case s[i] == '{':
			if depth == maxArrayDims {
				return dst, false
			}
			depth++
			dst = append(dst, '[')
			i++
			open = true
			continue
		case s[i] == '}' && open:
		default:
			var ok bool
			if dst, i, ok = appendArrayElem(dst, elem, delim, s, i); !ok {
				return dst, false
			}
		}
		// After an item: closing braces, then a delimiter or the end.
		for {
			i = skipArraySpace(s, i)
			if i >= len(s) {
				return dst, false
			}
			if s[i] == delim {
				dst = append(dst, ',')
				i++
				open = false
				break
			}
			if s[i] != '}' {
				return dst, false
			}
			dst = append(dst, ']')
			i++
			depth--
			if depth == 0 {
				return dst, skipArraySpace(s, i) == len(s)
			}
		}
	}
}

// appendArrayElem renders the element starting at s[i] and returns the
// index after it.
func appendArrayElem(dst []byte, elem kind, delim byte, s []byte, i int) ([]byte, int, bool) {
	var raw []byte
	escaped := false
	if s[i] == '"' {
		j := i + 1
		for ; j < len(s) && s[j] != '"'; j++ {
			if s[j] == '\\' {
				escaped = true
				j++
			}
		}
		if j >= len(s) {
			return dst, i, false
		}
		raw, i = s[i+1:j], j+1
	} else {
		// Bare: up to the delimiter or '}', less trailing whitespace that
		// is not escaped.
		j, end := i, i
		for ; j < len(s); j++ {
			c := s[j]
			if c == delim || c == '}' {
				break
			}
			switch {
			case c == '{' || c == '"':
				return dst, i, false
			case c == '\\':
				escaped = true
				j++
				if j >= len(s) {
					return dst, i, false
				}
				end = j + 1
			case !arraySpace(c):
				end = j + 1
			}
		}
		if j >= len(s) || end == i {
			return dst, i, false
		}
		raw, i = s[i:end], j
		if !escaped && len(raw) == 4 &&
			raw[0]|0x20 == 'n' && raw[1]|0x20 == 'u' && raw[2]|0x20 == 'l' && raw[3]|0x20 == 'l' {
			return append(dst, "null"...), i, true
		}
	}
	if !escaped {
		return appendKind(dst, elem, raw), i, true
	}
	// Unescape into dst's spare room, render from there, then move the
	// rendering down over it: no buffer of its own to allocate. Rendering
	// only appends past tmpEnd, so the source is never overwritten (and if
	// dst grows, the source stays in the old array).
	tmp := len(dst)
	for k := 0; k < len(raw); k++ {
		if raw[k] == '\\' {
			k++
		}
		dst = append(dst, raw[k])
	}
	tmpEnd := len(dst)
	dst = appendKind(dst, elem, dst[tmp:tmpEnd])
	n := copy(dst[tmp:], dst[tmpEnd:])
	return dst[:tmp+n], i, true
}
