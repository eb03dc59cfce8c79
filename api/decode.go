package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/walhook/walhook/config"
)

// readBody reads a management request body, bounded.
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxRequestBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, invalid("", "request body is larger than %d bytes", maxRequestBody)
	}
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	return b, nil
}

// decodeStrict decodes a JSON object into dst (a pointer to a struct),
// rejecting unknown fields. Unlike json.Decoder's DisallowUnknownFields it
// reports every problem with its key path, including errors of custom
// types such as durations, so a 400 can name the field.
func decodeStrict(body []byte, dst any) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		return invalid("", "request body is empty; send a JSON object")
	}
	if !json.Valid(body) {
		var x any
		err := json.Unmarshal(body, &x)
		return invalid("", "request body is not valid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	var errs validationError
	decodeValue(body, reflect.ValueOf(dst).Elem(), "", &errs)
	if len(errs) > 0 {
		return errs
	}
	return nil
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func decodeValue(data json.RawMessage, v reflect.Value, path string, errs *validationError) {
	t := v.Type()
	custom := reflect.PointerTo(t).Implements(unmarshalerType)
	switch {
	case !custom && t.Kind() == reflect.Struct:
		if string(data) == "null" {
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			*errs = append(*errs, fieldError{Field: path, Message: "must be an object, not " + jsonKind(data)})
			return
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			idx, ok := fields[k]
			if !ok {
				msg := "unknown field" + config.Suggest(k, slices.Sorted(maps.Keys(fields)))
				*errs = append(*errs, fieldError{Field: join(path, k), Message: msg})
				continue
			}
			decodeValue(m[k], v.Field(idx), join(path, k), errs)
		}
	case !custom && t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		if string(data) == "null" {
			v.Set(reflect.Zero(t))
			return
		}
		var items []json.RawMessage
		if err := json.Unmarshal(data, &items); err != nil {
			*errs = append(*errs, fieldError{Field: path, Message: "must be a list, not " + jsonKind(data)})
			return
		}
		out := reflect.MakeSlice(t, len(items), len(items))
		for i, item := range items {
			decodeValue(item, out.Index(i), fmt.Sprintf("%s[%d]", path, i), errs)
		}
		v.Set(out)
	default:
		fresh := reflect.New(t)
		if err := json.Unmarshal(data, fresh.Interface()); err != nil {
			*errs = append(*errs, fieldError{Field: path, Message: describeDecodeError(err, t, data)})
			return
		}
		v.Set(fresh.Elem())
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonFields maps a struct's JSON names to field indexes.
func jsonFields(t reflect.Type) map[string]int {
	out := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = i
	}
	return out
}

// describeDecodeError explains a type mismatch without echoing the value
// (it may be a secret put in the wrong field).
func describeDecodeError(err error, t reflect.Type, data json.RawMessage) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) || strings.HasPrefix(err.Error(), "json: ") {
		return "must be " + typeName(t) + ", not " + jsonKind(data)
	}
	return err.Error()
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list of " + strings.TrimPrefix(strings.TrimPrefix(typeName(t.Elem()), "a "), "an ") + "s"
	case reflect.Map:
		return "an object of " + strings.TrimPrefix(strings.TrimPrefix(typeName(t.Elem()), "a "), "an ") + "s"
	case reflect.Interface:
		return "a JSON value"
	case reflect.Pointer:
		return typeName(t.Elem())
	}
	return "an object"
}

func jsonKind(data json.RawMessage) string {
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "nothing"
	}
	switch s[0] {
	case '{':
		return "an object"
	case '[':
		return "a list"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	if strings.ContainsAny(s, ".eE") {
		return "a fractional number"
	}
	return "a number"
}
