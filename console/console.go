// Package console is walhook's web console: a small single-page app whose
// files are embedded in the binary, so `walhook run` and `walhook dev`
// serve it with no build step, no CDN and no network. The page talks to
// the management API with the same bearer token as any other client; this
// package only serves its files and exchanges one-time sign-in codes.
package console

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed static
var static embed.FS

// Prefix is where the console's assets are served; the page itself is at /.
const Prefix = "/console/"

// LoginPath exchanges a one-time sign-in code for the token it stands for.
const LoginPath = Prefix + "login"

// Logins holds one-time sign-in codes. `walhook dev` prints a link that
// carries a code rather than the token, so the token never sits in a URL
// (browser history, logs); the page trades the code for the token once,
// and the code is worthless afterwards.
type Logins struct {
	mu    sync.Mutex
	codes map[string]string // code -> token
}

// NewLogins returns an empty set of codes.
func NewLogins() *Logins { return &Logins{codes: map[string]string{}} }

// Issue makes a code that signs in once with token.
func (l *Logins) Issue(token string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("console sign-in code: %w", err)
	}
	code := hex.EncodeToString(b[:])
	l.mu.Lock()
	l.codes[code] = token
	l.mu.Unlock()
	return code, nil
}

// redeem returns the code's token and forgets the code.
func (l *Logins) redeem(code string) (string, bool) {
	if l == nil || code == "" {
		return "", false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	token, ok := l.codes[code]
	delete(l.codes, code)
	return token, ok
}

// LoginURL is the link that signs a browser in with code.
func LoginURL(base, code string) string {
	return strings.TrimRight(base, "/") + "/#login=" + code
}

// asset is one embedded file, read once with its validator.
type asset struct {
	body []byte
	etag string
	mime string
}

// Handler serves the page at / (exactly), its assets under Prefix, and
// code exchanges at LoginPath; the API server mounts it on those paths
// only, so every other unknown path keeps its JSON 404. Assets are
// revalidated by ETag rather than cached for long, so a new binary never
// shows an old page. logins may be nil: then no code is valid.
func Handler(logins *Logins) http.Handler {
	assets := map[string]asset{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		typ := mime.TypeByExtension(path.Ext(p))
		if typ == "" {
			typ = "application/octet-stream"
		}
		assets[strings.TrimPrefix(p, "static/")] = asset{body: b, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, mime: typ}
		return nil
	})
	if err != nil {
		// The files are compiled in: failing to read them is a build bug.
		panic(fmt.Sprintf("console: embedded files: %v", err))
	}
	mux := http.NewServeMux()
	serve := func(w http.ResponseWriter, r *http.Request, name string) {
		a, ok := assets[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		secure(h)
		h.Set("Content-Type", a.mime)
		h.Set("ETag", a.etag)
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { serve(w, r, "index.html") })
	mux.HandleFunc("GET "+Prefix+"{file...}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("file")
		if name == "index.html" || strings.Contains(name, "..") {
			http.NotFound(w, r)
			return
		}
		serve(w, r, name)
	})
	mux.HandleFunc("POST "+LoginPath, func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Code string `json:"code"`
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		token, ok := "", false
		if err == nil {
			token, ok = logins.redeem(req.Code)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":{"code":"unauthorized","message":"this sign-in link was used already or is not valid; sign in with an API token"}}`+"\n")
			return
		}
		b, _ := json.Marshal(map[string]string{"token": token})
		_, _ = w.Write(append(b, '\n'))
	})
	return mux
}

// secure sets the headers that keep the page to itself: only its own
// scripts and styles, no framing, and no Referer that could carry a URL.
func secure(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
}
