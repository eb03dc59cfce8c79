package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// runCLI runs the root command in-process with stdin in and returns what
// it printed and its error.
func runCLI(t *testing.T, in string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	t.Setenv(envURL, "")
	t.Setenv(envToken, "")
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetIn(strings.NewReader(in))
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// fakeAPI answers POST /api/webhook_sources like the real API.
func fakeAPI(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(401)
			_, _ = io.WriteString(w, `{"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}}`)
			return
		}
		switch {
		case r.Method == "POST" && r.URL.Path == "/api/webhook_sources":
			var body map[string]any
			_ = json.NewDecoder(r.Body).Decode(&body)
			w.WriteHeader(201)
			_ = json.NewEncoder(w).Encode(map[string]any{"name": body["name"], "url": "http://h/api/webhook/" + body["name"].(string), "max_body_bytes": 1048576})
		case r.URL.Path == "/api/sinks/broken":
			w.WriteHeader(502)
			_, _ = io.WriteString(w, "<html>bad gateway</html>")
		default:
			w.WriteHeader(404)
			_, _ = io.WriteString(w, `{"error": {"code": "not_found", "message": "sink \"x\": not found"}}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestSourceAddAsksForNameOnTerminal(t *testing.T) {
	srv := fakeAPI(t)
	orig := stdinIsTerminal
	t.Cleanup(func() { stdinIsTerminal = orig })

	stdinIsTerminal = func() bool { return true }
	out, errOut, err := runCLI(t, "my_hook\n", "source", "webhook", "add", "--url", srv.URL, "--token", "tok")
	if err != nil || out != "http://h/api/webhook/my_hook\n" || !strings.Contains(errOut, "choose a name") {
		t.Errorf("on a terminal: out %q err %q %v", out, errOut, err)
	}
	out, _, err = runCLI(t, "my_hook\n", "source", "webhook", "add", "--url", srv.URL, "--token", "tok", "--json")
	if err != nil || !json.Valid([]byte(out)) || !strings.Contains(out, `"url":"http://h/api/webhook/my_hook"`) {
		t.Errorf("--json: %q %v", out, err)
	}
	if _, _, err := runCLI(t, "\n", "source", "webhook", "add", "--url", srv.URL, "--token", "tok"); err == nil || !strings.Contains(err.Error(), "no name given") {
		t.Errorf("empty answer: %v", err)
	}

	stdinIsTerminal = func() bool { return false }
	_, errOut, err = runCLI(t, "my_hook\n", "source", "webhook", "add", "--url", srv.URL, "--token", "tok")
	if err == nil || !strings.Contains(err.Error(), "NAME is required") || errOut != "" {
		t.Errorf("not a terminal: %v (stderr %q)", err, errOut)
	}
}

func TestClientErrorsAreOneLine(t *testing.T) {
	srv := fakeAPI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()

	t.Setenv(envURL, "")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no token", []string{"sink", "list", "--url", srv.URL}, "needs a token: set --token or $WALHOOK_TOKEN"},
		{"wrong token", []string{"sink", "list", "--url", srv.URL, "--token", "nope"}, "rejected the token"},
		{"unreachable", []string{"sink", "list", "--url", closed, "--token", "tok"}, "cannot reach walhook at " + closed + " (connection refused)"},
		{"server message", []string{"sink", "info", "x", "--url", srv.URL, "--token", "tok"}, `sink "x": not found`},
		{"not walhook", []string{"sink", "info", "broken", "--url", srv.URL, "--token", "tok"}, "HTTP 502 (is this a walhook server?)"},
		{"bad url", []string{"sink", "list", "--url", "localhost:7376"}, "--url: "},
		{"redeliver needs a choice", []string{"redeliver", "s", "--url", srv.URL}, "either --id"},
		{"redeliver not both", []string{"redeliver", "s", "--id", "1", "--failed", "--url", srv.URL}, "either --id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runCLI(t, "", tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("got %v, want one line with %q", err, tc.want)
			}
		})
	}
}

func TestEnvironmentDefaults(t *testing.T) {
	srv := fakeAPI(t)
	t.Setenv(envURL, srv.URL)
	t.Setenv(envToken, "tok")
	o := &clientOptions{}
	c, err := o.client()
	if err != nil || c.base != srv.URL || c.token != "tok" {
		t.Fatalf("from env: %+v %v", c, err)
	}
	t.Setenv(envURL, "")
	if c, _ := o.client(); c.base != defaultURL {
		t.Errorf("default URL: %s", c.base)
	}
	o.URL, o.Token = "http://other:1/", "flag"
	if c, _ := o.client(); c.base != "http://other:1" || c.token != "flag" {
		t.Errorf("flags win: %+v", c)
	}
}

func TestReadEvents(t *testing.T) {
	t.Parallel()
	stream := ": observing\n\nid: 1\nevent: message\ndata: {\"id\":1}\n\n: keepalive\n\ndata: a\ndata: b\n\nevent: end\ndata: {}\n\n"
	var got []string
	err := readEvents(strings.NewReader(stream), func(event string, data []byte) error {
		got = append(got, event+"="+string(data))
		return nil
	})
	want := []string{`message={"id":1}`, "message=a\nb", "end={}"}
	if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q %v", got, err)
	}
}

func TestSummary(t *testing.T) {
	t.Parallel()
	if got := summary(json.RawMessage(`{"record": {"id": 1,  "v": "x"}, "action": "update", "metadata": {}}`)); got != `update  {"id":1,"v":"x"}` {
		t.Errorf("change: %q", got)
	}
	if got := summary(json.RawMessage(`{"record": {"id": 1}, "metadata": {}}`)); got != `row  {"id":1}` {
		t.Errorf("row: %q", got)
	}
}

// receive --follow tries again only what a moment may cure: a refused
// connection or a 503 is retryable, a TLS failure (a certificate not
// trusted, https to a plain HTTP port) is not, and names its cause.
func TestRetryable(t *testing.T) {
	ctx := t.Context()
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	defer tlsSrv.Close()
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":{"code":"unavailable","message":"restarting"}}`, http.StatusServiceUnavailable)
	}))
	defer plain.Close()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	for _, tc := range []struct {
		name, base string
		retry      bool
		says       string
	}{
		{"untrusted certificate", tlsSrv.URL, false, "TLS"},
		{"https to plain http", "https" + strings.TrimPrefix(plain.URL, "http"), false, "TLS"},
		{"503", plain.URL, true, "restarting"},
		{"refused", gone.URL, true, "connection refused"},
	} {
		c := &apiClient{base: tc.base, http: &http.Client{Timeout: 5 * time.Second}}
		err := c.get(ctx, "/api/sinks", nil, nil)
		if err == nil || retryable(err) != tc.retry || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v (retryable %v); want retryable %v, naming %q", tc.name, err, err != nil && retryable(err), tc.retry, tc.says)
		}
	}
}
