package replication

import (
	"github.com/walhook/walhook/sink"
	"slices"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// This file turns column values, in the text format pgoutput sends, into JSON
// (docs/reference.md#44-values). It runs once per column of every captured row,
// so it appends to a caller-owned buffer and allocates nothing once that buffer
// has room. Whatever it cannot make sense of is emitted as a JSON string of the
// Postgres text: a surprising value must never corrupt a message.
//
// The session settings it relies on (the replication connection sets them):
// DateStyle=ISO, TimeZone=UTC, IntervalStyle=postgres, extra_float_digits=3,
// bytea_output=hex.

// valKind is how a type's values are rendered.
type valKind uint8

const (
	valUnknown     valKind = iota // not a type we know: an array, or a string
	valString                     // JSON string of the text
	valNumber                     // JSON number, from the text as-is
	valBool                       // t/f → true/false
	valJSON                       // the text is JSON already
	valTimestamptz                // "2024-03-20 15:30:00+00" → "2024-03-20T15:30:00Z"
	valTimestamp                  // "2024-03-20 15:30:00" → "2024-03-20T15:30:00"
	valTimetz                     // "15:30:00+02" → "15:30:00+02:00"
	valBytea                      // "\x0102" → base64
)

// valKindOf is a switch rather than a map lookup because it runs for every
// column; only types outside it pay for the array table lookup.
func valKindOf(oid uint32) valKind {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID,
		pgtype.Float4OID, pgtype.Float8OID, pgtype.NumericOID:
		return valNumber
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID,
		pgtype.QCharOID, pgtype.UUIDOID, pgtype.JSONPathOID,
		pgtype.DateOID, pgtype.TimeOID: // date and time text is ISO 8601 already
		return valString
	case pgtype.BoolOID:
		return valBool
	case pgtype.JSONOID, pgtype.JSONBOID:
		return valJSON
	case pgtype.TimestamptzOID:
		return valTimestamptz
	case pgtype.TimestampOID:
		return valTimestamp
	case pgtype.TimetzOID:
		return valTimetz
	case pgtype.ByteaOID:
		return valBytea
	}
	return valUnknown
}

// valArrayType describes an array type: how its elements render and the
// character between them (',' for every built-in type but box, whose text
// contains commas).
type valArrayType struct {
	elem  valKind
	delim byte
}

// valArrayTypes maps the array type OIDs pgtype knows to their element's
// rendering, and valElemDelims the element types whose arrays are not
// comma-separated. Built once: pgtype.Map has no way to list its types, so
// every OID below FirstNormalObjectId (16384, where user types start) is
// asked for; that takes well under a millisecond.
var valArrayTypes, valElemDelims = func() (map[uint32]valArrayType, map[uint32]byte) {
	m := pgtype.NewMap()
	arrays := map[uint32]valArrayType{}
	delims := map[uint32]byte{}
	for oid := uint32(1); oid < 16384; oid++ {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		ac, ok := t.Codec.(*pgtype.ArrayCodec)
		if !ok || ac.ElementType == nil {
			continue
		}
		d := ac.Delimiter
		if d == 0 {
			d = ','
		} else if d != ',' {
			delims[ac.ElementType.OID] = d
		}
		arrays[oid] = valArrayType{elem: valKindOf(ac.ElementType.OID), delim: d}
	}
	// pgtype registers neither timetz nor its array: of the built-in arrays
	// the loop misses, the only one whose elements are not plain strings.
	arrays[pgtype.TimetzArrayOID] = valArrayType{elem: valTimetz, delim: ','}
	return arrays, delims
}()

// AppendValue appends the JSON form of a column value to dst. text is the
// value in Postgres text output format (as pgoutput sends it); typeOID is the
// column's type. Types it does not know, and values it cannot parse, become
// JSON strings of the text, so the output is always valid JSON.
func AppendValue(dst []byte, typeOID uint32, text []byte) []byte {
	if k := valKindOf(typeOID); k != valUnknown {
		return valAppendKind(dst, k, text)
	}
	if a, ok := valArrayTypes[typeOID]; ok {
		return valAppendArray(dst, a.elem, a.delim, text)
	}
	return sink.AppendJSONString(dst, text)
}

// AppendArray appends a Postgres array, given in text format, as a JSON
// array whose elements render as elemOID values would. It exists for arrays
// whose type pgtype does not know (arrays of enums or domains, say): the
// caller finds the element type in pg_type.typelem. Malformed text becomes
// a JSON string.
func AppendArray(dst []byte, elemOID uint32, text []byte) []byte {
	delim, ok := valElemDelims[elemOID]
	if !ok {
		delim = ','
	}
	return valAppendArray(dst, valKindOf(elemOID), delim, text)
}

func valAppendKind(dst []byte, k valKind, text []byte) []byte {
	switch k {
	case valNumber:
		// Postgres's numbers are JSON numbers, but for NaN and the
		// infinities, which JSON lacks: those fall through to strings.
		if len(text) > 0 && valScanJSONNumber(text, 0) == len(text) {
			return append(dst, text...)
		}
	case valBool:
		if len(text) == 1 {
			switch text[0] {
			case 't':
				return append(dst, "true"...)
			case 'f':
				return append(dst, "false"...)
			}
		}
	case valJSON:
		// Validated because embedding invalid JSON would break the whole
		// message: a json column in a non-UTF-8 database, say.
		if valValidJSON(text) {
			return append(dst, text...)
		}
	case valTimestamptz:
		return valAppendTimestamp(dst, text, true)
	case valTimestamp:
		return valAppendTimestamp(dst, text, false)
	case valTimetz:
		return valAppendTimetz(dst, text)
	case valBytea:
		return valAppendBytea(dst, text)
	}
	return sink.AppendJSONString(dst, text)
}

// Time values.

func valIsDigit(c byte) bool { return '0' <= c && c <= '9' }

// valMatch reports whether s[i:] starts with pat, where 'd' in pat stands
// for any digit.
func valMatch(s []byte, i int, pat string) bool {
	if len(s)-i < len(pat) {
		return false
	}
	for j := 0; j < len(pat); j++ {
		c := s[i+j]
		if pat[j] == 'd' {
			if !valIsDigit(c) {
				return false
			}
		} else if c != pat[j] {
			return false
		}
	}
	return true
}

// valTimeEnd returns the end of an "HH:MM:SS[.ffffff]" starting at s[i],
// or -1.
func valTimeEnd(s []byte, i int) int {
	if !valMatch(s, i, "dd:dd:dd") {
		return -1
	}
	i += len("dd:dd:dd")
	if i < len(s) && s[i] == '.' {
		i++
		if i >= len(s) || !valIsDigit(s[i]) {
			return -1
		}
		for i < len(s) && valIsDigit(s[i]) {
			i++
		}
	}
	return i
}

// valParseOffset parses a whole zone offset as Postgres writes it in ISO
// style: ±HH, or ±HH:MM when the minutes are not zero. Offsets with seconds
// (±HH:MM:SS, local mean time before 1900 outside UTC) have no RFC 3339
// form, so they are refused, and the value stays in its text form.
func valParseOffset(s []byte) (sign byte, hh, mm [2]byte, ok bool) {
	if len(s) < 3 || (s[0] != '+' && s[0] != '-') || !valMatch(s, 1, "dd") {
		return 0, hh, mm, false
	}
	switch {
	case len(s) == 3:
		return s[0], [2]byte{s[1], s[2]}, [2]byte{'0', '0'}, true
	case len(s) == 6 && valMatch(s, 3, ":dd"):
		return s[0], [2]byte{s[1], s[2]}, [2]byte{s[4], s[5]}, true
	}
	return 0, hh, mm, false
}

// valAppendTimestamp renders "YYYY-MM-DD HH:MM:SS[.f][±HH[:MM]]" as RFC 3339
// (UTC as Z). Anything else, infinity, -infinity and BC dates included,
// stays as the text.
func valAppendTimestamp(dst, s []byte, tz bool) []byte {
	y := 0
	for y < len(s) && valIsDigit(s[y]) {
		y++
	}
	if y < 4 || !valMatch(s, y, "-dd-dd ") {
		return sink.AppendJSONString(dst, s)
	}
	space := y + len("-dd-dd")
	end := valTimeEnd(s, space+1)
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
	sign, hh, mm, ok := valParseOffset(s[end:])
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

// valAppendTimetz renders "HH:MM:SS[.f]±HH[:MM]" with a full ±HH:MM offset.
// UTC is written +00:00, not Z: a timetz keeps the offset it was given
// rather than naming an instant.
func valAppendTimetz(dst, s []byte) []byte {
	end := valTimeEnd(s, 0)
	if end < 0 {
		return sink.AppendJSONString(dst, s)
	}
	sign, hh, mm, ok := valParseOffset(s[end:])
	if !ok {
		return sink.AppendJSONString(dst, s)
	}
	dst = append(dst, '"')
	dst = append(dst, s[:end]...)
	dst = append(dst, sign, hh[0], hh[1], ':', mm[0], mm[1])
	return append(dst, '"')
}

// bytea.

const valBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// valUnhex maps hex digits to their value and anything else to 0xff.
var valUnhex = func() (t [256]byte) {
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

// valAppendBytea turns bytea's hex text ("\x0102ff") straight into standard
// base64, three bytes at a time, without decoding into a buffer first.
// Text in any other form (bytea_output=escape) stays as the text.
func valAppendBytea(dst, s []byte) []byte {
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
		a, b, c, d, e, f := valUnhex[g[0]], valUnhex[g[1]], valUnhex[g[2]], valUnhex[g[3]], valUnhex[g[4]], valUnhex[g[5]]
		if a|b|c|d|e|f > 15 {
			return sink.AppendJSONString(dst[:start], s)
		}
		x := uint32(a)<<20 | uint32(b)<<16 | uint32(c)<<12 | uint32(d)<<8 | uint32(e)<<4 | uint32(f)
		dst = append(dst, valBase64[x>>18], valBase64[x>>12&63], valBase64[x>>6&63], valBase64[x&63])
	}
	// The last one or two bytes, padded.
	switch len(h) - i {
	case 2:
		a, b := valUnhex[h[i]], valUnhex[h[i+1]]
		if a|b > 15 {
			return sink.AppendJSONString(dst[:start], s)
		}
		x := uint32(a)<<4 | uint32(b)
		dst = append(dst, valBase64[x>>2], valBase64[x<<4&63], '=', '=')
	case 4:
		a, b, c, d := valUnhex[h[i]], valUnhex[h[i+1]], valUnhex[h[i+2]], valUnhex[h[i+3]]
		if a|b|c|d > 15 {
			return sink.AppendJSONString(dst[:start], s)
		}
		x := uint32(a)<<12 | uint32(b)<<8 | uint32(c)<<4 | uint32(d)
		dst = append(dst, valBase64[x>>10], valBase64[x>>4&63], valBase64[x<<2&63], '=')
	}
	return append(dst, '"')
}

// Arrays.

// valMaxArrayDims is Postgres's MAXDIM: deeper nesting is not an array
// Postgres could have sent.
const valMaxArrayDims = 6

// valArraySpace is Postgres's array_isspace: the whitespace array_in skips
// around elements.
func valArraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func valSkipArraySpace(s []byte, i int) int {
	for i < len(s) && valArraySpace(s[i]) {
		i++
	}
	return i
}

// valAppendArray renders array text as a JSON array, or, when the text is
// not a well-formed array, as a JSON string of it.
func valAppendArray(dst []byte, elem valKind, delim byte, s []byte) []byte {
	start := len(dst)
	out, ok := valAppendArrayBody(dst, elem, delim, s)
	if !ok {
		return sink.AppendJSONString(out[:start], s)
	}
	return out
}

// valAppendArrayBody parses array_out's syntax: an optional bounds
// decoration ("[0:1]=", dropped: JSON arrays start at 0 anyway), then
// nested braces of delimiter-separated elements, each NULL, bare, or
// double-quoted with backslash escapes. It reports false for anything
// array_in would reject that could otherwise turn into invalid JSON.
func valAppendArrayBody(dst []byte, elem valKind, delim byte, s []byte) ([]byte, bool) {
	i := valSkipArraySpace(s, 0)
	if i < len(s) && s[i] == '[' {
		for i < len(s) && s[i] == '[' {
			for i < len(s) && s[i] != ']' {
				i++
			}
			i++
		}
		i = valSkipArraySpace(s, i)
		if i >= len(s) || s[i] != '=' {
			return dst, false
		}
		i = valSkipArraySpace(s, i+1)
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
		i = valSkipArraySpace(s, i)
		if i >= len(s) {
			return dst, false
		}
		switch {
		case s[i] == '{':
			if depth == valMaxArrayDims {
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
			if dst, i, ok = valAppendArrayElem(dst, elem, delim, s, i); !ok {
				return dst, false
			}
		}
		// After an item: closing braces, then a delimiter or the end.
		for {
			i = valSkipArraySpace(s, i)
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
				return dst, valSkipArraySpace(s, i) == len(s)
			}
		}
	}
}

// valAppendArrayElem renders the element starting at s[i] and returns the
// index after it.
func valAppendArrayElem(dst []byte, elem valKind, delim byte, s []byte, i int) ([]byte, int, bool) {
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
			case !valArraySpace(c):
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
		return valAppendKind(dst, elem, raw), i, true
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
	dst = valAppendKind(dst, elem, dst[tmp:tmpEnd])
	n := copy(dst[tmp:], dst[tmpEnd:])
	return dst[:tmp+n], i, true
}

// JSON validation, for json and jsonb text. It is a strict RFC 8259 check
// that also insists on valid UTF-8, matching json.Valid plus utf8.Valid
// (tested against both), at a fraction of json.Valid's cost.

// valMaxJSONDepth is encoding/json's nesting limit: deeper documents would
// be unreadable to Go consumers anyway, and it bounds the recursion.
const valMaxJSONDepth = 10000

func valValidJSON(b []byte) bool {
	i := valScanJSONValue(b, valSkipJSONSpace(b, 0), 0)
	return i >= 0 && valSkipJSONSpace(b, i) == len(b)
}

func valSkipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// valScanJSONValue returns the index after the value starting at b[i], or
// -1 if there is none. depth counts the containers around it.
func valScanJSONValue(b []byte, i, depth int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '{':
		if depth >= valMaxJSONDepth {
			return -1
		}
		i = valSkipJSONSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1
		}
		for {
			if i >= len(b) || b[i] != '"' {
				return -1
			}
			if i = valScanJSONString(b, i); i < 0 {
				return -1
			}
			i = valSkipJSONSpace(b, i)
			if i >= len(b) || b[i] != ':' {
				return -1
			}
			if i = valScanJSONValue(b, valSkipJSONSpace(b, i+1), depth+1); i < 0 {
				return -1
			}
			i = valSkipJSONSpace(b, i)
			if i >= len(b) {
				return -1
			}
			if b[i] == '}' {
				return i + 1
			}
			if b[i] != ',' {
				return -1
			}
			i = valSkipJSONSpace(b, i+1)
		}
	case '[':
		if depth >= valMaxJSONDepth {
			return -1
		}
		i = valSkipJSONSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1
		}
		for {
			if i = valScanJSONValue(b, i, depth+1); i < 0 {
				return -1
			}
			i = valSkipJSONSpace(b, i)
			if i >= len(b) {
				return -1
			}
			if b[i] == ']' {
				return i + 1
			}
			if b[i] != ',' {
				return -1
			}
			i = valSkipJSONSpace(b, i+1)
		}
	case '"':
		return valScanJSONString(b, i)
	case 't':
		return valScanLiteral(b, i, "true")
	case 'f':
		return valScanLiteral(b, i, "false")
	case 'n':
		return valScanLiteral(b, i, "null")
	}
	return valScanJSONNumber(b, i)
}

func valScanLiteral(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// valScanJSONString returns the index after the string whose opening quote
// is at b[i], or -1.
func valScanJSONString(b []byte, i int) int {
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
					if len(b)-i < 6 || valUnhex[b[i+2]]|valUnhex[b[i+3]]|valUnhex[b[i+4]]|valUnhex[b[i+5]] > 15 {
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

// valScanJSONNumber returns the index after the number starting at b[i],
// or -1.
func valScanJSONNumber(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		for i++; i < len(b) && valIsDigit(b[i]); i++ {
		}
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !valIsDigit(b[i]) {
			return -1
		}
		for i < len(b) && valIsDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !valIsDigit(b[i]) {
			return -1
		}
		for i < len(b) && valIsDigit(b[i]) {
			i++
		}
	}
	return i
}
