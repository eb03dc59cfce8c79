package pgtext

import (
	"slices"

	"github.com/walhook/walhook/sink"
)

const base64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// unhex maps hex digits to their value and anything else to 0xff.
var unhex = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < 10; i++ {
		t['0'+i] = byte(i)
	}
	for i := 0; i < 6; i++ {
		t['a'+i] = byte(10 + i)
		t['A'+i] = byte(10 + i)
	}
	return t
}()

// appendBytea turns bytea's hex text ("\x0102ff") straight into standard
// base64, three bytes at a time, without decoding into a buffer first.
// Text in any other form (bytea_output=escape) stays as the text.
func appendBytea(dst, s []byte) []byte {
	if len(s) < 2 || s[0] != '\\' || s[1] != 'x' || len(s)%2 != 0 {
		return sink.AppendJSONString(dst, s)
	}
	h := s[2:]
	n := len(h) / 2
	start := len(dst)
	dst = slices.Grow(dst, (n+2)/3*4+2)
	dst = append(dst, '"')
	// Whole groups: six hex digits, three bytes, four base64 characters.
	i := 0
	for ; len(h)-i >= 6; i += 6 {
		g := h[i : i+6 : i+6]
		a, b, c, d, e, f := unhex[g[0]], unhex[g[1]], unhex[g[2]], unhex[g[3]], unhex[g[4]], unhex[g[5]]
		if a|b|c|d|e|f > 15 {
			return sink.AppendJSONString(dst[:start], s)
		}
		x := uint32(a)<<20 | uint32(b)<<16 | uint32(c)<<12 | uint32(d)<<8 | uint32(e)<<4 | uint32(f)
		dst = append(dst, base64Alphabet[x>>18], base64Alphabet[x>>12&63], base64Alphabet[x>>6&63], base64Alphabet[x&63])
	}
	// The last one or two bytes, padded.
	switch len(h) - i {
	case 2:
		a, b := unhex[h[i]], unhex[h[i+1]]
		if a|b > 15 {
			return sink.AppendJSONString(dst[:start], s)
		}
		x := uint32(a)<<4 | uint32(b)
		dst = append(dst, base64Alphabet[x>>2], base64Alphabet[x<<4&63], '=', '=')
	case 4:
		a, b, c, d := unhex[h[i]], unhex[h[i+1]], unhex[h[i+2]], unhex[h[i+3]]
		if a|b|c|d > 15 {
			return sink.AppendJSONString(dst[:start], s)
		}
		x := uint32(a)<<12 | uint32(b)<<8 | uint32(c)<<4 | uint32(d)
		dst = append(dst, base64Alphabet[x>>10], base64Alphabet[x>>4&63], base64Alphabet[x<<2&63], '=')
	}
	return append(dst, '"')
}
