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
	"strings"
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
	"github.com/walhook/walhook/egress"
	"github.com/walhook/walhook/leader"
	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/pgdial"
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

	leading      atomic.Bool
	sinks        atomic.Pointer[[]*sink.Sink]
	lastWarnings atomic.Pointer[string]
	lastSyncErr  atomic.Pointer[string]
	refreshMu    sync.Mutex
	refreshFp    string
	changed      chan struct{}
}

// New migrates the state schema, connects, checks the source database and
// applies the config file's objects. Errors name what is wrong.
func New(ctx context.Context, cfg *config.Config, log zerolog.Logger) (*Service, error) {
	policy, err := egress.New(cfg.Egress.Allow, cfg.Egress.Deny)
	if err != nil {
		return nil, err
	}
	if _, err := migrations.Up(ctx, cfg.State.URL, cfg.State.Schema); err != nil {
		return nil, err
	}
	store, err := outbox.Open(ctx, cfg.State.URL, cfg.State.Schema, 32)
	if err != nil {
		return nil, err
	}
	source, err := openSource(ctx, cfg.Database.URL)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("database: connect: %w", err)
	}
	box, err := secrets.NewBox(cfg.EncryptionKey)
	if err != nil {
		return nil, err
	}
	store.Box = box
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
	if err := s.checkTables(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.Stream = replication.NewStream(replication.Config{
		URL: cfg.Database.URL, Slot: cfg.Database.Slot, Publication: cfg.Database.Publication, Log: log,
	}, source)
	s.Capture = outbox.NewCapture(store, cfg.Database.Slot, &s.Router, log)
	s.Capture.OnCommit = s.captured
	s.Capture.SetRetention(cfg.Retention.Tables)
	s.Backfills = backfill.NewRunner(backfill.Config{
		Store: store, Capture: s.Capture, SourceURL: cfg.Database.URL, Publication: cfg.Database.Publication,
		Slot: cfg.Database.Slot, RetentionKeep: cfg.Retention.Keep.D(), Log: log,
	})
	s.Delivery = delivery.NewManager(delivery.Config{Store: store, Box: box, Log: log, Worker: s.Worker, Egress: policy})
	return s, nil
}

// openSource connects to the source database with walhook's TCP settings.
func openSource(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	pgdial.Configure(&pcfg.ConnConfig.Config)
	return pgxpool.NewWithConfig(ctx, pcfg)
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
		row, err := outbox.SealEndpoint(s.Box, e)
		if err != nil {
			return fmt.Errorf("http_endpoints[%s]: %w", e.Name, err)
		}
		if err := s.Store.PutEndpoint(ctx, row); err != nil {
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

// Refresh re-reads sinks and swaps in a new router when they changed. The
// API calls it after changes; it also runs every few seconds so every
// process sees changes made through another. The leader follows with the
// publication (syncTables).
func (s *Service) Refresh(ctx context.Context) error {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	sinks, err := s.Store.ListSinkModels(ctx)
	if err != nil {
		return err
	}
	fp := fmt.Sprintf("%#v", sinkFingerprint(sinks))
	if fp == s.refreshFp && s.Router.Load() != nil {
		return nil
	}
	s.Router.Store(sink.NewRouter(sinks))
	s.sinks.Store(&sinks)
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

// ResolveTables resolves the tables of sinks, and of retention when
// withRetention, as the source database holds them now.
func (s *Service) ResolveTables(ctx context.Context, sinks []*sink.Sink, withRetention bool) (*replication.Resolution, error) {
	// Retained tables are published too, whether a sink names them or not.
	if rt := s.Cfg.Retention.Tables; withRetention && len(rt) > 0 {
		sinks = append(slices.Clip(sinks), &sink.Sink{Name: "retention", Config: config.Sink{Name: "retention", Tables: rt}})
	}
	return replication.ResolveTables(ctx, s.Source, sinks, s.Cfg.State.Schema)
}

// checkTables is the start-up check of the sinks' tables: a named table
// without a primary key stops walhook, a missing one is only logged, since
// it is captured once it is created.
func (s *Service) checkTables(ctx context.Context) error {
	res, err := s.ResolveTables(ctx, *s.sinks.Load(), true)
	if err != nil {
		return err
	}
	if err := res.Err(); err != nil {
		return err
	}
	s.logWarnings(res)
	return nil
}

// logWarnings logs the resolution's warnings when they differ from the
// last ones logged, so a table that stays missing is not logged every
// tick.
func (s *Service) logWarnings(res *replication.Resolution) {
	var lines []string
	for name, ws := range res.Warnings {
		for _, w := range ws {
			lines = append(lines, "sink "+name+": "+w)
		}
	}
	for _, err := range res.Errors {
		lines = append(lines, err.Error())
	}
	slices.Sort(lines)
	key := strings.Join(lines, "\n")
	if prev := s.lastWarnings.Swap(&key); prev != nil && *prev == key {
		return
	}
	for _, l := range lines {
		s.Log.Warn().Msg(l)
	}
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

// captured runs after each capture flush: this process's delivery is
// woken at once (other processes hear the flush's NOTIFY).
func (s *Service) captured(counts map[int64]int) {
	if s.Delivery != nil {
		for id := range counts {
			s.Delivery.Wake(id)
		}
	}
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
		Leases: s.Store,
		Name:   s.leaseName(),
		Holder: s.Worker,
		TTL:    s.Cfg.Database.LeaderLease.D(),
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

// leaseName names the leadership of this slot among the processes that
// share the state schema.
func (s *Service) leaseName() string { return "stream:" + s.Cfg.Database.Slot }

// tableTick is how often the leader re-resolves the sinks' tables, so a
// table created, re-created or renamed into a sink's patterns is
// published within about this long even where its schema cannot be
// published whole.
const tableTick = time.Second

// lead streams the slot while this process is the leader: it keeps the
// publication in line with the sinks' tables as sinks and tables change.
// The walsender re-reads the publication as it decodes, so a sync needs no
// restart of the stream. Capture writes only while the term's token is
// live.
func (s *Service) lead(ctx context.Context, token int64) error {
	s.Capture.SetLease(s.leaseName(), token)
	wholeSchemas, err := replication.PublishesSchemas(ctx, s.Source)
	if err != nil {
		return err
	}
	s.syncTables(ctx, wholeSchemas)
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
	tick := time.NewTicker(tableTick)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case <-s.changed:
		case <-tick.C:
		}
		s.syncTables(ctx, wholeSchemas)
	}
}

// syncTables resolves the sinks' tables as they are now and makes the
// publication match: schemas taken whole where Postgres allows it, the
// other tables by name. Problems with single tables are warnings here;
// the table is published once it can be captured. A failed sync leaves
// the publication as it was (it is one transaction) and is logged, not
// returned: one table Postgres refuses to publish must not stop the
// stream of all the others. The next tick tries again.
func (s *Service) syncTables(ctx context.Context, wholeSchemas bool) {
	res, err := s.ResolveTables(ctx, *s.sinks.Load(), true)
	if err == nil {
		s.logWarnings(res)
		var schemas []string
		if wholeSchemas {
			schemas = res.Schemas
		}
		err = replication.SyncPublication(ctx, s.Source, s.Cfg.Database.Publication, res.Tables, schemas)
	}
	msg := ""
	if err != nil && ctx.Err() == nil {
		msg = err.Error()
	}
	if prev := s.lastSyncErr.Swap(&msg); msg != "" && (prev == nil || *prev != msg) {
		s.Log.Error().Err(err).Msg("sync the publication with the sinks' tables (retrying every second)")
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
// service until ctx ends, then releases everything. ready, when set, is
// called once the service listens and first streams the slot, with the
// bound address: from then on a change committed to a published table is
// captured (`walhook dev` prints its banner and console sign-in link
// there). An error from ready stops the service.
func Main(ctx context.Context, cfg *config.Config, log zerolog.Logger, ready func(s *Service, addr net.Addr) error) error {
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
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var serveErr, readyErr error
	wg.Go(func() {
		if serveErr = s.API().Serve(runCtx, ln); serveErr != nil {
			log.Error().Err(serveErr).Msg("HTTP server stopped; stopping walhook")
			cancel()
		}
	})
	log.Info().Str("worker", s.Worker).Str("listen", ln.Addr().String()).Msg("walhook started")
	if ready != nil {
		wg.Go(func() {
			select {
			case <-s.Stream.Started():
				if readyErr = ready(s, ln.Addr()); readyErr != nil {
					cancel()
				}
			case <-runCtx.Done():
			}
		})
	}
	err = s.Run(runCtx)
	cancel()
	wg.Wait()
	log.Info().Msg("walhook stopped")
	return errors.Join(err, serveErr, readyErr)
}
