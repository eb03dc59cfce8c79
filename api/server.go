// Package api is walhook's HTTP server: health, readiness and metrics,
// webhook ingest, and the management API (endpoints, sinks, messages,
// webhook sources, subscriptions, a live tail). It depends on the rest of
// the service only through Deps, so the service can wire it without the
// API knowing about leader election or delivery internals.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/console"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/replication"
	"github.com/walhook/walhook/secrets"
	"github.com/walhook/walhook/sink"
)

// Deps is what the server needs from the running service. Functions
// rather than the service itself keep the API testable and free of
// import cycles (the service starts the API).
type Deps struct {
	Config *config.Config
	Store  *outbox.Store
	// Box seals encrypted endpoint headers; the API never opens them
	// except to keep a value a PATCH left masked.
	Box *secrets.Box
	Log zerolog.Logger
	// Router is the current routing table; ingest finds a source's sinks
	// in it.
	Router func() *sink.Router
	// Refresh re-reads sinks after a change so routing, the publication
	// and delivery follow without a restart.
	Refresh func(ctx context.Context) error
	// Reload makes delivery re-read endpoints (their URL and headers are
	// not part of the sinks Refresh compares).
	Reload func()
	// ResolveTables resolves sinks' tables in the source database as it is
	// now: the tables to wait for in the publication, the problems that
	// refuse a sink (a named table without a primary key), and the
	// warnings a sink shows (a table that does not exist yet).
	ResolveTables func(ctx context.Context, sinks []*sink.Sink) (*replication.Resolution, error)
	// WaitPublished returns once every table is in the publication (the
	// leader adds them after a Refresh), so a change the client commits
	// after the API answered is captured.
	WaitPublished func(ctx context.Context, tables []string) error
	// Leading reports whether this process should be streaming the slot.
	Leading func() bool
	// Stream is the replication stream's status (position, lag).
	Stream func() replication.Status
	// Logins are the web console's one-time sign-in codes (nil: none).
	Logins *console.Logins
	// Delivered records messages a pull consumer acked in the recent
	// delivery history (batched by delivery, off the ack's path). Nil:
	// written at once.
	Delivered func(b *outbox.Batch, status int, at time.Time)
}

// Server serves the HTTP API.
type Server struct {
	d      Deps
	log    zerolog.Logger
	mux    *routeMux
	tokens [][sha256.Size]byte
	hub    *hub
	waker  *waker // long-polling receives (pull sinks)
	// prefetch claims pull consumers' next batches ahead (pull_prefetch.go).
	prefetch *prefetcher
	// pullSinks caches the sinks pull consumers poll (pull.go).
	pullSinks sinkCache
	// handed keeps what receives handed out, for their acks (pull_handed.go).
	handed handedOut

	// stop ends long-lived responses (observe) on shutdown, which
	// http.Server.Shutdown would otherwise wait for forever.
	stop     chan struct{}
	stopOnce sync.Once
	bg       sync.WaitGroup

	gauges gaugeCache
}

// maxRequestBody bounds management API request bodies (ingest bodies are
// bounded per source by max_body_bytes).
const maxRequestBody = 1 << 20

// New builds the server. Missing optional functions get harmless
// defaults, so tests can wire only what they exercise.
func New(d Deps) *Server {
	if d.Router == nil {
		d.Router = func() *sink.Router { return nil }
	}
	if d.Refresh == nil {
		d.Refresh = func(context.Context) error { return nil }
	}
	if d.Reload == nil {
		d.Reload = func() {}
	}
	if d.ResolveTables == nil {
		d.ResolveTables = func(context.Context, []*sink.Sink) (*replication.Resolution, error) {
			return &replication.Resolution{}, nil
		}
	}
	if d.WaitPublished == nil {
		d.WaitPublished = func(context.Context, []string) error { return nil }
	}
	if d.Leading == nil {
		d.Leading = func() bool { return false }
	}
	if d.Stream == nil {
		d.Stream = func() replication.Status { return replication.Status{} }
	}
	s := &Server{d: d, log: d.Log.With().Str("component", "api").Logger(), mux: &routeMux{ServeMux: http.NewServeMux()}, stop: make(chan struct{})}
	for _, t := range d.Config.Server.APITokens {
		if t != "" {
			s.tokens = append(s.tokens, sha256.Sum256([]byte(t)))
		}
	}
	s.hub = newHub(d.Store, s.log)
	s.waker = newWaker(d.Store, s.log, s.stop, &s.bg)
	s.prefetch = newPrefetcher(d.Store, s.log, &s.bg)
	s.routes()
	return s
}

// routes lists every route. Management routes go through s.auth; the
// open ones (health, metrics, ingest) do not. Other packages' routes
// (backfills, replays) belong here too, with the same helpers.
func (s *Server) routes() {
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /metrics", s.metrics)
	s.mux.HandleFunc("POST /api/webhook/{name}", s.ingest)
	s.mountConsole()

	s.handle("GET /api/http_endpoints", s.listEndpoints)
	s.handle("POST /api/http_endpoints", s.createEndpoint)
	s.handle("GET /api/http_endpoints/{name}", s.getEndpoint)
	s.handle("PATCH /api/http_endpoints/{name}", s.patchEndpoint)
	s.handle("DELETE /api/http_endpoints/{name}", s.deleteEndpoint)

	s.handle("GET /api/sinks", s.listSinks)
	s.handle("POST /api/sinks", s.createSink)
	s.handle("GET /api/sinks/{name}", s.getSink)
	s.handle("PATCH /api/sinks/{name}", s.patchSink)
	s.handle("DELETE /api/sinks/{name}", s.deleteSink)
	s.handle("POST /api/sinks/{name}/pause", s.pauseSink)
	s.handle("POST /api/sinks/{name}/resume", s.resumeSink)
	s.handle("GET /api/sinks/{name}/messages", s.listMessages)
	s.handle("GET /api/sinks/{name}/messages/{id}", s.getMessage)
	s.handle("POST /api/sinks/{name}/messages/{id}/redeliver", s.redeliverMessage)
	s.handle("POST /api/sinks/{name}/redeliver", s.redeliverAll)

	s.handle("GET /api/webhook_sources", s.listSources)
	s.handle("POST /api/webhook_sources", s.createSource)
	s.handle("GET /api/webhook_sources/{name}", s.getSource)
	s.handle("DELETE /api/webhook_sources/{name}", s.deleteSource)

	s.handle("GET /api/subscriptions", s.listSubscriptions)
	s.handle("POST /api/subscriptions", s.createSubscription)
	s.handle("GET /api/subscriptions/{id}", s.getSubscription)
	s.handle("DELETE /api/subscriptions/{id}", s.deleteSubscription)

	s.handle("GET /api/observe", s.observe)
	s.handle("GET /api/status", s.status)
	s.backfillRoutes() // backfills.go
	s.pullRoutes()     // pull.go
}

// routeMux is the server's mux, remembering every pattern registered on
// it, so a test can hold the router against docs/api.yaml.
type routeMux struct {
	*http.ServeMux
	patterns []string
}

func (m *routeMux) Handle(pattern string, h http.Handler) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(h))
}

// handle registers a management route: bearer token required.
func (s *Server) handle(pattern string, h http.HandlerFunc) {
	s.mux.Handle(pattern, s.auth(h))
}

// auth admits requests that carry one of server.api_tokens. Every token is
// compared, in constant time over fixed-size digests, so neither the match
// nor a token's length shows in the timing.
func (s *Server) auth(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="walhook"`)
			msg := "missing or wrong bearer token (Authorization: Bearer <one of server.api_tokens>)"
			if len(s.tokens) == 0 {
				msg = "the management API is disabled: server.api_tokens is empty"
			}
			writeError(w, http.StatusUnauthorized, "unauthorized", msg)
			return
		}
		h(w, r)
	})
}

func (s *Server) authorized(r *http.Request) bool {
	given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || len(s.tokens) == 0 {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(given)))
	match := 0
	for i := range s.tokens {
		match |= subtle.ConstantTimeCompare(sum[:], s.tokens[i][:])
	}
	return match == 1
}

// ServeHTTP answers every request, errors included, in JSON: the mux's
// own 404 and 405 are plain text, so they are rewritten here. Panics in a
// handler become a 500 instead of a dropped connection.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error().Str("method", r.Method).Str("path", r.URL.Path).Interface("panic", p).Msg("handler panicked")
			if rec.status == 0 {
				writeError(rec, http.StatusInternalServerError, "internal", "internal error; see the walhook log")
			}
		}
		s.log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", rec.status).
			Dur("duration", time.Since(start)).Msg("http request")
	}()
	h, pattern := s.mux.Handler(r)
	if pattern == "" {
		// Management paths stay behind the token even when they do not
		// exist, so the API's surface is not probed anonymously.
		if isManagementPath(r.URL.Path) && !s.authorized(r) {
			s.auth(nil).ServeHTTP(rec, r)
			return
		}
		probe := &statusRecorder{ResponseWriter: discardWriter{h: http.Header{}}}
		h.ServeHTTP(probe, r)
		switch probe.status {
		case http.StatusMethodNotAllowed:
			rec.Header().Set("Allow", probe.Header().Get("Allow"))
			writeError(rec, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, probe.Header().Get("Allow")))
		case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
			h.ServeHTTP(rec, r)
		default:
			writeError(rec, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
		}
		return
	}
	// The mux itself serves, so that r.PathValue works in handlers.
	s.mux.ServeHTTP(rec, r)
}

func isManagementPath(p string) bool {
	return strings.HasPrefix(p, "/api/") && !strings.HasPrefix(p, "/api/webhook/")
}

// Listen binds server.listen. It is separate from Serve so `walhook run`
// fails at once, naming the setting, when the address is taken.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("server.listen: cannot listen on %s: %w", addr, err)
	}
	return ln, nil
}

// Serve answers requests on ln until ctx ends, then shuts down
// gracefully: open requests get a few seconds to finish, live tails end
// at once.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       120 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	srv.RegisterOnShutdown(s.Close)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info().Str("listen", ln.Addr().String()).Msg("HTTP server listening")
	select {
	case err := <-errc:
		s.Close()
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(shutCtx)
	s.Close()
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("http server shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Close ends live tails and background work. Serve calls it on shutdown;
// tests that use the server as a plain handler call it themselves.
func (s *Server) Close() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.hub.close()
	s.prefetch.close()
	s.bg.Wait()
}

// statusRecorder remembers the status a handler wrote, for the log and
// for the JSON 404/405 rewrite. It passes Flush through for SSE.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header         { return d.h }
func (d discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d discardWriter) WriteHeader(int)             {}
