package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
)

// errorBody is every error answer: {"error": {"code", "message"}}, with
// the offending field (and every problem, when several) for validation
// errors so clients can point at the input.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Field   string       `json:"field,omitempty"`
	Errors  []fieldError `json:"errors,omitempty"`
}

// fieldError is one validation problem, named by its key path relative
// to the request body ("retry.max_backoff", "filters[0].op").
type fieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e fieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

// validationError is a 400 listing every problem found.
type validationError []fieldError

func (v validationError) Error() string {
	parts := make([]string, len(v))
	for i, e := range v {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func invalid(field, format string, args ...any) validationError {
	return validationError{{Field: field, Message: fmt.Sprintf(format, args...)}}
}

// fromConfigErrors turns config validation errors (already relative to
// the object) into field errors.
func fromConfigErrors(errs []error) validationError {
	var out validationError
	for _, err := range errs {
		var ce *config.Error
		if errors.As(err, &ce) {
			out = append(out, fieldError{Field: ce.Key, Message: ce.Msg})
		} else {
			out = append(out, fieldError{Message: err.Error()})
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", "cannot encode the response")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: msg}})
}

// fail answers err with the fitting status: validation errors 400 naming
// the field, missing objects 404, taken names 409; anything else is
// logged and answered 500 without details (they may name internals).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var v validationError
	var c *conflictError
	switch {
	case errors.As(err, &v):
		d := errorDetail{Code: "invalid", Message: v.Error(), Errors: v}
		if len(v) > 0 {
			d.Field = v[0].Field
		}
		writeJSON(w, http.StatusBadRequest, errorBody{Error: d})
	case errors.As(err, &c):
		writeError(w, http.StatusConflict, c.code, c.msg)
	case errors.Is(err, outbox.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, outbox.ErrExists):
		writeError(w, http.StatusConflict, "exists", err.Error())
	case r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		writeError(w, http.StatusServiceUnavailable, "cancelled", "request cancelled")
	default:
		s.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("request failed")
		writeError(w, http.StatusInternalServerError, "internal", "internal error; see the walhook log")
	}
}

// conflictError is a 409 with its own code ("in_use", "not_redeliverable").
type conflictError struct{ code, msg string }

func (c *conflictError) Error() string { return c.msg }

func conflict(code, format string, args ...any) error {
	return &conflictError{code: code, msg: fmt.Sprintf(format, args...)}
}

// pathID reads the {id} of a route: a positive number, else a 400 naming
// the field "id" ("%q is not a <what> id").
func pathID(r *http.Request, what string) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, invalid("id", "%q is not a %s id", r.PathValue("id"), what)
	}
	return id, nil
}

// unknownParams reports every query parameter of q not in known, naming
// the known ones. Routes that stop at the first problem answer errs[:1].
func unknownParams(q url.Values, known ...string) validationError {
	var errs validationError
	for k := range q {
		if !slices.Contains(known, k) {
			errs = append(errs, fieldError{Field: k, Message: "unknown query parameter (use " + strings.Join(known, ", ") + ")"})
		}
	}
	return errs
}

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
				msg := "unknown field"
				if s := closest(k, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
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

// closest suggests a known field for a misspelt one.
func closest(k string, fields map[string]int) string {
	best, bestD := "", 3
	for f := range fields {
		if d := editDistance(k, f); d < bestD || (d == bestD && f < best) {
			best, bestD = f, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// patched applies a merge patch to the current object and decodes the
// result strictly into out, so PATCH validates like POST. It returns the
// merged JSON, which tells which fields ended up set.
func patched(cur any, patch []byte, out any) (json.RawMessage, error) {
	curJSON, err := json.Marshal(cur)
	if err != nil {
		return nil, fmt.Errorf("encode current object: %w", err)
	}
	merged, err := mergePatch(curJSON, patch)
	if err != nil {
		return nil, err
	}
	if err := decodeStrict(merged, out); err != nil {
		return nil, err
	}
	return merged, nil
}

// mergePatch applies an RFC 7386 JSON merge patch: objects merge key by
// key, null removes a key, anything else replaces. PATCH bodies use it so
// a client can change one retry setting or one header without resending
// the rest.
func mergePatch(target, patch json.RawMessage) (json.RawMessage, error) {
	var p any
	if err := unmarshalNumbers(patch, &p); err != nil {
		return nil, invalid("", "request body is not valid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	po, ok := p.(map[string]any)
	if !ok {
		return nil, invalid("", "request body must be a JSON object (a merge patch)")
	}
	var t any
	if err := unmarshalNumbers(target, &t); err != nil {
		return nil, fmt.Errorf("merge patch: current object: %w", err)
	}
	return json.Marshal(mergeValue(t, po))
}

func mergeValue(target any, patch any) any {
	po, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	to, ok := target.(map[string]any)
	if !ok {
		to = map[string]any{}
	}
	for k, v := range po {
		if v == nil {
			delete(to, k)
			continue
		}
		to[k] = mergeValue(to[k], v)
	}
	return to
}

// unmarshalNumbers decodes keeping numbers exact (json.Number), so a
// merge does not round large integers through float64.
func unmarshalNumbers(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec.Decode(v)
}
