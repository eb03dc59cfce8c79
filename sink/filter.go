package sink

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/walhook/walhook/config"
)

// filter is a compiled config.Filter. Column values are JSON (as rendered
// by the decoder); they compare as numbers when both sides are numbers and
// as text otherwise, which orders ISO 8601 timestamps correctly too.
type filter struct {
	column string
	op     string
	values []scalar // one for comparisons, several for in/not_in
}

// scalar is a JSON scalar ready to compare.
type scalar struct {
	null  bool
	isNum bool
	num   float64
	text  string // the string value, or the literal text of a number/bool
}

func compileFilter(f config.Filter) filter {
	out := filter{column: f.Column, op: f.Op}
	switch v := f.Value.(type) {
	case nil:
	case []any:
		for _, e := range v {
			out.values = append(out.values, scalarOf(e))
		}
	default:
		out.values = append(out.values, scalarOf(v))
	}
	return out
}

// scalarOf converts a YAML/JSON-decoded filter value.
func scalarOf(v any) scalar {
	switch x := v.(type) {
	case nil:
		return scalar{null: true}
	case string:
		return scalar{text: x}
	case bool:
		return scalar{text: strconv.FormatBool(x)}
	case int:
		return scalar{isNum: true, num: float64(x), text: strconv.Itoa(x)}
	case int64:
		return scalar{isNum: true, num: float64(x), text: strconv.FormatInt(x, 10)}
	case uint64:
		return scalar{isNum: true, num: float64(x), text: strconv.FormatUint(x, 10)}
	case float64:
		return scalar{isNum: true, num: x, text: strconv.FormatFloat(x, 'f', -1, 64)}
	case json.Number:
		f, err := x.Float64()
		return scalar{isNum: err == nil, num: f, text: x.String()}
	case time.Time:
		return scalar{text: x.UTC().Format("2006-01-02T15:04:05.999999Z07:00")}
	default:
		return scalar{text: fmt.Sprint(x)}
	}
}

// parseScalar reads a rendered JSON column value. Arrays and objects
// compare by their JSON text.
func parseScalar(raw []byte) scalar {
	switch {
	case len(raw) == 0 || bytes.Equal(raw, []byte("null")):
		return scalar{null: true}
	case raw[0] == '"':
		if bytes.IndexByte(raw[1:len(raw)-1], '\\') < 0 {
			return scalar{text: string(raw[1 : len(raw)-1])}
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return scalar{text: s}
		}
		return scalar{text: string(raw)}
	case raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'):
		f, err := strconv.ParseFloat(string(raw), 64)
		return scalar{isNum: err == nil, num: f, text: string(raw)}
	default:
		return scalar{text: string(raw)}
	}
}

// compare returns -1, 0 or 1.
func compare(a, b scalar) int {
	if a.isNum && b.isNum {
		switch {
		case a.num < b.num:
			return -1
		case a.num > b.num:
			return 1
		}
		return 0
	}
	if b.isNum && !a.isNum {
		// A text column compared with a number: try the text as a number
		// (numeric NaN aside, this is a string-typed number column).
		if f, err := strconv.ParseFloat(a.text, 64); err == nil {
			return compare(scalar{isNum: true, num: f}, b)
		}
	}
	switch {
	case a.text < b.text:
		return -1
	case a.text > b.text:
		return 1
	}
	return 0
}

// holds evaluates the filter on a change; col is the column's position in
// the change's relation (-1 when the table has no such column). A
// comparison on a column that is missing from the record does not hold.
func (f *filter) holds(c *Change, col int) bool {
	if f.op == "changed" {
		switch c.Action {
		case Insert, Read:
			return true
		case Update:
			if c.Old == nil || col < 0 || col >= len(c.Old) || c.Old[col] == nil {
				return true // unknown without REPLICA IDENTITY FULL: deliver rather than drop
			}
			return c.Changed(col)
		default:
			return false
		}
	}
	raw := c.Value(col)
	if raw == nil {
		return false
	}
	v := parseScalar(raw)
	switch f.op {
	case "is_null":
		return v.null
	case "is_not_null":
		return !v.null
	}
	if v.null {
		return f.op == "!=" || f.op == "not_in"
	}
	switch f.op {
	case "in", "not_in":
		found := false
		for _, want := range f.values {
			if !want.null && compare(v, want) == 0 {
				found = true
				break
			}
		}
		return found == (f.op == "in")
	}
	if len(f.values) == 0 {
		return false
	}
	want := f.values[0]
	if want.null {
		return f.op == "!=" // only "!= null" can hold for a non-null value
	}
	n := compare(v, want)
	switch f.op {
	case "=":
		return n == 0
	case "!=":
		return n != 0
	case "<":
		return n < 0
	case "<=":
		return n <= 0
	case ">":
		return n > 0
	case ">=":
		return n >= 0
	}
	return false
}
