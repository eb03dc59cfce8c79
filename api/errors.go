package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
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
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	// A length, not chunks: a client that stops reading at the end of the
	// JSON value (a json.Decoder) still leaves the connection reusable.
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
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
