package sink

import "unicode/utf8"

// hexDigits are the digits \u00XX escapes are written with.
const hexDigits = "0123456789abcdef"

// PlainASCII marks the ASCII bytes that stand for themselves inside a
// JSON string (read only). HTML characters (<, >, &) are among them,
// unlike encoding/json's default: the output goes to webhooks, not into
// pages.
var PlainASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// AppendJSONString appends s as a JSON string (RFC 8259). Invalid UTF-8
// bytes become U+FFFD, as encoding/json does, so the result is always valid
// UTF-8; U+2028 and U+2029 are escaped because JavaScript before ES2019
// treats them as line ends inside string literals.
func AppendJSONString[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0 // s[start:i] is pending, to be copied in one go
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if PlainASCII[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := decodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// decodeRune is utf8.DecodeRune for strings and byte slices alike; ranging
// over the conversion does not copy a byte slice.
func decodeRune[S ~string | ~[]byte](s S) (r rune, size int) {
	r = utf8.RuneError
	for i, c := range string(s) {
		if i > 0 {
			return r, i
		}
		r = c
	}
	return r, len(s)
}
