package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/service"
)

// Secrets the API tests configure; none may ever appear in a response or
// in the log.
const (
	apiToken      = "api-token-Zq8uV3rT"
	headerSecret  = "hdr-secret-Kx7P2mQw"
	signingSecret = "whsec_c2lnbmluZy1zZWNyZXQtVzk0cQ==" // "signing-secret-W94q"
	encryptionKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
)

var leakable = []string{apiToken, headerSecret, signingSecret, "c2lnbmluZy1zZWNyZXQ", "signing-secret-W94q"}

// syncBuffer collects log output and response bodies across goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// apiEnv is a running service with its HTTP API.
type apiEnv struct {
	*testBundle
	svc    *service.Service
	base   string
	log    *syncBuffer
	bodies *syncBuffer
}

// apiBundle is setup plus what the API tests share: a token, an
// encryption key, an encrypted header on the endpoint, a signed sink and
// webhook sources "hook" (subscribed by sink s) and "tiny" (16 bytes).
func apiBundle(t *testing.T, ddl string, tables ...string) *testBundle {
	t.Helper()
	b := setup(t, ddl, tables...)
	b.cfg.Server.APITokens = []string{apiToken}
	b.cfg.EncryptionKey = encryptionKey
	b.cfg.HTTPEndpoints[0].EncryptedHeaders = map[string]string{"Authorization": "Bearer " + headerSecret}
	b.cfg.WebhookSources = []config.WebhookSource{{Name: "hook", MaxBodyBytes: 1 << 20}, {Name: "tiny", MaxBodyBytes: 16}}
	b.cfg.Sinks[0].WebhookSources = []string{"hook"}
	b.cfg.Sinks[0].SigningSecret = signingSecret
	return b
}

// startAPI runs the service and its HTTP server in-process until the test
// ends, logging at debug level into a buffer that is checked for secrets
// at the end, as is every response body read through call.
func startAPI(t *testing.T, b *testBundle) *apiEnv {
	t.Helper()
	ln, err := api.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.cfg.Server.PublicURL = "http://" + ln.Addr().String()
	e := &apiEnv{testBundle: b, base: b.cfg.Server.PublicURL, log: &syncBuffer{}, bodies: &syncBuffer{}}
	log := zerolog.New(e.log).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	ctx, cancel := context.WithCancel(context.Background())
	svc, err := service.New(ctx, b.cfg, log)
	if err != nil {
		cancel()
		ln.Close()
		t.Fatalf("service.New: %v", err)
	}
	e.svc = svc
	srv := svc.API()
	var wg sync.WaitGroup
	wg.Go(func() { _ = svc.Run(ctx) })
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		svc.Close()
		for _, s := range leakable {
			if strings.Contains(e.log.String(), s) {
				t.Errorf("secret %q is in the log", s)
			}
			if strings.Contains(e.bodies.String(), s) {
				t.Errorf("secret %q is in a response", s)
			}
		}
		if t.Failed() {
			t.Logf("service log (tail):\n%s", tail(e.log.String(), 4000))
		}
	})
	waitFor(t, 20*time.Second, "replication streaming", func() bool { return svc.Stream.Status().Streaming })
	return e
}

// call sends a request; body is sent as is when a string, else as JSON.
// token "" sends no Authorization header.
func (e *apiEnv) call(t testing.TB, method, path string, body any, token string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	e.bodies.Write(out)
	if len(out) > 0 && !json.Valid(out) && !strings.HasPrefix(path, "/metrics") {
		t.Errorf("%s %s: answer is not JSON: %s", method, path, out)
	}
	return resp.StatusCode, out
}

// must calls with the token and fails the test unless the status is want.
func (e *apiEnv) must(t testing.TB, want int, method, path string, body any) []byte {
	t.Helper()
	status, out := e.call(t, method, path, body, apiToken)
	if status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, status, want, out)
	}
	return out
}

func decodeAs[T any](t testing.TB, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

type apiErr struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
		Errors  []struct {
			Field   string `json:"field"`
			Message string `json:"message"`
		} `json:"errors"`
	} `json:"error"`
}

type apiMessage struct {
	ID           int64           `json:"id"`
	Group        string          `json:"group"`
	State        string          `json:"state"`
	DeliverCount int             `json:"deliver_count"`
	LastError    *string         `json:"last_error"`
	LastStatus   *int            `json:"last_status"`
	NotBefore    *time.Time      `json:"not_before"`
	CommitLSN    int64           `json:"commit_lsn"`
	Message      json.RawMessage `json:"message"`
}

type apiSink struct {
	ID            string   `json:"id"`
	Name          string   `json:"name"`
	Status        string   `json:"status"`
	Tables        []string `json:"tables"`
	BatchSize     int      `json:"batch_size"`
	SigningSecret string   `json:"signing_secret"`
	Retry         struct {
		MaxAge string `json:"max_age"`
	} `json:"retry"`
	RawCounts map[string]int64 `json:"counts"`
}

func (e *apiEnv) messages(t testing.TB, sink, query string) []apiMessage {
	t.Helper()
	out := e.must(t, 200, "GET", "/api/sinks/"+sink+"/messages"+query, nil)
	return decodeAs[struct {
		Data []apiMessage `json:"data"`
	}](t, out).Data
}

func webhookKey(source, body string) string {
	sum := sha256.Sum256([]byte(body))
	return source + "." + strings.ToUpper(hex.EncodeToString(sum[:]))
}

// Every management route answers 401 without the right token and works
// with it; the open routes need none.
func TestAPIRoutesRequireToken(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`, "public.t")
	e := startAPI(t, b)

	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if status, out := e.call(t, "GET", p, nil, ""); status != 200 {
			t.Errorf("GET %s: %d %s", p, status, out)
		}
	}
	if status, out := e.call(t, "POST", "/api/webhook/hook", `{"open": true}`, ""); status != 200 {
		t.Errorf("ingest without token: %d %s", status, out)
	}

	subID := ""
	routes := []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/api/http_endpoints", "", 200},
		{"POST", "/api/http_endpoints", `{"name": "e2", "url": "http://127.0.0.1:9"}`, 201},
		{"GET", "/api/http_endpoints/e2", "", 200},
		{"PATCH", "/api/http_endpoints/e2", `{"headers": {"X-A": "1"}}`, 200},
		{"GET", "/api/webhook_sources", "", 200},
		{"POST", "/api/webhook_sources", `{"name": "w2"}`, 201},
		{"GET", "/api/webhook_sources/w2", "", 200},
		{"GET", "/api/sinks", "", 200},
		{"POST", "/api/sinks", `{"name": "s2", "endpoint": "e2", "webhook_sources": ["w2"]}`, 201},
		{"GET", "/api/sinks/s2", "", 200},
		{"PATCH", "/api/sinks/s2", `{"batch_size": 5}`, 200},
		{"POST", "/api/sinks/s2/pause", "", 200},
		{"POST", "/api/sinks/s2/resume", "", 200},
		{"GET", "/api/sinks/s2/messages", "", 200},
		{"GET", "/api/sinks/s2/messages/999999", "", 404},
		{"POST", "/api/sinks/s2/messages/999999/redeliver", "", 404},
		{"POST", "/api/sinks/s2/redeliver", "", 200},
		{"GET", "/api/subscriptions", "", 200},
		{"POST", "/api/subscriptions", `{"emitter": "table:public.t", "listener": "s2"}`, 201},
		{"GET", "/api/subscriptions/{sub}", "", 200},
		{"DELETE", "/api/subscriptions/{sub}", "", 204},
		{"DELETE", "/api/sinks/s2", "", 204},
		{"DELETE", "/api/webhook_sources/w2", "", 204},
		{"DELETE", "/api/http_endpoints/e2", "", 204},
		{"GET", "/api/no_such_thing", "", 404},
	}
	for _, rt := range routes {
		path := strings.ReplaceAll(rt.path, "{sub}", subID)
		var body any
		if rt.body != "" {
			body = rt.body
		}
		for _, tok := range []string{"", "wrong-token"} {
			status, out := e.call(t, rt.method, path, body, tok)
			er := decodeAs[apiErr](t, out)
			if status != 401 || er.Error.Code != "unauthorized" || er.Error.Message == "" {
				t.Errorf("%s %s with token %q: %d %s, want 401", rt.method, path, tok, status, out)
			}
		}
		out := e.must(t, rt.want, rt.method, path, body)
		if rt.method == "POST" && rt.path == "/api/subscriptions" {
			subID = fmt.Sprint(decodeAs[struct {
				ID int64 `json:"id"`
			}](t, out).ID)
		}
	}

	// The live tail, too.
	if status, _ := e.call(t, "GET", "/api/observe", nil, ""); status != 401 {
		t.Errorf("observe without token: %d", status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/api/observe", nil)
	req.Header.Set("Authorization", "Bearer "+apiToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("observe: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp.Body.Close()

	// A method the route does not have is a JSON 405.
	status, out := e.call(t, "PUT", "/api/sinks", "{}", apiToken)
	if er := decodeAs[apiErr](t, out); status != 405 || er.Error.Code != "method_not_allowed" {
		t.Errorf("PUT /api/sinks: %d %s", status, out)
	}
}

// Every validation error is a 400 that names the field.
func TestAPIValidationErrors(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nokey (v int)`, "public.t")
	e := startAPI(t, b)
	sub := decodeAs[struct {
		Data []struct {
			ID int64 `json:"id"`
		} `json:"data"`
	}](t, e.must(t, 200, "GET", "/api/subscriptions", nil)).Data[0].ID

	tests := []struct {
		name, method, path, body string
		field, msg               string
	}{
		{"empty body", "POST", "/api/sinks", ``, "", "empty"},
		{"not JSON", "POST", "/api/sinks", `{"name":`, "", "not valid JSON"},
		{"not an object", "POST", "/api/sinks", `[1]`, "", "must be an object"},
		{"unknown field", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "bach_size": 3}`, "bach_size", `did you mean "batch_size"`},
		{"type", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "batch_size": "3"}`, "batch_size", "must be a whole number, not a string"},
		{"duration", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "retry": {"max_age": "soon"}}`, "retry.max_age", "is not a duration"},
		{"filter op", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "filters": [{"column": "v", "op": "~"}]}`, "filters[0].op", "is not an operator"},
		{"name", "POST", "/api/sinks", `{"name": "a b", "endpoint": "recv", "tables": ["public.t"]}`, "name", "not a valid name"},
		{"endpoint", "POST", "/api/sinks", `{"name": "x", "endpoint": "recvv", "tables": ["public.t"]}`, "endpoint", `did you mean "recv"`},
		{"no emitters", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv"}`, "tables", "needs tables, webhook_sources or both"},
		{"unknown source", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "webhook_sources": ["hoook"]}`, "webhook_sources[0]", "not a defined webhook source"},
		{"explicit zero", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "concurrency": 0}`, "concurrency", "0 is out of range"},
		{"batch size", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "batch_size": 5000}`, "batch_size", "out of range"},
		{"table without key", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.nokey"]}`, "tables", "no primary key"},
		{"state schema table", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["walhook.outbox"]}`, "tables[0]", "state schema"},
		{"unqualified table", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["t"]}`, "tables[0]", "not schema-qualified"},
		{"signing secret", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "signing_secret": "nope"}`, "signing_secret", "whsec_"},
		{"masked secret on create", "POST", "/api/sinks", `{"name": "x", "endpoint": "recv", "tables": ["public.t"], "signing_secret": "********"}`, "signing_secret", "mask"},
		{"patch rename", "PATCH", "/api/sinks/s", `{"name": "other"}`, "name", "cannot be changed"},
		{"patch value", "PATCH", "/api/sinks/s", `{"retry": {"initial_backoff": "0s"}}`, "retry.initial_backoff", "greater than 0"},
		{"patch not object", "PATCH", "/api/sinks/s", `"x"`, "", "JSON object"},
		{"endpoint url", "POST", "/api/http_endpoints", `{"name": "e", "url": "ftp://x"}`, "url", "http://"},
		{"endpoint header", "POST", "/api/http_endpoints", `{"name": "e", "url": "http://x", "headers": {"Bad Header": "v"}}`, "headers[Bad Header]", "not a valid HTTP header name"},
		{"endpoint empty secret", "POST", "/api/http_endpoints", `{"name": "e", "url": "http://x", "encrypted_headers": {"A": ""}}`, "encrypted_headers[A]", "empty"},
		{"endpoint masked", "POST", "/api/http_endpoints", `{"name": "e", "url": "http://x", "encrypted_headers": {"A": "********"}}`, "encrypted_headers[A]", "mask"},
		{"endpoint masked unknown", "PATCH", "/api/http_endpoints/recv", `{"encrypted_headers": {"X-New": "********"}}`, "encrypted_headers[X-New]", "has none"},
		{"endpoint header type", "POST", "/api/http_endpoints", `{"name": "e", "url": "http://x", "headers": {"A": 1}}`, "headers", "must be an object of strings"},
		{"source name", "POST", "/api/webhook_sources", `{"name": "a/b"}`, "name", "not a valid name"},
		{"source size", "POST", "/api/webhook_sources", `{"name": "w", "max_body_bytes": -1}`, "max_body_bytes", "greater than 0"},
		{"source unknown field", "POST", "/api/webhook_sources", `{"name": "w", "max_body": 1}`, "max_body", "unknown field"},
		{"subscription emitter", "POST", "/api/subscriptions", `{"emitter": "queue:x", "listener": "s"}`, "emitter", `"webhook:NAME" or "table:SCHEMA.TABLE"`},
		{"subscription no emitter", "POST", "/api/subscriptions", `{"listener": "s"}`, "emitter", "required"},
		{"subscription no listener", "POST", "/api/subscriptions", `{"emitter": "webhook:hook"}`, "listener", "required"},
		{"subscription listener", "POST", "/api/subscriptions", `{"emitter": "webhook:hook", "listener": "nope"}`, "listener", "is not a sink"},
		{"subscription source", "POST", "/api/subscriptions", `{"emitter": "webhook:nope", "listener": "s"}`, "emitter", "not a defined webhook source"},
		{"subscription table", "POST", "/api/subscriptions", `{"emitter": "table:public.nokey", "listener": "s"}`, "emitter", "no primary key"},
		{"subscription table form", "POST", "/api/subscriptions", `{"emitter": "table:nope", "listener": "s"}`, "emitter", "not schema-qualified"},
		{"subscription id", "DELETE", "/api/subscriptions/x", ``, "id", "not a subscription id"},
		{"messages state", "GET", "/api/sinks/s/messages?state=lost", ``, "state", "is not one of"},
		{"messages limit", "GET", "/api/sinks/s/messages?limit=0", ``, "limit", "1..1000"},
		{"messages limit number", "GET", "/api/sinks/s/messages?limit=ten", ``, "limit", "1..1000"},
		{"messages after", "GET", "/api/sinks/s/messages?after=-1", ``, "after", "not a message id"},
		{"messages param", "GET", "/api/sinks/s/messages?stat=failed", ``, "stat", "unknown query parameter"},
		{"message id", "GET", "/api/sinks/s/messages/abc", ``, "id", "not a message id"},
		{"redeliver id", "POST", "/api/sinks/s/messages/0/redeliver", ``, "id", "not a message id"},
		{"observe param", "GET", "/api/observe?sinks=s", ``, "sinks", "unknown query parameter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body any
			if tt.body != "" {
				body = tt.body
			}
			status, out := e.call(t, tt.method, tt.path, body, apiToken)
			er := decodeAs[apiErr](t, out)
			if status != 400 || er.Error.Code != "invalid" {
				t.Fatalf("status %d: %s", status, out)
			}
			if er.Error.Field != tt.field || !strings.Contains(er.Error.Message, tt.msg) {
				t.Errorf("got field %q message %q; want field %q message containing %q", er.Error.Field, er.Error.Message, tt.field, tt.msg)
			}
		})
	}
	// Nothing was created or changed by the rejected requests.
	sinks := decodeAs[struct {
		Data []apiSink `json:"data"`
	}](t, e.must(t, 200, "GET", "/api/sinks", nil))
	if len(sinks.Data) != 1 || sinks.Data[0].Name != "s" {
		t.Errorf("sinks after rejected requests: %+v", sinks.Data)
	}
	// The last subscription of a sink cannot go, nor can objects in use.
	e.must(t, 204, "DELETE", "/api/subscriptions/"+fmt.Sprint(sub), nil) // table:public.t; webhook:hook remains
	for _, c := range []struct{ method, path, code string }{
		{"DELETE", "/api/subscriptions/" + fmt.Sprint(sub+1), "last_subscription"},
		{"DELETE", "/api/http_endpoints/recv", "in_use"},
		{"DELETE", "/api/webhook_sources/hook", "in_use"},
		{"POST", "/api/webhook_sources", "exists"},
		{"POST", "/api/sinks", "exists"},
	} {
		var body any
		switch c.path {
		case "/api/webhook_sources":
			body = `{"name": "hook"}`
		case "/api/sinks":
			body = `{"name": "s", "endpoint": "recv", "webhook_sources": ["hook"]}`
		}
		status, out := e.call(t, c.method, c.path, body, apiToken)
		if er := decodeAs[apiErr](t, out); status != 409 || er.Error.Code != c.code {
			t.Errorf("%s %s: %d %s, want 409 %s", c.method, c.path, status, out, c.code)
		}
	}
	for _, p := range []string{"/api/sinks/nope", "/api/http_endpoints/nope", "/api/webhook_sources/nope", "/api/subscriptions/999999", "/api/sinks/nope/messages"} {
		status, out := e.call(t, "GET", p, nil, apiToken)
		if er := decodeAs[apiErr](t, out); status != 404 || er.Error.Code != "not_found" {
			t.Errorf("GET %s: %d %s", p, status, out)
		}
	}
}

// Objects round-trip through the API; secrets come back masked, a masked
// value in a PATCH keeps the stored one, and changes take effect without
// a restart.
func TestAPIObjects(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE t2 (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)

	ep := decodeAs[map[string]any](t, e.must(t, 200, "GET", "/api/http_endpoints/recv", nil))
	if got := ep["encrypted_headers"].(map[string]any)["Authorization"]; got != "********" {
		t.Errorf("encrypted header shown as %v", got)
	}
	// Change a plain header, keep the encrypted one by sending the mask.
	ep2 := decodeAs[map[string]any](t, e.must(t, 200, "PATCH", "/api/http_endpoints/recv",
		`{"headers": {"X-Env": "test"}, "encrypted_headers": {"Authorization": "********"}}`))
	if ep2["headers"].(map[string]any)["X-Env"] != "test" {
		t.Errorf("patched endpoint: %v", ep2)
	}
	s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil))
	if s.SigningSecret != "********" || s.Status != "active" || s.ID == "" {
		t.Errorf("sink: %+v", s)
	}
	for _, k := range []string{"pending", "in_flight", "backing_off", "failed", "delivered"} {
		if _, ok := s.RawCounts[k]; !ok {
			t.Errorf("counts lack %s: %v", k, s.RawCounts)
		}
	}
	// A PATCH of one retry setting keeps the others and the secret.
	s = decodeAs[apiSink](t, e.must(t, 200, "PATCH", "/api/sinks/s", `{"retry": {"max_age": "1h"}, "signing_secret": "********"}`))
	if s.Retry.MaxAge != "1h0m0s" || s.SigningSecret != "********" {
		t.Errorf("patched sink: %+v", s)
	}
	// Delivery still carries the decrypted header and a valid signature
	// made with the kept secret.
	b.exec(t, `INSERT INTO t VALUES (1, 'a')`)
	reqs := waitRequests(t, b.recv, 1)
	if got := reqs[0].Header.Get("Authorization"); got != "Bearer "+headerSecret {
		t.Errorf("Authorization header after PATCH: %q", got)
	}
	if reqs[0].Header.Get("X-Env") != "test" || reqs[0].Header.Get("webhook-signature") == "" {
		t.Errorf("headers after PATCH: %v", reqs[0].Header)
	}

	// A sink created through the API gets its table into the publication
	// and receives at once.
	created := decodeAs[apiSink](t, e.must(t, 201, "POST", "/api/sinks", `{"name": "s2", "endpoint": "recv", "path": "/two", "tables": ["public.t2"]}`))
	if created.Name != "s2" || created.BatchSize != 1 || len(created.Tables) != 1 {
		t.Errorf("created: %+v", created)
	}
	b.exec(t, `INSERT INTO t2 VALUES (7)`)
	waitFor(t, 20*time.Second, "delivery to the new sink", func() bool {
		for _, r := range b.recv.ackedRequests() {
			if r.Path == "/two" {
				return true
			}
		}
		return false
	})
	// Paused: captured but not delivered; resumed: delivered.
	e.must(t, 200, "POST", "/api/sinks/s2/pause", nil)
	if s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s2", nil)); s.Status != "paused" {
		t.Errorf("status %q", s.Status)
	}
	b.exec(t, `INSERT INTO t2 VALUES (8)`)
	waitFor(t, 20*time.Second, "the paused sink's message to be pending", func() bool {
		return len(e.messages(t, "s2", "?state=pending")) == 1
	})
	e.must(t, 200, "POST", "/api/sinks/s2/resume", nil)
	waitFor(t, 20*time.Second, "delivery after resume", func() bool { return len(e.messages(t, "s2", "")) == 0 })
	waitFor(t, 10*time.Second, "a delivered count of 2", func() bool {
		return decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s2", nil)).RawCounts["delivered"] == 2
	})
	// Deleting a sink deletes what it had queued.
	e.must(t, 200, "POST", "/api/sinks/s2/pause", nil)
	b.exec(t, `INSERT INTO t2 VALUES (9)`)
	waitFor(t, 20*time.Second, "a queued message", func() bool { return len(e.messages(t, "s2", "")) == 1 })
	e.must(t, 204, "DELETE", "/api/sinks/s2", nil)
	var left int
	if err := b.db.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM walhook.outbox WHERE sink_id NOT IN (SELECT id FROM walhook.sinks))
		+ (SELECT count(*) FROM walhook.claims WHERE sink_id NOT IN (SELECT id FROM walhook.sinks))
		+ (SELECT count(*) FROM walhook.delivered WHERE sink_id NOT IN (SELECT id FROM walhook.sinks))`).Scan(&left); err != nil || left != 0 {
		t.Errorf("rows of the deleted sink left: %d (%v)", left, err)
	}
	e.must(t, 404, "GET", "/api/sinks/s2", nil)

	// Webhook sources show their ingest URL.
	src := decodeAs[map[string]any](t, e.must(t, 201, "POST", "/api/webhook_sources", `{"name": "gh"}`))
	if src["url"] != e.base+"/api/webhook/gh" || src["max_body_bytes"] != float64(1<<20) {
		t.Errorf("source: %v", src)
	}
}

func waitRequests(t *testing.T, r *receiver, n int) []request {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%d requests", n), func() bool { return len(r.ackedRequests()) >= n })
	return r.ackedRequests()
}

// Ingest: the key, dedupe while pending, delivery again after delivery,
// and the 400/404/413 answers.
func TestWebhookIngest(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)

	e.must(t, 200, "POST", "/api/sinks/s/pause", nil)
	body := "{\"order\": 1,\n \"items\": [\"a\"]}"
	key := webhookKey("hook", body)
	for range 2 {
		out := e.must(t, 200, "POST", "/api/webhook/hook", body)
		if got := decodeAs[map[string]string](t, out)["key"]; got != key {
			t.Fatalf("key %q, want %q", got, key)
		}
	}
	pending := e.messages(t, "s", "?state=pending")
	if len(pending) != 1 || pending[0].Group != key || pending[0].CommitLSN != 0 {
		t.Fatalf("pending after a duplicate: %+v", pending)
	}
	e.must(t, 200, "POST", "/api/webhook/hook", `{"order": 2}`)
	if n := len(e.messages(t, "s", "?state=pending")); n != 2 {
		t.Fatalf("pending: %d, want 2", n)
	}
	e.must(t, 200, "POST", "/api/sinks/s/resume", nil)
	msgs := b.recv.waitCount(t, 2, 20*time.Second)
	var m struct {
		Record   json.RawMessage `json:"record"`
		Action   string          `json:"action"`
		Metadata struct {
			Webhook        string `json:"webhook"`
			Key            string `json:"key"`
			ReceivedAt     string `json:"received_at"`
			IdempotencyKey string `json:"idempotency_key"`
			Consumer       struct {
				Name string `json:"name"`
			} `json:"consumer"`
		} `json:"metadata"`
	}
	// Two webhooks are two groups, delivered in parallel: find this body's.
	raw := msgs[0].Raw
	for _, msg := range msgs {
		var r struct {
			Record json.RawMessage `json:"record"`
		}
		if json.Unmarshal(msg.Raw, &r) == nil && string(r.Record) == body {
			raw = msg.Raw
		}
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if string(m.Record) != body || m.Action != "insert" || m.Metadata.Webhook != "hook" || m.Metadata.Key != key ||
		m.Metadata.IdempotencyKey != key || m.Metadata.Consumer.Name != "s" || m.Metadata.ReceivedAt == "" {
		t.Errorf("delivered webhook message: %s", raw)
	}
	// Delivered (acknowledged, not merely received), the same body is a
	// new message; while in flight it still counts as waiting.
	waitFor(t, 20*time.Second, "the acknowledgements", func() bool { return len(e.messages(t, "s", "")) == 0 })
	e.must(t, 200, "POST", "/api/webhook/hook", body)
	b.recv.waitCount(t, 3, 20*time.Second)

	bad := []struct {
		path, body, code string
		status           int
	}{
		{"/api/webhook/hook", "not json", "invalid_json", 400},
		{"/api/webhook/hook", "", "invalid_json", 400},
		{"/api/webhook/hook", "{\"a\": \"\xff\"}", "invalid_json", 400},
		{"/api/webhook/nope", "{}", "not_found", 404},
		{"/api/webhook/tiny", `{"a": "0123456789"}`, "payload_too_large", 413},
	}
	for _, c := range bad {
		status, out := e.call(t, "POST", c.path, c.body, "")
		if er := decodeAs[apiErr](t, out); status != c.status || er.Error.Code != c.code {
			t.Errorf("POST %s %q: %d %s, want %d %s", c.path, c.body, status, out, c.status, c.code)
		}
	}
	if status, _ := e.call(t, "POST", "/api/webhook/tiny", `{"a": 1}`, ""); status != 200 {
		t.Errorf("small body to tiny: %d", status)
	}
	// A body streamed without a length is bounded too.
	req, _ := http.NewRequest("POST", e.base+"/api/webhook/tiny", io.MultiReader(strings.NewReader(`{"a": "`), strings.NewReader(strings.Repeat("x", 100)+`"}`)))
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("chunked oversize body: %d", resp.StatusCode)
	}
	metrics := string(e.must(t, 200, "GET", "/metrics", nil))
	for _, w := range []string{`walhook_webhooks_received_total{source="hook",status="200"}`, `walhook_webhooks_received_total{source="hook",status="400"}`,
		`walhook_webhooks_received_total{source="",status="404"}`, `walhook_webhooks_received_total{source="tiny",status="413"}`} {
		if !strings.Contains(metrics, w) {
			t.Errorf("metrics lack %s", w)
		}
	}
}

// Adding and removing subscriptions changes what a sink receives, at once.
func TestSubscriptionsChangeDelivery(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE t2 (id int PRIMARY KEY)`, "public.t")
	b.cfg.Sinks[0].WebhookSources = nil
	e := startAPI(t, b)

	// Not subscribed yet: the webhook goes nowhere.
	e.must(t, 200, "POST", "/api/webhook/hook", `{"n": 0}`)
	web := decodeAs[map[string]any](t, e.must(t, 201, "POST", "/api/subscriptions", `{"emitter": "webhook:hook", "listener": "s"}`))
	e.must(t, 200, "POST", "/api/webhook/hook", `{"n": 1}`)
	msgs := b.recv.waitCount(t, 1, 20*time.Second)
	if msgs[0].Record["n"] != float64(1) {
		t.Fatalf("got %v", msgs[0].Record)
	}
	tab := decodeAs[map[string]any](t, e.must(t, 201, "POST", "/api/subscriptions", `{"emitter": "table:public.t2", "listener": "s"}`))
	if tab["listener"] != "s" || tab["emitter"] != "table:public.t2" {
		t.Errorf("subscription: %v", tab)
	}
	b.exec(t, `INSERT INTO t2 VALUES (1)`)
	msgs = b.recv.waitCount(t, 2, 20*time.Second)
	if msgs[1].Metadata.TableName != "t2" {
		t.Fatalf("got %+v", msgs[1])
	}
	list := decodeAs[struct {
		Data []map[string]any `json:"data"`
	}](t, e.must(t, 200, "GET", "/api/subscriptions?listener=s", nil)).Data
	if len(list) != 3 {
		t.Errorf("subscriptions of s: %v", list)
	}
	if s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)); len(s.Tables) != 2 {
		t.Errorf("sink tables after subscribing: %v", s.Tables)
	}

	e.must(t, 204, "DELETE", fmt.Sprintf("/api/subscriptions/%v", tab["id"]), nil)
	e.must(t, 204, "DELETE", fmt.Sprintf("/api/subscriptions/%v", web["id"]), nil)
	b.exec(t, `INSERT INTO t2 VALUES (2)`)
	e.must(t, 200, "POST", "/api/webhook/hook", `{"n": 2}`)
	b.exec(t, `INSERT INTO t VALUES (100)`) // a marker committed after both
	// Groups are delivered in parallel: wait for the marker itself.
	waitFor(t, 20*time.Second, "the marker", func() bool {
		for _, m := range b.recv.acked() {
			if m.Metadata.TableName == "t" && m.Record["id"] == float64(100) {
				return true
			}
		}
		return false
	})
	b.waitDrained(t, 20*time.Second) // the marker's ack committed, and anything routed before it delivered
	// The marker's change was captured after the t2 insert; had that been
	// routed, it would be queued or delivered by now.
	if left := e.messages(t, "s", ""); len(left) != 0 {
		t.Errorf("queued after unsubscribing: %+v", left)
	}
	for _, m := range b.recv.acked() {
		if m.Metadata.TableName == "t2" && m.Record["id"] == float64(2) || m.Record["n"] == float64(2) {
			t.Errorf("delivered after unsubscribing: %+v", m.Record)
		}
	}
	if n := b.recv.count(); n != 3 {
		t.Errorf("deliveries: %d, want 3 (the marker the third)", n)
	}
}

// The messages API shows each state with its delivery details, and
// redeliver makes failed and backing-off messages go now.
func TestMessagesStatesAndRedeliver(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(400 * time.Millisecond)
	e := startAPI(t, b)
	var healthy atomic.Bool
	block := make(chan struct{})
	var blocking atomic.Bool
	b.recv.setRespond(func(r *request) int {
		if blocking.Load() {
			<-block
		}
		if healthy.Load() {
			return 200
		}
		return 500
	})

	b.exec(t, `INSERT INTO t VALUES (1)`)
	var m apiMessage
	waitFor(t, 20*time.Second, "a backing-off message", func() bool {
		ms := e.messages(t, "s", "?state=backing_off")
		if len(ms) == 1 {
			m = ms[0]
		}
		return len(ms) == 1
	})
	if m.DeliverCount < 1 || m.LastStatus == nil || *m.LastStatus != 500 || m.LastError == nil || !strings.Contains(*m.LastError, "HTTP 500") ||
		m.NotBefore == nil || m.CommitLSN == 0 || !strings.HasPrefix(m.Group, "public.t:") || !json.Valid(m.Message) {
		t.Errorf("backing-off message: %+v", m)
	}
	waitFor(t, 20*time.Second, "the message to fail", func() bool { return len(e.messages(t, "s", "?state=failed")) == 1 })
	if got := decodeAs[apiMessage](t, e.must(t, 200, "GET", fmt.Sprintf("/api/sinks/s/messages/%d", m.ID), nil)); got.State != "failed" {
		t.Errorf("GET message: %+v", got)
	}
	if s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)); s.RawCounts["failed"] != 1 || s.RawCounts["pending"] != 0 {
		t.Errorf("counts: %v", s.RawCounts)
	}
	// The per-sink gauges are refreshed every few seconds.
	waitFor(t, 20*time.Second, "the failed backlog in the metrics", func() bool {
		return strings.Contains(string(e.must(t, 200, "GET", "/metrics", nil)), `walhook_backlog_messages{sink="s",state="failed"} 1`)
	})

	// Redeliver one.
	healthy.Store(true)
	e.must(t, 200, "POST", fmt.Sprintf("/api/sinks/s/messages/%d/redeliver", m.ID), nil)
	b.recv.waitCount(t, 1, 20*time.Second)
	// The history is written a moment after the ack: until then the
	// message is in neither place.
	waitFor(t, 10*time.Second, "the message in the history", func() bool {
		status, out := e.call(t, "GET", fmt.Sprintf("/api/sinks/s/messages/%d", m.ID), nil, apiToken)
		return status == 200 && decodeAs[apiMessage](t, out).State == "delivered"
	})
	if h := e.messages(t, "s", "?state=delivered"); len(h) != 1 || h[0].ID != m.ID || h[0].DeliverCount < 2 {
		t.Errorf("history: %+v", h)
	}
	status, out := e.call(t, "POST", fmt.Sprintf("/api/sinks/s/messages/%d/redeliver", m.ID), nil, apiToken)
	if er := decodeAs[apiErr](t, out); status != 409 || er.Error.Code != "not_redeliverable" {
		t.Errorf("redeliver a delivered message: %d %s", status, out)
	}

	// Redeliver all failed.
	healthy.Store(false)
	b.exec(t, `INSERT INTO t VALUES (2), (3)`)
	waitFor(t, 20*time.Second, "two failed messages", func() bool { return len(e.messages(t, "s", "?state=failed")) == 2 })
	healthy.Store(true)
	res := decodeAs[map[string]int](t, e.must(t, 200, "POST", "/api/sinks/s/redeliver", nil))
	if res["redelivered"] != 2 {
		t.Errorf("redeliver all: %v", res)
	}
	b.recv.waitCount(t, 3, 20*time.Second)

	// Redeliver a backing-off message: it goes now, not in an hour.
	e.must(t, 200, "PATCH", "/api/sinks/s", `{"retry": {"initial_backoff": "1h", "max_backoff": "1h", "max_age": "0s"}}`)
	healthy.Store(false)
	b.exec(t, `INSERT INTO t VALUES (4)`)
	waitFor(t, 20*time.Second, "a long backoff", func() bool {
		ms := e.messages(t, "s", "?state=backing_off")
		if len(ms) == 1 && ms[0].NotBefore != nil && time.Until(*ms[0].NotBefore) > 30*time.Minute {
			m = ms[0]
			return true
		}
		return false
	})
	healthy.Store(true)
	e.must(t, 200, "POST", fmt.Sprintf("/api/sinks/s/messages/%d/redeliver", m.ID), nil)
	b.recv.waitCount(t, 4, 20*time.Second)

	// In flight while the receiver holds the request.
	blocking.Store(true)
	b.exec(t, `INSERT INTO t VALUES (5)`)
	// (The previous message may still be in flight until its ack commits.)
	waitFor(t, 20*time.Second, "an in-flight message", func() bool {
		ms := e.messages(t, "s", "?state=in_flight")
		return len(ms) == 1 && ms[0].Group == "public.t:5"
	})
	if s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)); s.RawCounts["in_flight"] != 1 {
		t.Errorf("counts while in flight: %v", s.RawCounts)
	}
	blocking.Store(false)
	close(block)
	b.recv.waitCount(t, 5, 20*time.Second)
}

// The live tail sees a captured change and an ingested webhook.
func TestObserveSSE(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`, "public.t")
	e := startAPI(t, b)
	e.must(t, 404, "GET", "/api/observe?sink=nope", nil)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sc := e.observe(ctx, t, "s")
	b.exec(t, `INSERT INTO t VALUES (42, 'x')`)
	e.must(t, 200, "POST", "/api/webhook/hook", `{"hello": "sse"}`)
	var events []map[string]any
	for len(events) < 2 && sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			events = append(events, decodeAs[map[string]any](t, []byte(d)))
		}
	}
	if len(events) < 2 {
		t.Fatalf("events: %v (%v)", events, sc.Err())
	}
	change, webhook := events[0], events[1]
	if change["group"] != "public.t:42" { // ids are taken before commit: either may come first
		change, webhook = webhook, change
	}
	if change["sink"] != "s" || change["group"] != "public.t:42" || change["message"].(map[string]any)["record"].(map[string]any)["v"] != "x" {
		t.Errorf("change event: %v", change)
	}
	if webhook["group"] != webhookKey("hook", `{"hello": "sse"}`) {
		t.Errorf("webhook event: %v", webhook)
	}
}

// Health, readiness and metrics.
func TestHealthReadyMetrics(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)
	if got := decodeAs[map[string]string](t, e.must(t, 200, "GET", "/healthz", nil)); got["status"] != "ok" {
		t.Errorf("healthz: %v", got)
	}
	waitFor(t, 10*time.Second, "leadership", e.svc.Leading)
	if got := decodeAs[map[string]string](t, e.must(t, 200, "GET", "/readyz", nil)); got["replication"] != "streaming" {
		t.Errorf("readyz: %v", got)
	}
	b.exec(t, `INSERT INTO t VALUES (1)`)
	b.recv.waitCount(t, 1, 20*time.Second)
	m := string(e.must(t, 200, "GET", "/metrics", nil))
	for _, w := range []string{`walhook_backlog_messages{sink="s",state="pending"} 0`, "walhook_replication_confirmed_lsn ", "walhook_replication_lag_bytes ", `walhook_messages_delivered_total{sink="s"}`} {
		if !strings.Contains(m, w) {
			t.Errorf("metrics lack %q", w)
		}
	}
	if strings.Contains(m, "walhook_replication_confirmed_lsn 0\n") {
		t.Errorf("confirmed LSN not refreshed")
	}
}
