package pgtext

import "github.com/walhook/walhook/sink"

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// match reports whether s[i:] starts with pat, where 'd' in pat stands
// for any digit.
func match(s []byte, i int, pat string) bool {
	if len(s)-i < len(pat) {
		return false
	}
	for j := 0; j < len(pat); j++ {
		c := s[i+j]
		if pat[j] == 'd' {
			if !isDigit(c) {
				return false
			}
		} else if c != pat[j] {
			return false
		}
	}
	return true
}

// timeEnd returns the end of an "HH:MM:SS[.ffffff]" starting at s[i],
// or -1.
func timeEnd(s []byte, i int) int {
	if !match(s, i, "dd:dd:dd") {
		return -1
	}
	i += len("dd:dd:dd")
	if i < len(s) && s[i] == '.' {
		i++
		if i >= len(s) || !isDigit(s[i]) {
			return -1
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	return i
}

// parseOffset parses a whole zone offset as Postgres writes it in ISO
// style: ±HH, or ±HH:MM when the minutes are not zero. Offsets with seconds
// (±HH:MM:SS, local mean time before 1900 outside UTC) have no RFC 3339
// form, so they are refused, and the value stays in its text form.
func parseOffset(s []byte) (sign byte, hh, mm [2]byte, ok bool) {
	if len(s) < 3 || (s[0] != '+' && s[0] != '-') || !match(s, 1, "dd") {
		return 0, hh, mm, false
	}
	switch {
	case len(s) == 3:
		return s[0], [2]byte{s[1], s[2]}, [2]byte{'0', '0'}, true
	case len(s) == 6 && match(s, 3, ":dd"):
		return s[0], [2]byte{s[1], s[2]}, [2]byte{s[4], s[5]}, true
	}
	return 0, hh, mm, false
}

// appendTimestamp renders "YYYY-MM-DD HH:MM:SS[.f][±HH[:MM]]" as RFC 3339
// (UTC as Z). Anything else, infinity, -infinity and BC dates included,
// stays as the text.
func appendTimestamp(dst, s []byte, tz bool) []byte {
	y := 0
	for y < len(s) && isDigit(s[y]) {
		y++
	}
	if y < 4 || !match(s, y, "-dd-dd ") {
		return sink.AppendJSONString(dst, s)
	}
	space := y + len("-dd-dd")
	end := timeEnd(s, space+1)
	if end < 0 {
		return sink.AppendJSONString(dst, s)
	}
	if !tz {
		if end != len(s) {
			return sink.AppendJSONString(dst, s)
		}
		dst = append(dst, '"')
		dst = append(dst, s[:space]...)
		dst = append(dst, 'T')
		dst = append(dst, s[space+1:]...)
		return append(dst, '"')
	}
	sign, hh, mm, ok := parseOffset(s[end:])
	if !ok {
		return sink.AppendJSONString(dst, s)
	}
	dst = append(dst, '"')
	dst = append(dst, s[:space]...)
	dst = append(dst, 'T')
	dst = append(dst, s[space+1:end]...)
	if hh == [2]byte{'0', '0'} && mm == [2]byte{'0', '0'} {
		dst = append(dst, 'Z')
	} else {
		dst = append(dst, sign, hh[0], hh[1], ':', mm[0], mm[1])
	}
	return append(dst, '"')
}

// appendTimetz renders "HH:MM:SS[.f]±HH[:MM]" with a full ±HH:MM offset.
// UTC is written +00:00, not Z: a timetz keeps the offset it was given
// rather than naming an instant.
func appendTimetz(dst, s []byte) []byte {
	end := timeEnd(s, 0)
	if end < 0 {
		return sink.AppendJSONString(dst, s)
	}
	sign, hh, mm, ok := parseOffset(s[end:])
	if !ok {
		return sink.AppendJSONString(dst, s)
	}
	dst = append(dst, '"')
	dst = append(dst, s[:end]...)
	dst = append(dst, sign, hh[0], hh[1], ':', mm[0], mm[1])
	return append(dst, '"')
}
