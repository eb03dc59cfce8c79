package pgtext

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/sink"
)

// OIDs pgtype has no constant for, standing for user types and the
// built-ins that render as text.
const (
	testMoneyOID  = 790
	testEnumOID   = 16500 // any user type: an enum, a domain, citext
	testEnumArray = 16501 // an array of it, unknown to pgtype
)

type valueCase struct {
	name string
	oid  uint32
	in   string
	want string
}

var thousandDigits = strings.Repeat("1234567890", 100)

var valueCases = []valueCase{
	// Integers and oid.
	{"int2 min", pgtype.Int2OID, "-32768", `-32768`},
	{"int4 zero", pgtype.Int4OID, "0", `0`},
	{"int4 negative", pgtype.Int4OID, "-42", `-42`},
	{"int8 max", pgtype.Int8OID, "9223372036854775807", `9223372036854775807`},
	{"int8 min", pgtype.Int8OID, "-9223372036854775808", `-9223372036854775808`},
	{"oid max", pgtype.OIDOID, "4294967295", `4294967295`},

	// Floats, as extra_float_digits=3 writes them.
	{"float4", pgtype.Float4OID, "1.5", `1.5`},
	{"float4 max", pgtype.Float4OID, "3.4028235e+38", `3.4028235e+38`},
	{"float4 negative zero", pgtype.Float4OID, "-0", `-0`},
	{"float8 exponent", pgtype.Float8OID, "1e+30", `1e+30`},
	{"float8 negative exponent", pgtype.Float8OID, "-1.2345678901234567e-300", `-1.2345678901234567e-300`},
	{"float8 pi", pgtype.Float8OID, "3.141592653589793", `3.141592653589793`},
	{"float8 NaN", pgtype.Float8OID, "NaN", `"NaN"`},
	{"float8 Infinity", pgtype.Float8OID, "Infinity", `"Infinity"`},
	{"float8 -Infinity", pgtype.Float8OID, "-Infinity", `"-Infinity"`},
	{"float4 NaN", pgtype.Float4OID, "NaN", `"NaN"`},

	// numeric keeps its digits, trailing zeros included.
	{"numeric exact", pgtype.NumericOID, "12345678901234567890.000100", `12345678901234567890.000100`},
	{"numeric negative fraction", pgtype.NumericOID, "-0.5", `-0.5`},
	{"numeric zero scale", pgtype.NumericOID, "0.000", `0.000`},
	{"numeric 1000 digits", pgtype.NumericOID, thousandDigits, thousandDigits},
	{"numeric 1000 digit fraction", pgtype.NumericOID, "-0." + thousandDigits, "-0." + thousandDigits},
	{"numeric NaN", pgtype.NumericOID, "NaN", `"NaN"`},
	{"numeric Infinity", pgtype.NumericOID, "Infinity", `"Infinity"`},
	{"numeric -Infinity", pgtype.NumericOID, "-Infinity", `"-Infinity"`},

	// Not JSON numbers: strings, never invalid JSON.
	{"number empty", pgtype.Int4OID, "", `""`},
	{"number plus sign", pgtype.Int4OID, "+1", `"+1"`},
	{"number leading zero", pgtype.Int4OID, "01", `"01"`},
	{"number trailing dot", pgtype.NumericOID, "1.", `"1."`},
	{"number leading dot", pgtype.NumericOID, ".5", `".5"`},
	{"number bare exponent", pgtype.Float8OID, "1e", `"1e"`},
	{"number hex", pgtype.Int8OID, "0x10", `"0x10"`},
	{"number space", pgtype.Int8OID, " 1", `" 1"`},
	{"number minus only", pgtype.Int8OID, "-", `"-"`},

	// bool.
	{"bool true", pgtype.BoolOID, "t", `true`},
	{"bool false", pgtype.BoolOID, "f", `false`},
	{"bool unexpected", pgtype.BoolOID, "true", `"true"`},
	{"bool empty", pgtype.BoolOID, "", `""`},

	// Strings.
	{"text", pgtype.TextOID, "hello", `"hello"`},
	{"text empty", pgtype.TextOID, "", `""`},
	{"text quotes backslash", pgtype.TextOID, `he said "hi" \o/`, `"he said \"hi\" \\o/"`},
	{"text newline tab cr", pgtype.TextOID, "a\nb\tc\rd", `"a\nb\tc\rd"`},
	{"text control chars", pgtype.TextOID, "\x00\x01\x08\x0c\x1f\x7f", `"\u0000\u0001\u0008\u000c\u001f` + "\x7f" + `"`},
	{"text unicode", pgtype.TextOID, "héllo 日本 🎉", `"héllo 日本 🎉"`},
	{"text html left alone", pgtype.TextOID, "<a href='x'>&</a>", `"<a href='x'>&</a>"`},
	{"text line separators", pgtype.TextOID, "a\u2028b\u2029c", `"a\u2028b\u2029c"`},
	{"text invalid utf8", pgtype.TextOID, "a\xffb", `"a\ufffdb"`},
	{"text truncated rune", pgtype.TextOID, "\xe6\x97", `"\ufffd\ufffd"`},
	{"text surrogate half", pgtype.TextOID, "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
	{"varchar", pgtype.VarcharOID, "v", `"v"`},
	{"bpchar padded", pgtype.BPCharOID, "ab  ", `"ab  "`},
	{"name", pgtype.NameOID, "pg_class", `"pg_class"`},
	{"char", pgtype.QCharOID, "x", `"x"`},
	{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	{"jsonpath", pgtype.JSONPathOID, `$."a"[*]?(@ > 1)`, `"$.\"a\"[*]?(@ > 1)"`},
	{"enum", testEnumOID, "shipped", `"shipped"`},
	{"inet", pgtype.InetOID, "192.168.0.1/24", `"192.168.0.1/24"`},
	{"interval", pgtype.IntervalOID, "1 year 2 mons 3 days 04:05:06.5", `"1 year 2 mons 3 days 04:05:06.5"`},
	{"money", testMoneyOID, "$1,234.50", `"$1,234.50"`},
	{"point", pgtype.PointOID, "(1.5,2)", `"(1.5,2)"`},
	{"box", pgtype.BoxOID, "(1,1),(0,0)", `"(1,1),(0,0)"`},
	{"tsvector", pgtype.TSVectorOID, "'a':1 'b':2", `"'a':1 'b':2"`},
	{"xml", pgtype.XMLOID, `<a x="1">t</a>`, `"<a x=\"1\">t</a>"`},
	{"int4range", pgtype.Int4rangeOID, "[1,5)", `"[1,5)"`},
	{"xid stays text", pgtype.XIDOID, "745", `"745"`},

	// json and jsonb: embedded as they are.
	{"jsonb object", pgtype.JSONBOID, `{"a": {"b": [1, 2.5, null, true, false]}, "c": "x\"y"}`, `{"a": {"b": [1, 2.5, null, true, false]}, "c": "x\"y"}`},
	{"jsonb array", pgtype.JSONBOID, `[1, "two", {"three": [3]}]`, `[1, "two", {"three": [3]}]`},
	{"jsonb string", pgtype.JSONBOID, `"s"`, `"s"`},
	{"jsonb number", pgtype.JSONBOID, `1e+400`, `1e+400`},
	{"jsonb null", pgtype.JSONBOID, `null`, `null`},
	{"jsonb unicode escapes", pgtype.JSONBOID, `{"k": "\u00e9\ud83c\udf89 é"}`, `{"k": "\u00e9\ud83c\udf89 é"}`},
	{"json whitespace kept", pgtype.JSONOID, "{\n  \"a\" : 1 ,\"a\":2\n}\n", "{\n  \"a\" : 1 ,\"a\":2\n}\n"},
	{"json invalid", pgtype.JSONOID, `{a: 1}`, `"{a: 1}"`},
	{"json truncated", pgtype.JSONOID, `[1,`, `"[1,"`},
	{"json empty", pgtype.JSONOID, ``, `""`},
	{"json invalid utf8", pgtype.JSONOID, "\"\xff\"", `"\"\ufffd\""`},
	{"json raw control", pgtype.JSONOID, "\"a\tb\"", `"\"a\tb\""`},

	// timestamptz: RFC 3339, UTC as Z.
	{"timestamptz micro", pgtype.TimestamptzOID, "2024-03-20 15:30:00.123456+00", `"2024-03-20T15:30:00.123456Z"`},
	{"timestamptz whole", pgtype.TimestamptzOID, "2024-03-20 15:30:00+00", `"2024-03-20T15:30:00Z"`},
	{"timestamptz fraction", pgtype.TimestamptzOID, "2024-03-20 15:30:00.5+00", `"2024-03-20T15:30:00.5Z"`},
	{"timestamptz offset hours", pgtype.TimestamptzOID, "2024-03-20 17:30:00+02", `"2024-03-20T17:30:00+02:00"`},
	{"timestamptz offset minutes", pgtype.TimestamptzOID, "2024-03-20 10:00:00-05:30", `"2024-03-20T10:00:00-05:30"`},
	{"timestamptz offset seconds", pgtype.TimestamptzOID, "1850-01-01 00:00:00+05:53:28", `"1850-01-01 00:00:00+05:53:28"`},
	{"timestamptz infinity", pgtype.TimestamptzOID, "infinity", `"infinity"`},
	{"timestamptz -infinity", pgtype.TimestamptzOID, "-infinity", `"-infinity"`},
	{"timestamptz BC", pgtype.TimestamptzOID, "0044-03-15 12:00:00+00 BC", `"0044-03-15 12:00:00+00 BC"`},
	{"timestamptz year 10000", pgtype.TimestamptzOID, "10000-01-01 00:00:00+00", `"10000-01-01T00:00:00Z"`},
	{"timestamptz no offset", pgtype.TimestamptzOID, "2024-03-20 15:30:00", `"2024-03-20 15:30:00"`},
	{"timestamptz empty fraction", pgtype.TimestamptzOID, "2024-03-20 15:30:00.+00", `"2024-03-20 15:30:00.+00"`},
	{"timestamptz garbage", pgtype.TimestamptzOID, "yesterday", `"yesterday"`},

	// timestamp.
	{"timestamp micro", pgtype.TimestampOID, "2024-03-20 15:30:00.123456", `"2024-03-20T15:30:00.123456"`},
	{"timestamp whole", pgtype.TimestampOID, "2024-03-20 15:30:00", `"2024-03-20T15:30:00"`},
	{"timestamp infinity", pgtype.TimestampOID, "infinity", `"infinity"`},
	{"timestamp BC", pgtype.TimestampOID, "2024-03-20 15:30:00 BC", `"2024-03-20 15:30:00 BC"`},
	{"timestamp with offset", pgtype.TimestampOID, "2024-03-20 15:30:00+00", `"2024-03-20 15:30:00+00"`},

	// date and time are ISO 8601 already.
	{"date", pgtype.DateOID, "2024-03-20", `"2024-03-20"`},
	{"date infinity", pgtype.DateOID, "infinity", `"infinity"`},
	{"date BC", pgtype.DateOID, "2024-03-20 BC", `"2024-03-20 BC"`},
	{"time", pgtype.TimeOID, "15:30:00", `"15:30:00"`},
	{"time fraction", pgtype.TimeOID, "15:30:00.123456", `"15:30:00.123456"`},
	{"time 24h", pgtype.TimeOID, "24:00:00", `"24:00:00"`},

	// timetz: a full ±HH:MM offset.
	{"timetz hours", pgtype.TimetzOID, "15:30:00+02", `"15:30:00+02:00"`},
	{"timetz utc", pgtype.TimetzOID, "15:30:00+00", `"15:30:00+00:00"`},
	{"timetz negative", pgtype.TimetzOID, "15:30:00.25-03", `"15:30:00.25-03:00"`},
	{"timetz minutes", pgtype.TimetzOID, "15:30:00+05:30", `"15:30:00+05:30"`},
	{"timetz seconds", pgtype.TimetzOID, "15:30:00+05:53:28", `"15:30:00+05:53:28"`},
	{"timetz no offset", pgtype.TimetzOID, "15:30:00", `"15:30:00"`},

	// bytea: hex text to base64.
	{"bytea empty", pgtype.ByteaOID, `\x`, `""`},
	{"bytea one", pgtype.ByteaOID, `\x00`, `"AA=="`},
	{"bytea two", pgtype.ByteaOID, `\x0001`, `"AAE="`},
	{"bytea three", pgtype.ByteaOID, `\x0102ff`, `"AQL/"`},
	{"bytea upper hex", pgtype.ByteaOID, `\xDEADBEEF`, `"3q2+7w=="`},
	{"bytea seven", pgtype.ByteaOID, `\x00112233445566`, `"ABEiM0RVZg=="`},
	{"bytea odd digits", pgtype.ByteaOID, `\x0`, `"\\x0"`},
	{"bytea not hex", pgtype.ByteaOID, `\x0g`, `"\\x0g"`},
	{"bytea escape format", pgtype.ByteaOID, `abc\000`, `"abc\\000"`},

	// Arrays.
	{"int4[]", pgtype.Int4ArrayOID, "{1,2,3}", `[1,2,3]`},
	{"int4[] empty", pgtype.Int4ArrayOID, "{}", `[]`},
	{"int4[] negative", pgtype.Int4ArrayOID, "{-1,0,-2147483648}", `[-1,0,-2147483648]`},
	{"int4[] nulls", pgtype.Int4ArrayOID, "{1,NULL,3,null}", `[1,null,3,null]`},
	{"int4[] quoted", pgtype.Int4ArrayOID, `{"1"}`, `[1]`},
	{"int4[] not a number", pgtype.Int4ArrayOID, `{abc}`, `["abc"]`},
	{"int4[][]", pgtype.Int4ArrayOID, "{{1,2},{3,4}}", `[[1,2],[3,4]]`},
	{"int4[][][]", pgtype.Int4ArrayOID, "{{{1},{2}},{{3},{NULL}}}", `[[[1],[2]],[[3],[null]]]`},
	{"int4[] six dims", pgtype.Int4ArrayOID, "{{{{{{1}}}}}}", `[[[[[[1]]]]]]`},
	{"int4[] seven dims", pgtype.Int4ArrayOID, "{{{{{{{1}}}}}}}", `"{{{{{{{1}}}}}}}"`},
	{"int4[] bounds", pgtype.Int4ArrayOID, "[0:1]={1,2}", `[1,2]`},
	{"int4[][] bounds", pgtype.Int4ArrayOID, "[1:2][-1:-1]={{1},{2}}", `[[1],[2]]`},
	{"int4[] whitespace", pgtype.Int4ArrayOID, " { 1 , 2 } ", `[1,2]`},
	{"int8[]", pgtype.Int8ArrayOID, "{9223372036854775807}", `[9223372036854775807]`},
	{"text[]", pgtype.TextArrayOID, `{a,"b,c","{d}","e\"f","g\\h",NULL,"NULL","",null}`, `["a","b,c","{d}","e\"f","g\\h",null,"NULL","",null]`},
	{"text[] spaces", pgtype.TextArrayOID, `{"a b"," x ",y}`, `["a b"," x ","y"]`},
	{"text[] newline", pgtype.TextArrayOID, "{\"l1\nl2\",\"t\tab\"}", `["l1\nl2","t\tab"]`},
	{"text[] unicode", pgtype.TextArrayOID, `{日本,"🎉 party"}`, `["日本","🎉 party"]`},
	{"text[] escapes everywhere", pgtype.TextArrayOID, `{"\\\"\\","\a\b"}`, `["\\\"\\","ab"]`},
	{"text[] bare escapes", pgtype.TextArrayOID, `{a\,b,c\ ,\NULL}`, `["a,b","c ","NULL"]`},
	{"text[] empty string", pgtype.TextArrayOID, `{""}`, `[""]`},
	{"text[][]", pgtype.TextArrayOID, `{{a,"b}"},{"{c","d,"}}`, `[["a","b}"],["{c","d,"]]`},
	{"varchar[]", pgtype.VarcharArrayOID, `{x,y}`, `["x","y"]`},
	{"jsonb[]", pgtype.JSONBArrayOID, `{"{\"a\": 1, \"b\": {\"c\": [1, \"x,y\"]}}","[1, 2]","\"s\"",NULL,"null",7}`, `[{"a": 1, "b": {"c": [1, "x,y"]}},[1, 2],"s",null,null,7]`},
	{"jsonb[] invalid element", pgtype.JSONBArrayOID, `{"{a}"}`, `["{a}"]`},
	{"json[]", pgtype.JSONArrayOID, `{"{\"a\":\"\\\\\"}"}`, `[{"a":"\\"}]`},
	{"numeric[]", pgtype.NumericArrayOID, `{1.5,NaN,-Infinity,12345678901234567890.000100}`, `[1.5,"NaN","-Infinity",12345678901234567890.000100]`},
	{"float8[]", pgtype.Float8ArrayOID, `{1e+30,-1.5e-07,NaN,Infinity}`, `[1e+30,-1.5e-07,"NaN","Infinity"]`},
	{"bool[]", pgtype.BoolArrayOID, `{t,f,NULL}`, `[true,false,null]`},
	{"timestamptz[]", pgtype.TimestamptzArrayOID, `{"2024-03-20 15:30:00+00","2024-03-21 00:00:00.5+00",infinity,NULL}`, `["2024-03-20T15:30:00Z","2024-03-21T00:00:00.5Z","infinity",null]`},
	{"timestamp[]", pgtype.TimestampArrayOID, `{"2024-03-20 15:30:00"}`, `["2024-03-20T15:30:00"]`},
	{"date[]", pgtype.DateArrayOID, `{2024-03-20,infinity}`, `["2024-03-20","infinity"]`},
	{"timetz[]", pgtype.TimetzArrayOID, `{15:30:00+02}`, `["15:30:00+02:00"]`},
	{"uuid[]", pgtype.UUIDArrayOID, `{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}`, `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",null]`},
	{"bytea[]", pgtype.ByteaArrayOID, `{"\\x0102","\\x",NULL}`, `["AQI=","",null]`},
	{"box[]", pgtype.BoxArrayOID, `{(1,1),(0,0);(3,3),(2,2)}`, `["(1,1),(0,0)","(3,3),(2,2)"]`},
	{"int4range[]", pgtype.Int4rangeArrayOID, `{"[1,3)","[5,7)"}`, `["[1,3)","[5,7)"]`},
	{"interval[]", pgtype.IntervalArrayOID, `{"1 day","-00:00:01"}`, `["1 day","-00:00:01"]`},

	// Malformed arrays stay text.
	{"array unclosed", pgtype.Int4ArrayOID, "{1,2", `"{1,2"`},
	{"array empty element", pgtype.Int4ArrayOID, "{1,,2}", `"{1,,2}"`},
	{"array trailing delimiter", pgtype.Int4ArrayOID, "{1,}", `"{1,}"`},
	{"array lone delimiter", pgtype.Int4ArrayOID, "{,}", `"{,}"`},
	{"array no braces", pgtype.Int4ArrayOID, "1,2", `"1,2"`},
	{"array extra brace", pgtype.Int4ArrayOID, "{1}}", `"{1}}"`},
	{"array trailing text", pgtype.Int4ArrayOID, "{1} x", `"{1} x"`},
	{"array unclosed quote", pgtype.TextArrayOID, `{"a}`, `"{\"a}"`},
	{"array quote inside bare", pgtype.TextArrayOID, `{a"b}`, `"{a\"b}"`},
	{"array text after quote", pgtype.TextArrayOID, `{"a"b}`, `"{\"a\"b}"`},
	{"array bounds without =", pgtype.Int4ArrayOID, "[1:2]{1,2}", `"[1:2]{1,2}"`},
	{"array bounds unclosed", pgtype.Int4ArrayOID, "[1:2", `"[1:2"`},
	{"array trailing backslash", pgtype.TextArrayOID, `{a\`, `"{a\\"`},
	{"array empty", pgtype.Int4ArrayOID, "", `""`},

	// Array types pgtype does not know stay text (see AppendArrayJSON).
	{"unknown array", testEnumArray, "{a,b}", `"{a,b}"`},
}

func check(t *testing.T, got []byte, want string) {
	t.Helper()
	if !json.Valid(got) {
		t.Errorf("invalid JSON: %s", got)
	}
	if !utf8.Valid(got) {
		t.Errorf("invalid UTF-8: %q", got)
	}
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAppendValue(t *testing.T) {
	t.Parallel()
	for _, c := range valueCases {
		t.Run(c.name, func(t *testing.T) {
			check(t, AppendJSON(nil, c.oid, []byte(c.in)), c.want)
		})
	}
}

// TestAppendValueKeepsDst appends after existing content, into buffers both
// with and without spare room, which exercises the in-place unescaping of
// quoted array elements.
func TestAppendValueKeepsDst(t *testing.T) {
	t.Parallel()
	for _, c := range valueCases {
		for _, spare := range []int{0, 1, 4096} {
			dst := make([]byte, 3, 3+spare)
			copy(dst, "[0,")
			got := AppendJSON(dst, c.oid, []byte(c.in))
			if string(got[:3]) != "[0," {
				t.Fatalf("%s: prefix clobbered: %q", c.name, got)
			}
			if string(got[3:]) != c.want {
				t.Errorf("%s (spare %d): got %s, want %s", c.name, spare, got[3:], c.want)
			}
		}
	}
}

func TestAppendArray(t *testing.T) {
	t.Parallel()
	for _, c := range []valueCase{
		{"enum[]", testEnumOID, `{happy,sad,NULL,"very happy"}`, `["happy","sad",null,"very happy"]`},
		{"int4 elements", pgtype.Int4OID, `{1,{2}}`, `[1,[2]]`},
		{"box elements", pgtype.BoxOID, `{(1,1),(0,0);(3,3),(2,2)}`, `["(1,1),(0,0)","(3,3),(2,2)"]`},
		{"jsonb elements", pgtype.JSONBOID, `{"{\"a\": [1]}"}`, `[{"a": [1]}]`},
		{"nested, bounds", testEnumOID, `[2:3][1:1]={{x},{"y z"}}`, `[["x"],["y z"]]`},
		{"array element type", pgtype.Int4ArrayOID, `{"{1,2}"}`, `["{1,2}"]`},
		{"malformed", testEnumOID, `{a`, `"{a"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			check(t, AppendArrayJSON(nil, c.oid, []byte(c.in)), c.want)
		})
	}
}

// TestArrayTypes checks the table built from pgtype covers the array types
// the mapping names.
func TestArrayTypes(t *testing.T) {
	t.Parallel()
	for oid, want := range map[uint32]arrayType{
		pgtype.Int4ArrayOID:        {kindNumber, ','},
		pgtype.TextArrayOID:        {kindString, ','},
		pgtype.JSONBArrayOID:       {kindJSON, ','},
		pgtype.NumericArrayOID:     {kindNumber, ','},
		pgtype.BoolArrayOID:        {kindBool, ','},
		pgtype.TimestamptzArrayOID: {kindTimestamptz, ','},
		pgtype.UUIDArrayOID:        {kindString, ','},
		pgtype.ByteaArrayOID:       {kindBytea, ','},
		pgtype.BoxArrayOID:         {kindUnknown, ';'},
		pgtype.RecordArrayOID:      {kindUnknown, ','},
	} {
		if got, ok := arrayTypes[oid]; !ok || got != want {
			t.Errorf("array type %d: got %v (%v), want %v", oid, got, ok, want)
		}
	}
	if d := elemDelims[pgtype.BoxOID]; d != ';' {
		t.Errorf("box delimiter %q", d)
	}
}

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	var all []byte
	for c := 0; c < 256; c++ {
		all = append(all, byte(c))
	}
	for _, s := range []string{string(all), "a\u2028\u2029b", "\xf4\x90\x80\x80", "日本\xe6"} {
		checkJSONString(t, []byte(s))
	}
}

// checkJSONString checks AppendJSONString decodes to what encoding/json
// says s is as a string (the same U+FFFD replacements included).
func checkJSONString(t *testing.T, s []byte) {
	t.Helper()
	out := sink.AppendJSONString(nil, s)
	if !json.Valid(out) || !utf8.Valid(out) {
		t.Fatalf("invalid output for %q: %q", s, out)
	}
	want, err := json.Marshal(string(s))
	if err != nil {
		t.Fatal(err)
	}
	var got, exp string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(want, &exp); err != nil {
		t.Fatal(err)
	}
	if got != exp {
		t.Fatalf("%q: got %q, want %q", s, got, exp)
	}
}

func TestAppendValueAllocs(t *testing.T) {
	// Not parallel: testing.AllocsPerRun refuses to run in a parallel test.
	dst := make([]byte, 0, 1<<16)
	for _, c := range valueCases {
		in := []byte(c.in)
		if n := testing.AllocsPerRun(10, func() { AppendJSON(dst[:0], c.oid, in) }); n != 0 {
			t.Errorf("%s: %v allocs", c.name, n)
		}
	}
}

func TestValidJSON(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		`0`, `-0`, `-0.0e-0`, `1E5`, `"\u0000"`, `"\/"`, `[]`, `{}`, ` [ 1 , { "a" : [ ] } ] `,
		`"\ud800"`, `true`, `false`, `null`,
		``, ` `, `01`, `1.`, `.1`, `-`, `+1`, `1e`, `"`, `"\x"`, `"\u12"`, `"\u12g4"`, "\"\x01\"",
		`[1,]`, `{"a"}`, `{"a":}`, `{1:2}`, `{"a":1,}`, `tru`, `nul`, `truex`, `[1] [2]`, `NaN`, "\xff",
		"\"\xed\xa0\x80\"", "\"\xc3\xa9\"", strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001),
	} {
		checkValidJSON(t, []byte(s))
	}
}

// checkValidJSON holds the validator to json.Valid, with valid UTF-8
// required on top.
func checkValidJSON(t *testing.T, b []byte) {
	t.Helper()
	if got, want := validJSON(b), json.Valid(b) && utf8.Valid(b); got != want {
		t.Fatalf("validJSON(%.80q) = %v, want %v", b, got, want)
	}
}

// fuzzOIDs are the types FuzzAppendValue tries each input as.
var fuzzOIDs = []uint32{
	pgtype.Int4OID, pgtype.Float8OID, pgtype.NumericOID, pgtype.BoolOID, pgtype.TextOID,
	pgtype.JSONOID, pgtype.JSONBOID, pgtype.TimestamptzOID, pgtype.TimestampOID,
	pgtype.DateOID, pgtype.TimetzOID, pgtype.ByteaOID, testEnumOID,
	pgtype.Int4ArrayOID, pgtype.TextArrayOID, pgtype.JSONBArrayOID, pgtype.NumericArrayOID,
	pgtype.BoolArrayOID, pgtype.TimestamptzArrayOID, pgtype.ByteaArrayOID, pgtype.BoxArrayOID,
	pgtype.TimetzArrayOID, pgtype.UUIDArrayOID,
}

// FuzzAppendValue renders arbitrary text as each of fuzzOIDs (by index,
// so the fuzzer can steer the type too), through AppendJSON and
// AppendArrayJSON, and into a buffer with or without room, and insists on valid
// JSON every time.
func FuzzAppendValue(f *testing.F) {
	for _, c := range valueCases {
		for i, oid := range fuzzOIDs {
			if oid == c.oid {
				f.Add(uint8(i), c.in)
			}
		}
		f.Add(uint8(len(c.in)), c.in)
	}
	f.Fuzz(func(t *testing.T, sel uint8, in string) {
		oid := fuzzOIDs[int(sel)%len(fuzzOIDs)]
		text := []byte(in)
		for _, spare := range []int{0, 64} {
			for _, fn := range []func([]byte, uint32, []byte) []byte{AppendJSON, AppendArrayJSON} {
				dst := make([]byte, 3, 3+spare)
				copy(dst, "[0,")
				out := fn(dst, oid, text)
				if string(out[:3]) != "[0," {
					t.Fatalf("oid %d: prefix clobbered: %q", oid, out)
				}
				if !json.Valid(out[3:]) || !utf8.Valid(out[3:]) {
					t.Fatalf("oid %d of %q: invalid JSON %q", oid, in, out[3:])
				}
			}
		}
		if string(text) != in {
			t.Fatalf("input modified: %q", text)
		}
	})
}

func FuzzValidJSON(f *testing.F) {
	for _, c := range valueCases {
		f.Add([]byte(c.in))
		f.Add([]byte(c.want))
	}
	f.Fuzz(checkValidJSON)
}

func FuzzAppendJSONString(f *testing.F) {
	for _, c := range valueCases {
		f.Add([]byte(c.in))
	}
	f.Fuzz(checkJSONString)
}

func FuzzBytea(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 2, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, h := range []string{hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b))} {
			got := AppendJSON(nil, pgtype.ByteaOID, []byte(`\x`+h))
			if want := `"` + base64.StdEncoding.EncodeToString(b) + `"`; string(got) != want {
				t.Fatalf("%x: got %s, want %s", b, got, want)
			}
		}
	})
}

// arrayOut writes a one-dimensional text[] the way Postgres's array_out
// does: elements quoted when empty, NULL-like, or holding whitespace,
// delimiters, braces, quotes or backslashes, which are then escaped.
func arrayOut(elems []*string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range elems {
		if i > 0 {
			b.WriteByte(',')
		}
		if e == nil {
			b.WriteString("NULL")
			continue
		}
		s := *e
		if s == "" || strings.EqualFold(s, "NULL") || strings.ContainsAny(s, " \t\n\r\v\f,{}\"\\") {
			b.WriteByte('"')
			for i := 0; i < len(s); i++ {
				if s[i] == '"' || s[i] == '\\' {
					b.WriteByte('\\')
				}
				b.WriteByte(s[i])
			}
			b.WriteByte('"')
		} else {
			b.WriteString(s)
		}
	}
	b.WriteByte('}')
	return b.String()
}

// FuzzTextArray round-trips text[] values: elements are the input split at
// '|', with "~" standing for NULL.
func FuzzTextArray(f *testing.F) {
	f.Add("a|b,c|~|NULL||\"q\"|\\|{x}| sp ")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		if !utf8.ValidString(in) {
			return // compared as strings below: keep it lossless
		}
		var elems []*string
		for _, p := range strings.Split(in, "|") {
			if p == "~" {
				elems = append(elems, nil)
			} else {
				elems = append(elems, &p)
			}
		}
		text := arrayOut(elems)
		out := AppendJSON(nil, pgtype.TextArrayOID, []byte(text))
		var got []*string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q → %s: %v", text, out, err)
		}
		if !reflect.DeepEqual(got, elems) {
			t.Fatalf("%q → %s", text, out)
		}
	})
}

// A typical row: id, status, created_at, amount, payload.
var benchRow = []struct {
	oid  uint32
	text []byte
}{
	{pgtype.Int8OID, []byte("1234567890")},
	{pgtype.TextOID, []byte("shipped to Mrs. O'Neil, 221B Baker Street")},
	{pgtype.TimestamptzOID, []byte("2024-03-20 15:30:00.123456+00")},
	{pgtype.NumericOID, []byte("12345.6700")},
	{pgtype.JSONBOID, []byte(`{"sku": "A-100", "qty": 2, "tags": ["gift", "express"], "meta": {"source": "web", "score": 0.93}}`)},
}

func BenchmarkAppendValueRow(b *testing.B) {
	dst := make([]byte, 0, 4096)
	n := 0
	for _, v := range benchRow {
		n += len(v.text)
	}
	b.SetBytes(int64(n))
	b.ReportAllocs()
	for b.Loop() {
		dst = dst[:0]
		for _, v := range benchRow {
			dst = AppendJSON(dst, v.oid, v.text)
			dst = append(dst, ',')
		}
	}
}

func BenchmarkAppendValue(b *testing.B) {
	for _, c := range []valueCase{
		{name: "int8", oid: pgtype.Int8OID, in: "1234567890"},
		{name: "text", oid: pgtype.TextOID, in: "shipped to Mrs. O'Neil, 221B Baker Street"},
		{name: "timestamptz", oid: pgtype.TimestamptzOID, in: "2024-03-20 15:30:00.123456+00"},
		{name: "jsonb", oid: pgtype.JSONBOID, in: string(benchRow[4].text)},
		{name: "bytea64", oid: pgtype.ByteaOID, in: `\x` + strings.Repeat("0123456789abcdef", 8)},
		{name: "text[]", oid: pgtype.TextArrayOID, in: `{alpha,"beta gamma","with \"quote\"",NULL}`},
		{name: "int4[]", oid: pgtype.Int4ArrayOID, in: `{1,2,3,4,5,6,7,8,9,10}`},
		{name: "unknown array", oid: testEnumArray, in: `{a,b}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			dst := make([]byte, 0, 4096)
			in := []byte(c.in)
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				dst = AppendJSON(dst[:0], c.oid, in)
			}
		})
	}
}

// BenchmarkValidJSON compares the jsonb check with json.Valid.
func BenchmarkValidJSON(b *testing.B) {
	in := benchRow[4].text
	b.Run("validJSON", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			validJSON(in)
		}
	})
	b.Run("json.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			json.Valid(in)
		}
	})
}
