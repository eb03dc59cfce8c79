// Package pgtext turns column values, in the text format pgoutput sends,
// into JSON (docs/reference.md#44-values). It runs once per column of every captured
// row, so it appends to a caller-owned buffer and allocates nothing once that
// buffer has room. Whatever it cannot make sense of is emitted as a JSON
// string of the Postgres text: a surprising value must never corrupt a
// message.
//
// The session settings it relies on (the replication connection sets them):
// DateStyle=ISO, TimeZone=UTC, IntervalStyle=postgres, extra_float_digits=3,
// bytea_output=hex.
package pgtext

import (
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/sink"
)

// kind is how a type's values are rendered.
type kind uint8

const (
	kindUnknown     kind = iota // not a type we know: an array, or a string
	kindString                  // JSON string of the text
	kindNumber                  // JSON number, from the text as-is
	kindBool                    // t/f → true/false
	kindJSON                    // the text is JSON already
	kindTimestamptz             // "2024-03-20 15:30:00+00" → "2024-03-20T15:30:00Z"
	kindTimestamp               // "2024-03-20 15:30:00" → "2024-03-20T15:30:00"
	kindTimetz                  // "15:30:00+02" → "15:30:00+02:00"
	kindBytea                   // "\x0102" → base64
)

// kindOf is a switch rather than a map lookup because it runs for every
// column; only types outside it pay for the array table lookup.
func kindOf(oid uint32) kind {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID,
		pgtype.Float4OID, pgtype.Float8OID, pgtype.NumericOID:
		return kindNumber
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID,
		pgtype.QCharOID, pgtype.UUIDOID, pgtype.JSONPathOID,
		pgtype.DateOID, pgtype.TimeOID: // date and time text is ISO 8601 already
		return kindString
	case pgtype.BoolOID:
		return kindBool
	case pgtype.JSONOID, pgtype.JSONBOID:
		return kindJSON
	case pgtype.TimestamptzOID:
		return kindTimestamptz
	case pgtype.TimestampOID:
		return kindTimestamp
	case pgtype.TimetzOID:
		return kindTimetz
	case pgtype.ByteaOID:
		return kindBytea
	}
	return kindUnknown
}

// arrayType describes an array type: how its elements render and the
// character between them (',' for every built-in type but box, whose text
// contains commas).
type arrayType struct {
	elem  kind
	delim byte
}

// arrayTypes maps the array type OIDs pgtype knows to their element's
// rendering, and elemDelims the element types whose arrays are not
// comma-separated. Built once: pgtype.Map has no way to list its types, so
// every OID below FirstNormalObjectId (16384, where user types start) is
// asked for; that takes well under a millisecond.
var arrayTypes, elemDelims = func() (map[uint32]arrayType, map[uint32]byte) {
	m := pgtype.NewMap()
	arrays := map[uint32]arrayType{}
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
		arrays[oid] = arrayType{elem: kindOf(ac.ElementType.OID), delim: d}
	}
	// pgtype registers neither timetz nor its array: of the built-in arrays
	// the loop misses, the only one whose elements are not plain strings.
	arrays[pgtype.TimetzArrayOID] = arrayType{elem: kindTimetz, delim: ','}
	return arrays, delims
}()

// AppendJSON appends the JSON form of a column value to dst. text is the
// value in Postgres text output format (as pgoutput sends it); typeOID is the
// column's type. Types it does not know, and values it cannot parse, become
// JSON strings of the text, so the output is always valid JSON.
func AppendJSON(dst []byte, typeOID uint32, text []byte) []byte {
	if k := kindOf(typeOID); k != kindUnknown {
		return appendKind(dst, k, text)
	}
	if a, ok := arrayTypes[typeOID]; ok {
		return appendArray(dst, a.elem, a.delim, text)
	}
	return sink.AppendJSONString(dst, text)
}

// AppendArrayJSON appends a Postgres array, given in text format, as a JSON
// array whose elements render as elemOID values would. It exists for arrays
// whose type pgtype does not know (arrays of enums or domains, say): the
// caller finds the element type in pg_type.typelem. Malformed text becomes
// a JSON string.
func AppendArrayJSON(dst []byte, elemOID uint32, text []byte) []byte {
	delim, ok := elemDelims[elemOID]
	if !ok {
		delim = ','
	}
	return appendArray(dst, kindOf(elemOID), delim, text)
}

func appendKind(dst []byte, k kind, text []byte) []byte {
	switch k {
	case kindNumber:
		// Postgres's numbers are JSON numbers, but for NaN and the
		// infinities, which JSON lacks: those fall through to strings.
		if len(text) > 0 && scanJSONNumber(text, 0) == len(text) {
			return append(dst, text...)
		}
	case kindBool:
		if len(text) == 1 {
			switch text[0] {
			case 't':
				return append(dst, "true"...)
			case 'f':
				return append(dst, "false"...)
			}
		}
	case kindJSON:
		// Validated because embedding invalid JSON would break the whole
		// message: a json column in a non-UTF-8 database, say.
		if validJSON(text) {
			return append(dst, text...)
		}
	case kindTimestamptz:
		return appendTimestamp(dst, text, true)
	case kindTimestamp:
		return appendTimestamp(dst, text, false)
	case kindTimetz:
		return appendTimetz(dst, text)
	case kindBytea:
		return appendBytea(dst, text)
	}
	return sink.AppendJSONString(dst, text)
}
