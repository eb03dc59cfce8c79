package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/config"
)

// newTestServer builds a server without a database: enough for routing,
// authentication and error shapes, which never reach the store.
func newTestServer(t *testing.T, tokens ...string) *Server {
	t.Helper()
	cfg := &config.Config{Server: config.Server{APITokens: tokens, PublicURL: "http://localhost:7376"}}
	s := New(Deps{Config: cfg, Log: zerolog.Nop()})
	t.Cleanup(s.Close)
	return s
}

func serve(s *Server, method, path, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

func errorOf(t *testing.T, rec *httptest.ResponseRecorder) errorDetail {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var b errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatalf("not a JSON error: %s", rec.Body)
	}
	return b.Error
}

func TestAuth(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, "tok-one", "tok-two")
	for _, tc := range []struct {
		name, path, token string
		status            int
		code              string
	}{
		{"no token", "/api/sinks", "", 401, "unauthorized"},
		{"wrong token", "/api/sinks", "tok-three", 401, "unauthorized"},
		{"prefix of a token", "/api/sinks", "tok-on", 401, "unauthorized"},
		{"unknown path without token stays 401", "/api/secret_admin", "", 401, "unauthorized"},
		{"unknown path with token", "/api/secret_admin", "tok-two", 404, "not_found"},
		{"unknown top-level path", "/nope", "", 404, "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := serve(s, "GET", tc.path, tc.token)
			if rec.Code != tc.status || errorOf(t, rec).Code != tc.code {
				t.Errorf("got %d %s", rec.Code, rec.Body)
			}
			if tc.status == 401 && rec.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	// A token in another scheme does not count.
	req := httptest.NewRequest("GET", "/api/sinks", nil)
	req.Header.Set("Authorization", "Basic tok-one")
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Errorf("Basic scheme: %d", rec.Code)
	}
}

func TestNoTokensDisablesAPI(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	rec := serve(s, "GET", "/api/sinks", "anything")
	if e := errorOf(t, rec); rec.Code != 401 || !strings.Contains(e.Message, "server.api_tokens is empty") {
		t.Errorf("got %d %s", rec.Code, rec.Body)
	}
	if rec := serve(s, "GET", "/healthz", ""); rec.Code != 200 {
		t.Errorf("healthz: %d", rec.Code)
	}
}

func TestMethodNotAllowedIsJSON(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, "tok")
	rec := serve(s, "PUT", "/api/sinks", "tok")
	if e := errorOf(t, rec); rec.Code != 405 || e.Code != "method_not_allowed" || !strings.Contains(rec.Header().Get("Allow"), "POST") {
		t.Errorf("got %d %s (Allow %q)", rec.Code, rec.Body, rec.Header().Get("Allow"))
	}
	rec = serve(s, "GET", "/api/webhook/x", "")
	if rec.Code != 405 {
		t.Errorf("GET on ingest: %d", rec.Code)
	}
}

func TestDecodeStrict(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, body string
		fields     []string
		msgs       []string
	}{
		{"ok", `{"name": "s", "retry": {"max_age": "1m"}, "filters": [{"column": "a", "op": "=", "value": 1}]}`, nil, nil},
		{"empty", ``, []string{""}, []string{"empty"}},
		{"syntax", `{"name": }`, []string{""}, []string{"not valid JSON"}},
		{"array", `[]`, []string{""}, []string{"must be an object, not a list"}},
		{"unknown", `{"nme": "s"}`, []string{"nme"}, []string{`did you mean "name"`}},
		{"nested unknown", `{"retry": {"max_ag": "1s"}}`, []string{"retry.max_ag"}, []string{"unknown field"}},
		{"in list", `{"filters": [{"column": "a", "op": "=", "valu": 1}]}`, []string{"filters[0].valu"}, []string{"unknown field"}},
		{"type", `{"batch_size": 1.5}`, []string{"batch_size"}, []string{"must be a whole number, not a fractional number"}},
		{"list type", `{"tables": "public.t"}`, []string{"tables"}, []string{"must be a list of strings, not a string"}},
		{"duration", `{"request_timeout": 30}`, []string{"request_timeout"}, []string{"duration"}},
		{"several", `{"batch_size": "x", "zzz": 1}`, []string{"batch_size", "zzz"}, []string{"whole number", "unknown field"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s config.Sink
			err := decodeStrict([]byte(tt.body), &s)
			if tt.fields == nil {
				if err != nil {
					t.Fatal(err)
				}
				if s.Name != "s" || s.Retry.MaxAge.D() != time.Minute || len(s.Filters) != 1 {
					t.Errorf("decoded %+v", s)
				}
				return
			}
			v, ok := err.(validationError)
			if !ok || len(v) != len(tt.fields) {
				t.Fatalf("got %v", err)
			}
			for i := range v {
				if v[i].Field != tt.fields[i] || !strings.Contains(v[i].Message, tt.msgs[i]) {
					t.Errorf("error %d: %+v, want field %q with %q", i, v[i], tt.fields[i], tt.msgs[i])
				}
			}
		})
	}
}

func TestDecodeErrorsNeverEchoValues(t *testing.T) {
	t.Parallel()
	const secret = "Sup3rS3cret"
	for _, body := range []string{
		`{"signing_secret": ["` + secret + `"]}`,
		`{"batch_size": "` + secret + `"}`,
		`{"filters": "` + secret + `"}`,
	} {
		var s config.Sink
		err := decodeStrict([]byte(body), &s)
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("%s: %v", body, err)
		}
	}
	var e config.HTTPEndpoint
	if err := decodeStrict([]byte(`{"encrypted_headers": {"A": 42, "B": "`+secret+`"}}`), &e); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("encrypted headers: %v", err)
	}
}

func TestMergePatch(t *testing.T) {
	t.Parallel()
	target := `{"name": "s", "retry": {"initial_backoff": "1s", "max_backoff": "3m0s"}, "headers": {"A": "1", "B": "2"}, "big": 12345678901234567890}`
	got, err := mergePatch(json.RawMessage(target), json.RawMessage(`{"retry": {"max_backoff": "1h"}, "headers": {"A": null, "C": "3"}, "tables": ["x"]}`))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(got, &m); err != nil {
		t.Fatal(err)
	}
	want := `{"big":12345678901234567890,"headers":{"B":"2","C":"3"},"name":"s","retry":{"initial_backoff":"1s","max_backoff":"1h"},"tables":["x"]}`
	if string(got) != want {
		t.Errorf("merged:\n got %s\nwant %s", got, want)
	}
	if _, err := mergePatch(json.RawMessage(target), json.RawMessage(`[1]`)); err == nil {
		t.Error("array patch accepted")
	}
}

func TestApplySinkDefaultsKeepsExplicitZero(t *testing.T) {
	t.Parallel()
	var s config.Sink
	body := []byte(`{"batch_size": 0, "retry": {"initial_backoff": "0s"}}`)
	if err := decodeStrict(body, &s); err != nil {
		t.Fatal(err)
	}
	applySinkDefaults(&s, body)
	if s.BatchSize != 0 || s.Retry.InitialBackoff != 0 {
		t.Errorf("explicit zeros replaced: %+v", s)
	}
	if s.Concurrency != config.DefaultConcurrencyFor(s.BatchSize) || s.MaxAckPending != config.DefaultMaxAckPending || s.Message != "change" {
		t.Errorf("defaults not applied: %+v", s)
	}
}

func TestIngestURL(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	s.d.Config.Server.PublicURL = "https://hooks.example.com/"
	if got := s.IngestURL("gh"); got != "https://hooks.example.com/api/webhook/gh" {
		t.Errorf("got %s", got)
	}
}

var _ http.Handler = (*Server)(nil)
