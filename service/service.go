// Package service is the composition root of `walhook run`: it migrates,
// applies the config file's objects, and runs replication (on the elected
// leader), delivery and the HTTP server in one process.
package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/console"
	"github.com/walhook/walhook/delivery"
	"github.com/walhook/walhook/leader"
	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/replication"
	"github.com/walhook/walhook/secrets"
	"github.com/walhook/walhook/sink"
)

// Service is one walhook process.
type Service struct {
	Cfg      *config.Config
	Log      zerolog.Logger
	Store    *outbox.Store
	Source   *pgxpool.Pool
	Box      *secrets.Box
	Stream   *replication.Stream
	Delivery *delivery.Manager
	Capture  *outbox.Capture
	// Backfills runs backfills and prunes retained changes on the leader.
	Backfills *backfill.Runner
	// Router is the current routing table; capture and webhook ingest
	// read it, Refresh replaces it.
	Router atomic.Pointer[sink.Router]
	// Worker is this process's identity in claims.
	Worker string
	// Logins are the web console's one-time sign-in codes.
	Logins *console.Logins

	leading   atomic.Bool
	tables    atomic.Pointer[[]replication.Table]
	refreshMu sync.Mutex
	refreshFp string
	changed   chan struct{}
}

// New migrates the state schema, connects, checks the source database and
// applies the config file's objects. Errors name what is wrong.
func New(ctx context.Context, cfg *config.Config, log zerolog.Logger) (*Service, error) {
	if _, err := migrations.Up(ctx, cfg.State.URL, cfg.State.Schema); err != nil {
		return nil, err
	}
	store, err := outbox.Open(ctx, cfg.State.URL, cfg.State.Schema, 32)
	if err != nil {
		return nil, err
	}
	source, err := pgxpool.New(ctx, cfg.Database.URL)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("database: connect: %w", err)
	}
	box, err := secrets.NewBox(cfg.EncryptionKey)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	s := &Service{
		Cfg: cfg, Log: log, Store: store, Source: source, Box: box,
		Worker:  fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(rnd[:])),
		changed: make(chan struct{}, 1),
		Logins:  console.NewLogins(),
	}
	if err := replication.CheckSource(ctx, source); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.applyConfig(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.Refresh(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.Stream = replication.NewStream(replication.Config{
		URL: cfg.Database.URL, Slot: cfg.Database.Slot, Publication: cfg.Database.Publication, Log: log,
	}, source)
	s.Capture = outbox.NewCapture(store, cfg.Database.Slot, &s.Router, log)
	s.Capture.OnCommit = s.countCaptured
	s.Capture.SetRetention(cfg.Retention.Tables)
	s.Backfills = backfill.NewRunner(backfill.Config{
		Store: store, Capture: s.Capture, SourceURL: cfg.Database.URL, Publication: cfg.Database.Publication,
		RetentionKeep: cfg.Retention.Keep.D(), Log: log,
	})
	s.Delivery = delivery.NewManager(delivery.Config{Store: store, Box: box, Log: log, Worker: s.Worker})
	return s, nil
}

// Close releases connections.
func (s *Service) Close() {
	s.Source.Close()
	s.Store.Close()
}

// applyConfig upserts the config file's endpoints, webhook sources and
// sinks (config as code).
func (s *Service) applyConfig(ctx context.Context) error {
	for _, e := range s.Cfg.HTTPEndpoints {
		sealed, err := s.Box.SealMap(e.EncryptedHeaders)
		if err != nil {
			return fmt.Errorf("http_endpoints[%s].encrypted_headers: %w", e.Name, err)
		}
		names := make([]string, 0, len(e.EncryptedHeaders))
		for k := range e.EncryptedHeaders {
			names = append(names, k)
		}
		slices.Sort(names)
		if err := s.Store.PutEndpoint(ctx, &outbox.Endpoint{Name: e.Name, URL: e.URL, Headers: e.Headers, EncryptedHeaders: sealed, EncryptedHeaderNames: names}); err != nil {
			return err
		}
	}
	for _, w := range s.Cfg.WebhookSources {
		if err := s.Store.PutWebhookSource(ctx, w); err != nil {
			return err
		}
	}
	for _, sk := range s.Cfg.Sinks {
		if _, err := s.Store.PutSink(ctx, sk); err != nil {
			return err
		}
	}
	return nil
}

// Refresh re-reads sinks, checks their tables and swaps in a new router.
// The API calls it after changes; it also runs every few seconds so every
// process sees changes made through another.
func (s *Service) Refresh(ctx context.Context) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	sinks, err := s.Store.SinkModels(ctx)
	if err != nil {
		return err
	}
	fp := fmt.Sprintf("%#v", sinkFingerprint(sinks))
	if fp == s.refreshFp && s.Router.Load() != nil {
		return nil
	}
	// Retained tables are published too, whether a sink names them or not.
	published := sinks
	if rt := s.Cfg.Retention.Tables; len(rt) > 0 {
		published = append(slices.Clip(sinks), &sink.Sink{Name: "retention", Config: config.Sink{Name: "retention", Tables: rt}})
	}
	tables, err := replication.ResolveTables(ctx, s.Source, published, s.Cfg.State.Schema)
	if err != nil {
		return err
	}
	s.Router.Store(sink.NewRouter(sinks))
	s.tables.Store(&tables)
	s.refreshFp = fp
	select {
	case s.changed <- struct{}{}:
	default:
	}
	if s.Delivery != nil {
		s.Delivery.Reload()
	}
	return nil
}

func sinkFingerprint(sinks []*sink.Sink) []any {
	out := make([]any, 0, len(sinks))
	for _, s := range sinks {
		out = append(out, *s)
	}
	return out
}

// Leading reports whether this process streams the slot.
func (s *Service) Leading() bool { return s.leading.Load() }

func (s *Service) countCaptured(counts map[int64]int) {
	r := s.Router.Load()
	if r == nil {
		return
	}
	for _, rt := range r.Routes() {
		if n := counts[rt.Sink.ID]; n > 0 {
			metrics.Captured.WithLabelValues(rt.Sink.Name).Add(float64(n))
		}
	}
}

// Run runs replication (when elected), delivery and the refresh loop
// until ctx ends. It returns nil on a clean shutdown.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Delivery.Run(ctx); err != nil {
			s.Log.Error().Err(err).Msg("delivery stopped")
		}
	})
	wg.Go(func() { s.refreshLoop(ctx) })
	el := &leader.Elector{
		Pool: s.Store.Pool,
		Name: s.Cfg.State.Schema + "." + s.Cfg.Database.Slot,
		OnChange: func(leading bool) {
			s.leading.Store(leading)
			metrics.Leader.Set(map[bool]float64{true: 1, false: 0}[leading])
			if leading {
				s.Log.Info().Msg("elected to stream the replication slot")
			}
		},
		OnError: func(err error) { s.Log.Error().Err(err).Msg("replication stopped; retrying") },
	}
	wg.Go(func() { _ = el.Run(ctx, s.lead) })
	wg.Wait()
	return nil
}

func (s *Service) refreshLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.Refresh(ctx); err != nil && ctx.Err() == nil {
			s.Log.Error().Err(err).Msg("reload sinks (keeping the previous ones)")
		}
	}
}

// lead streams the slot while this process is the leader: it keeps the
// publication in line with the sinks' tables and restarts the stream
// when they change.
func (s *Service) lead(ctx context.Context) error {
	if err := replication.SyncPublication(ctx, s.Source, s.Cfg.Database.Publication, *s.tables.Load()); err != nil {
		return err
	}
	if err := replication.EnsureSlot(ctx, s.Source, s.Cfg.Database.Slot); err != nil {
		return err
	}
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Stream.Run(streamCtx, s.Capture) }()
	// Backfills meet the stream, so they run for this term only.
	var bg sync.WaitGroup
	bg.Go(func() { s.Backfills.Run(streamCtx) })
	defer func() { cancel(); bg.Wait() }()
	for {
		select {
		case err := <-done:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case <-s.changed:
			// The walsender re-reads the publication as it decodes, so a
			// sync needs no restart of the stream.
			if err := replication.SyncPublication(ctx, s.Source, s.Cfg.Database.Publication, *s.tables.Load()); err != nil {
				cancel()
				<-done
				return err
			}
		}
	}
}

// NewLogger builds the process logger from the log settings.
func NewLogger(cfg config.Log, out *os.File) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.Level)
	if err != nil || cfg.Level == "" {
		level = zerolog.InfoLevel
	}
	var w io.Writer = out
	if cfg.Format == "console" {
		w = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}

// Main is `walhook run`: it binds server.listen first (so a taken port
// fails at once), builds the service, serves the HTTP API and runs the
// service until ctx ends, then releases everything. started, when set, is
// called once the service is built and listening (`walhook dev` prints
// its banner and console sign-in link there, with the bound address).
func Main(ctx context.Context, cfg *config.Config, log zerolog.Logger, started func(s *Service, addr net.Addr) error) error {
	ln, err := api.Listen(cfg.Server.Listen)
	if err != nil {
		return err
	}
	s, err := New(ctx, cfg, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer s.Close()
	if started != nil {
		if err := started(s, ln.Addr()); err != nil {
			ln.Close()
			return err
		}
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var serveErr error
	wg.Go(func() {
		if serveErr = s.API().Serve(runCtx, ln); serveErr != nil {
			log.Error().Err(serveErr).Msg("HTTP server stopped; stopping walhook")
			cancel()
		}
	})
	log.Info().Str("worker", s.Worker).Str("listen", ln.Addr().String()).Msg("walhook started")
	err = s.Run(runCtx)
	cancel()
	wg.Wait()
	log.Info().Msg("walhook stopped")
	return errors.Join(err, serveErr)
}
