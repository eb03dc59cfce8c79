package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/outbox"
	"github.com/walhook/walhook/sink"
)

// sourceView is a webhook source with its ingest URL.
type sourceView struct {
	ID           int64     `json:"id"`
	Name         string    `json:"name"`
	MaxBodyBytes int64     `json:"max_body_bytes"`
	URL          string    `json:"url"`
	Sinks        []string  `json:"sinks"`
	CreatedAt    time.Time `json:"created_at"`
	// Counts is per subscribed sink; only a single source's GET has it.
	Counts []sourceCountsView `json:"counts,omitempty"`
}

type sourceCountsView struct {
	Sink           string     `json:"sink"`
	Queued         int64      `json:"queued"`
	Failed         int64      `json:"failed"`
	Delivered      int64      `json:"delivered"`
	LastReceivedAt *time.Time `json:"last_received_at"`
}

func (s *Server) newSourceView(w *outbox.WebhookSourceRow) sourceView {
	v := sourceView{
		ID: w.ID, Name: w.Name, MaxBodyBytes: w.MaxBodyBytes, URL: s.IngestURL(w.Name),
		Sinks: w.Sinks, CreatedAt: w.CreatedAt.UTC(),
	}
	if v.Sinks == nil {
		v.Sinks = []string{}
	}
	return v
}

// IngestURL is where a webhook source receives, under server.public_url.
func (s *Server) IngestURL(name string) string {
	return strings.TrimRight(s.d.Config.Server.PublicURL, "/") + "/api/webhook/" + name
}

func (s *Server) listSources(w http.ResponseWriter, r *http.Request) {
	rows, err := s.d.Store.ListWebhookSources(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]sourceView, 0, len(rows))
	for _, row := range rows {
		out = append(out, s.newSourceView(row))
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func (s *Server) getSource(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	row, err := s.d.Store.GetWebhookSource(ctx, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	counts, err := s.d.Store.CountWebhookSourceMessages(ctx, row.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v := s.newSourceView(row)
	v.Counts = []sourceCountsView{}
	for _, c := range counts {
		cv := sourceCountsView{Sink: c.Sink, Queued: c.Queued, Failed: c.Failed, Delivered: c.Delivered}
		if c.LastReceivedAt != nil {
			t := c.LastReceivedAt.UTC()
			cv.LastReceivedAt = &t
		}
		v.Counts = append(v.Counts, cv)
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) createSource(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var ws config.WebhookSource
	if err := decodeStrict(body, &ws); err != nil {
		s.fail(w, r, err)
		return
	}
	ws.ApplyDefaults()
	if errs := config.ValidateWebhookSource(ws); len(errs) > 0 {
		s.fail(w, r, fromConfigErrors(errs))
		return
	}
	if err := s.d.Store.CreateWebhookSource(ctx, ws); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("webhook_source", ws.Name).Msg("webhook source created through the API")
	row, err := s.d.Store.GetWebhookSource(ctx, ws.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.newSourceView(row))
}

func (s *Server) deleteSource(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	users, err := s.d.Store.ListSinksSubscribedTo(ctx, outbox.WebhookEmitter+name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(users) > 0 {
		s.fail(w, r, conflict("in_use", "webhook source %q has subscribed sink(s) %s; remove those subscriptions first", name, strings.Join(users, ", ")))
		return
	}
	if err := s.d.Store.DeleteWebhookSource(ctx, name); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("webhook_source", name).Msg("webhook source deleted through the API")
	w.WriteHeader(http.StatusNoContent)
}

// ingest receives an inbound webhook: the body is stored as received
// (valid JSON required), keyed by its SHA-256, and queued for every
// subscribed sink in one transaction. A body still waiting in a sink is
// not queued twice.
func (s *Server) ingest(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	name := r.PathValue("name")
	status := http.StatusOK
	defer func() {
		// Unknown names are not labelled by name: anyone can invent them.
		label := name
		if status == http.StatusNotFound {
			label = ""
		}
		metrics.WebhooksReceived.WithLabelValues(label, strconv.Itoa(status)).Inc()
	}()
	reject := func(code int, errCode, msg string) {
		status = code
		writeError(w, code, errCode, msg)
	}

	limit, err := s.d.Store.GetWebhookSourceLimit(ctx, name)
	if errors.Is(err, outbox.ErrNotFound) {
		reject(http.StatusNotFound, "not_found", "no webhook source named "+strconv.Quote(name))
		return
	}
	if err != nil {
		status = http.StatusInternalServerError
		s.fail(w, r, err)
		return
	}
	tooLarge := func() {
		reject(http.StatusRequestEntityTooLarge, "payload_too_large",
			"body is larger than max_body_bytes ("+strconv.FormatInt(limit, 10)+") of webhook source "+strconv.Quote(name))
	}
	if r.ContentLength > limit {
		tooLarge()
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			tooLarge()
			return
		}
		reject(http.StatusBadRequest, "bad_request", "cannot read the request body")
		return
	}
	if len(bytes.TrimSpace(body)) == 0 {
		reject(http.StatusBadRequest, "invalid_json", "body is empty; a webhook body must be JSON")
		return
	}
	if !json.Valid(body) || !utf8.Valid(body) {
		reject(http.StatusBadRequest, "invalid_json", "body is not valid JSON (UTF-8)")
		return
	}
	sum := sha256.Sum256(body)
	key := name + "." + strings.ToUpper(hex.EncodeToString(sum[:]))

	var routes []*sink.Route
	if rt := s.d.Router(); rt != nil {
		routes = rt.ForWebhook(name)
	}
	wh := &sink.Webhook{Source: name, Key: key, Body: body, ReceivedAt: time.Now()}
	msgs := make([]outbox.WebhookMessage, 0, len(routes))
	for _, rt := range routes {
		msgs = append(msgs, outbox.WebhookMessage{SinkID: rt.Sink.ID, Key: key, Payload: rt.RenderWebhook(nil, wh)})
	}
	if _, err := s.d.Store.IngestWebhook(ctx, msgs); err != nil {
		status = http.StatusInternalServerError
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"key": key})
}
