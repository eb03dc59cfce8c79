package api

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/outbox"
)

// subscriptionView attaches an emitter ("webhook:NAME" or
// "table:SCHEMA.TABLE") to a listener sink.
type subscriptionView struct {
	ID        int64     `json:"id"`
	Emitter   string    `json:"emitter"`
	Listener  string    `json:"listener"`
	CreatedAt time.Time `json:"created_at"`
}

func newSubscriptionView(x outbox.Subscription) subscriptionView {
	return subscriptionView{ID: x.ID, Emitter: x.Emitter, Listener: x.Listener, CreatedAt: x.CreatedAt.UTC()}
}

type subscriptionBody struct {
	Emitter  string `json:"emitter"`
	Listener string `json:"listener"`
}

func (s *Server) listSubscriptions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if errs := unknownParams(q, "listener"); len(errs) > 0 {
		s.fail(w, r, errs[:1])
		return
	}
	subs, err := s.d.Store.ListSubscriptions(r.Context(), q.Get("listener"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]subscriptionView, 0, len(subs))
	for _, x := range subs {
		out = append(out, newSubscriptionView(x))
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

func (s *Server) getSubscription(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "subscription")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	x, err := s.d.Store.GetSubscription(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newSubscriptionView(*x))
}

// createSubscription attaches an emitter to a sink. The sink with its new
// emitter is validated like any sink (its tables must be capturable, its
// webhook source must exist), and the change applies at once.
func (s *Server) createSubscription(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var b subscriptionBody
	if err := decodeStrict(body, &b); err != nil {
		s.fail(w, r, err)
		return
	}
	var errs validationError
	if b.Listener == "" {
		errs = append(errs, fieldError{Field: "listener", Message: "is required (the name of a sink)"})
	}
	table, isTable := strings.CutPrefix(b.Emitter, outbox.TableEmitter)
	source, isSource := strings.CutPrefix(b.Emitter, outbox.WebhookEmitter)
	switch {
	case b.Emitter == "":
		errs = append(errs, fieldError{Field: "emitter", Message: `is required ("webhook:NAME" or "table:SCHEMA.TABLE")`})
	case isTable:
		if _, _, ok := config.SplitTable(table); !ok {
			errs = append(errs, fieldError{Field: "emitter", Message: strconv.Quote(table) + " is not schema-qualified (want table:schema.table or table:schema.*)"})
		}
	case isSource:
		if !config.ValidName(source) {
			errs = append(errs, fieldError{Field: "emitter", Message: strconv.Quote(source) + " is not a valid webhook source name"})
		}
	default:
		errs = append(errs, fieldError{Field: "emitter", Message: strconv.Quote(b.Emitter) + ` must be "webhook:NAME" or "table:SCHEMA.TABLE"`})
	}
	if len(errs) > 0 {
		s.fail(w, r, errs)
		return
	}
	cur, err := s.d.Store.GetSink(ctx, b.Listener)
	if errors.Is(err, outbox.ErrNotFound) {
		s.fail(w, r, invalid("listener", "%q is not a sink", b.Listener))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	cfg := cur.Config
	target, name := &cfg.WebhookSources, source
	if isTable {
		target, name = &cfg.Tables, table
	}
	if slices.Contains(*target, name) {
		s.fail(w, r, conflict("exists", "sink %q is subscribed to %s already", b.Listener, b.Emitter))
		return
	}
	*target = append(slices.Clone(*target), name)
	tables, err := s.validateSink(ctx, cfg)
	if err != nil {
		s.fail(w, r, asEmitterError(err))
		return
	}
	x, err := s.d.Store.AddSubscription(ctx, b.Listener, b.Emitter)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", b.Listener).Str("emitter", b.Emitter).Msg("subscription added through the API")
	if err := s.applied(ctx, tables); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, newSubscriptionView(*x))
}

// asEmitterError reports problems found in the sink's tables or webhook
// sources (the only parts a subscription changes) against the request's
// emitter field.
func asEmitterError(err error) error {
	v, ok := err.(validationError)
	if !ok {
		return err
	}
	out := make(validationError, len(v))
	for i, e := range v {
		out[i] = e
		if strings.HasPrefix(e.Field, "tables") || strings.HasPrefix(e.Field, "webhook_sources") {
			out[i] = fieldError{Field: "emitter", Message: e.Message}
		}
	}
	return out
}

// deleteSubscription detaches an emitter. A sink must keep at least one,
// and its group_by must still name its tables.
func (s *Server) deleteSubscription(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, err := pathID(r, "subscription")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	x, err := s.d.Store.GetSubscription(ctx, id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	cur, err := s.d.Store.GetSink(ctx, x.Listener)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	cfg := cur.Config
	if t, ok := strings.CutPrefix(x.Emitter, outbox.TableEmitter); ok {
		cfg.Tables = slices.DeleteFunc(slices.Clone(cfg.Tables), func(e string) bool { return e == t })
	} else if w, ok := strings.CutPrefix(x.Emitter, outbox.WebhookEmitter); ok {
		cfg.WebhookSources = slices.DeleteFunc(slices.Clone(cfg.WebhookSources), func(e string) bool { return e == w })
	}
	if len(cfg.Tables) == 0 && len(cfg.WebhookSources) == 0 {
		s.fail(w, r, conflict("last_subscription", "%s is the last subscription of sink %q; delete the sink instead", x.Emitter, x.Listener))
		return
	}
	if errs := config.ValidateSink(cfg, nil, nil); len(errs) > 0 {
		s.fail(w, r, conflict("in_use", "removing %s would leave sink %q invalid: %s", x.Emitter, x.Listener, fromConfigErrors(errs).Error()))
		return
	}
	if err := s.d.Store.RemoveSubscription(ctx, id); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", x.Listener).Str("emitter", x.Emitter).Msg("subscription removed through the API")
	if err := s.applied(ctx, nil); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
