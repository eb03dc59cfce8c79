package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/secrets"
	"github.com/walhook/walhook/sink"
)

// masked replaces secret values in answers. Sent back unchanged in a
// PATCH (or a POST that repeats a GET), it keeps the stored value.
const masked = secrets.Mask

// sinkView is a sink as the API shows it: its settings as in the config
// file, plus identity, status and message counts.
type sinkView struct {
	ID string `json:"id"`
	config.Sink
	Status string `json:"status"`
	// Warnings are problems that do not stop the sink but lose it
	// changes: a table that does not exist (yet), one without a primary
	// key. Always a list, empty when all is well.
	Warnings  []string   `json:"warnings"`
	Counts    countsView `json:"counts"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
}

type countsView struct {
	Pending    int64 `json:"pending"`
	InFlight   int64 `json:"in_flight"`
	BackingOff int64 `json:"backing_off"`
	Failed     int64 `json:"failed"`
	Delivered  int64 `json:"delivered"`
}

func newSinkView(r *outbox.SinkRow, c outbox.Counts, warnings []string) sinkView {
	cfg := normalizeSink(r.Config)
	if cfg.SigningSecret != "" {
		cfg.SigningSecret = masked
	}
	status := "active"
	if r.Paused {
		status = "paused"
	}
	return sinkView{
		ID: r.UUID, Sink: cfg, Status: status, Warnings: append([]string{}, warnings...),
		Counts:    countsView{Pending: c.Pending, InFlight: c.InFlight, BackingOff: c.BackingOff, Failed: c.Failed, Delivered: c.Delivered},
		CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(),
	}
}

// normalizeSink shows empty lists and maps as [] and {} rather than null,
// so clients need not tell the two apart.
func normalizeSink(c config.Sink) config.Sink {
	if c.Tables == nil {
		c.Tables = []string{}
	}
	if c.WebhookSources == nil {
		c.WebhookSources = []string{}
	}
	if c.Actions == nil {
		c.Actions = []string{}
	}
	if c.Filters == nil {
		c.Filters = []config.Filter{}
	}
	if c.GroupBy == nil {
		c.GroupBy = map[string][]string{}
	}
	return c
}

func (s *Server) listSinks(w http.ResponseWriter, r *http.Request) {
	rows, err := s.d.Store.ListSinks(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	counts, err := s.d.Store.CountSinkMessages(r.Context(), 0)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	warnings := s.tableWarnings(r.Context(), rows...)
	out := make([]sinkView, 0, len(rows))
	for _, row := range rows {
		out = append(out, newSinkView(row, counts[row.ID], warnings[row.Name]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func (s *Server) sinkView(ctx context.Context, name string) (sinkView, error) {
	row, err := s.d.Store.GetSink(ctx, name)
	if err != nil {
		return sinkView{}, err
	}
	counts, err := s.d.Store.CountSinkMessages(ctx, row.ID)
	if err != nil {
		return sinkView{}, err
	}
	return newSinkView(row, counts[row.ID], s.tableWarnings(ctx, row)[row.Name]), nil
}

// respondSink answers a sink route with the sink as it is now.
func (s *Server) respondSink(ctx context.Context, w http.ResponseWriter, r *http.Request, name string, status int) {
	v, err := s.sinkView(ctx, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, status, v)
}

func (s *Server) getSink(w http.ResponseWriter, r *http.Request) {
	s.respondSink(r.Context(), w, r, r.PathValue("name"), http.StatusOK)
}

func (s *Server) createSink(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var cfg config.Sink
	if err := decodeStrict(body, &cfg); err != nil {
		s.fail(w, r, err)
		return
	}
	if cfg.SigningSecret == masked {
		s.fail(w, r, invalid("signing_secret", "%q is the mask the API shows; give the secret itself", masked))
		return
	}
	applySinkDefaults(&cfg, body)
	tables, err := s.validateSink(ctx, cfg)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.d.Store.CreateSink(ctx, cfg); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", cfg.Name).Msg("sink created through the API")
	if err := s.applied(ctx, tables); err != nil {
		s.fail(w, r, err)
		return
	}
	s.respondSink(ctx, w, r, cfg.Name, http.StatusCreated)
}

func (s *Server) patchSink(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	cur, err := s.d.Store.GetSink(ctx, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var cfg config.Sink
	merged, err := patched(normalizeSink(cur.Config), body, &cfg)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if cfg.Name != name {
		s.fail(w, r, invalid("name", "cannot be changed (create a new sink instead)"))
		return
	}
	if cfg.SigningSecret == masked {
		cfg.SigningSecret = cur.Config.SigningSecret
	}
	applySinkDefaults(&cfg, merged)
	tables, err := s.validateSink(ctx, cfg)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := s.d.Store.PutSink(ctx, cfg); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", name).Msg("sink changed through the API")
	if err := s.applied(ctx, tables); err != nil {
		s.fail(w, r, err)
		return
	}
	s.respondSink(ctx, w, r, name, http.StatusOK)
}

// applySinkDefaults fills fields the body left out with the documented defaults
// (docs/reference.md#27-sinks), like the config loader: a number given
// explicitly as 0 stays 0, so validation rejects it instead of it silently
// becoming the default.
func applySinkDefaults(cfg *config.Sink, body []byte) {
	var top, retry map[string]json.RawMessage
	_ = json.Unmarshal(body, &top)
	_ = json.Unmarshal(top["retry"], &retry)
	given := func(m map[string]json.RawMessage, k string) bool {
		v, ok := m[k]
		return ok && string(v) != "null"
	}
	was := *cfg
	cfg.ApplyDefaults()
	if given(top, "batch_size") {
		cfg.BatchSize = was.BatchSize
	}
	if given(top, "request_timeout") {
		cfg.RequestTimeout = was.RequestTimeout
	}
	if given(top, "max_ack_pending") {
		cfg.MaxAckPending = was.MaxAckPending
	}
	if given(top, "concurrency") {
		cfg.Concurrency = was.Concurrency
	}
	if given(retry, "initial_backoff") {
		cfg.Retry.InitialBackoff = was.Retry.InitialBackoff
	}
	if given(retry, "max_backoff") {
		cfg.Retry.MaxBackoff = was.Retry.MaxBackoff
	}
}

// validateSink checks a sink as the config loader does (same messages),
// then that its tables can be captured. It returns the tables it
// resolved, which must be in the publication before the change is done.
func (s *Server) validateSink(ctx context.Context, cfg config.Sink) ([]string, error) {
	endpoints, sources, err := s.objectNames(ctx)
	if err != nil {
		return nil, err
	}
	errs := fromConfigErrors(config.ValidateSink(cfg, endpoints, sources))
	if st := s.d.Config.State; st.URL == s.d.Config.Database.URL {
		for i, t := range cfg.Tables {
			if sch, _, ok := config.SplitTable(t); ok && sch == st.Schema {
				errs = append(errs, fieldError{Field: fmt.Sprintf("tables[%d]", i), Message: fmt.Sprintf("%q is in walhook's own state schema %q, which is never captured", t, sch)})
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	// A table that does not exist yet is no reason to refuse: the sink
	// shows a warning and captures the table once it is created.
	res, err := s.d.ResolveTables(ctx, []*sink.Sink{{Name: cfg.Name, Config: cfg}})
	if err != nil {
		return nil, err
	}
	if len(res.Errors) > 0 {
		// The resolver names the sink on each line; the field says it here.
		var out validationError
		for _, e := range res.Errors {
			out = append(out, fieldError{Field: "tables", Message: strings.TrimPrefix(e.Error(), "sink "+cfg.Name+": ")})
		}
		return nil, out
	}
	return res.Names(), nil
}

// tableWarnings returns each sink's table warnings by sink name. When the
// source database cannot be asked within a moment, every sink with tables
// says so rather than the answer failing or hanging: sinks are walhook's
// own objects, shown from the state database.
func (s *Server) tableWarnings(ctx context.Context, rows ...*outbox.SinkRow) map[string][]string {
	sinks := make([]*sink.Sink, 0, len(rows))
	for _, r := range rows {
		sinks = append(sinks, r.Sink)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	res, err := s.d.ResolveTables(ctx, sinks)
	if err != nil {
		s.log.Warn().Err(err).Msg("check the sinks' tables")
		out := map[string][]string{}
		for _, sk := range sinks {
			if len(sk.Config.Tables) > 0 {
				out[sk.Name] = []string{"tables not checked: " + err.Error()}
			}
		}
		return out
	}
	out := res.Warnings
	for _, e := range res.Errors {
		for _, sk := range sinks {
			if msg, ok := strings.CutPrefix(e.Error(), "sink "+sk.Name+": "); ok {
				out[sk.Name] = append(out[sk.Name], msg+"; it is not captured")
			}
		}
	}
	return out
}

func (s *Server) objectNames(ctx context.Context) (endpoints, sources map[string]bool, err error) {
	eps, err := s.d.Store.ListEndpoints(ctx)
	if err != nil {
		return nil, nil, err
	}
	srcs, err := s.d.Store.ListWebhookSources(ctx)
	if err != nil {
		return nil, nil, err
	}
	endpoints, sources = map[string]bool{}, map[string]bool{}
	for _, e := range eps {
		endpoints[e.Name] = true
	}
	for _, w := range srcs {
		sources[w.Name] = true
	}
	return endpoints, sources, nil
}

// applied makes a saved change take effect: routing and delivery reload,
// and the call returns once the sink's tables are in the publication, so
// a change committed after the answer is captured.
func (s *Server) applied(ctx context.Context, tables []string) error {
	if err := s.d.Refresh(ctx); err != nil {
		return fmt.Errorf("saved, but reloading sinks failed: %w", err)
	}
	s.d.Reload()
	if len(tables) > 0 {
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := s.d.WaitPublished(wctx, tables); err != nil {
			// Saved and routed; the leader adds the tables when it next
			// syncs. Not worth failing the request over.
			s.log.Warn().Err(err).Strs("tables", tables).Msg("tables not in the publication yet; changes before then are not captured")
		}
	}
	return nil
}

func (s *Server) deleteSink(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	// Messages capture writes for the sink after this are purged by
	// delivery's housekeeping.
	if _, err := s.d.Store.DeleteSink(ctx, name); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", name).Msg("sink deleted through the API")
	if err := s.applied(ctx, nil); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) pauseSink(w http.ResponseWriter, r *http.Request)  { s.setPaused(w, r, true) }
func (s *Server) resumeSink(w http.ResponseWriter, r *http.Request) { s.setPaused(w, r, false) }

func (s *Server) setPaused(w http.ResponseWriter, r *http.Request, paused bool) {
	ctx := r.Context()
	name := r.PathValue("name")
	if err := s.d.Store.SetSinkPaused(ctx, name, paused); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.d.Refresh(ctx); err != nil {
		s.log.Warn().Err(err).Msg("reload sinks after pause/resume")
	}
	s.respondSink(ctx, w, r, name, http.StatusOK)
}
