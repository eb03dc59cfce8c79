package console

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, path string, header ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The page and every file it loads come from the binary, with headers
// that keep other origins' scripts out, and revalidation by ETag.
func TestServesEmbeddedFiles(t *testing.T) {
	t.Parallel()
	h := Handler(nil)
	page := get(t, h, "/")
	html := body(t, page)
	if page.StatusCode != 200 || !strings.HasPrefix(page.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", page.StatusCode, page.Header.Get("Content-Type"))
	}
	if csp := page.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("CSP: %q", csp)
	}
	if page.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("Referrer-Policy: %q", page.Header.Get("Referrer-Policy"))
	}
	for _, ref := range []string{"/console/app.js", "/console/app.css"} {
		if !strings.Contains(html, ref) {
			t.Errorf("index.html does not load %s", ref)
		}
		r := get(t, h, ref)
		if r.StatusCode != 200 || r.Header.Get("ETag") == "" {
			t.Errorf("GET %s: %d, ETag %q", ref, r.StatusCode, r.Header.Get("ETag"))
		}
		if again := get(t, h, ref, "If-None-Match", r.Header.Get("ETag")); again.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with its ETag: %d, want 304", ref, again.StatusCode)
		}
	}
	if strings.Contains(html, "http://") || strings.Contains(html, "https://") {
		t.Errorf("index.html loads something from another origin:\n%s", html)
	}
	for _, p := range []string{"/console/nope.js", "/console/../console.go", "/console/index.html", "/other"} {
		// The mux answers a path with ".." by redirecting to its clean
		// form, which is not served either.
		if r := get(t, h, p); r.StatusCode == 200 {
			t.Errorf("GET %s: %d: %s", p, r.StatusCode, body(t, r))
		}
	}
}

func redeem(t *testing.T, h http.Handler, code string) (int, string) {
	t.Helper()
	req := httptest.NewRequest("POST", LoginPath, strings.NewReader(`{"code":"`+code+`"}`))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out struct {
		Token string `json:"token"`
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("answer is not JSON: %s", rec.Body)
	}
	if rec.Code != 200 && out.Error.Message == "" {
		t.Errorf("refusal without a message: %s", rec.Body)
	}
	return rec.Code, out.Token
}

// A sign-in code stands for its token exactly once.
func TestLoginCodeWorksOnce(t *testing.T) {
	t.Parallel()
	logins := NewLogins()
	h := Handler(logins)
	code, err := logins.Issue("tok-1")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := logins.Issue("tok-2")
	if code == other || strings.Contains(code, "tok") || len(code) < 32 {
		t.Fatalf("codes %q, %q", code, other)
	}
	if status, token := redeem(t, h, code); status != 200 || token != "tok-1" {
		t.Fatalf("first use: %d %q", status, token)
	}
	if status, token := redeem(t, h, code); status != 401 || token != "" {
		t.Errorf("second use: %d %q", status, token)
	}
	for _, bad := range []string{"", "nope", strings.ToUpper(other)} {
		if status, _ := redeem(t, h, bad); status != 401 {
			t.Errorf("code %q: %d", bad, status)
		}
	}
	if status, token := redeem(t, h, other); status != 200 || token != "tok-2" {
		t.Errorf("other code: %d %q", status, token)
	}
	if status, _ := redeem(t, Handler(nil), code); status != 401 {
		t.Errorf("without logins: %d", status)
	}
	if got := LoginURL("http://127.0.0.1:7376/", code); got != "http://127.0.0.1:7376/#login="+code {
		t.Errorf("LoginURL: %s", got)
	}
}
