package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/walhook/walhook/outbox"
)

// Limits of GET /api/sinks/{name}/messages.
const (
	defaultMessageLimit = 100
	maxMessageLimit     = 1000
)

// messageView is one message of a sink. The message itself is embedded
// as JSON, exactly as the endpoint receives it.
type messageView struct {
	ID             int64           `json:"id"`
	Group          string          `json:"group"`
	State          string          `json:"state"`
	DeliverCount   int32           `json:"deliver_count"`
	LastError      *string         `json:"last_error"`
	LastStatus     *int32          `json:"last_status"`
	NotBefore      *time.Time      `json:"not_before"`
	CommitLSN      int64           `json:"commit_lsn"`
	CommitIdx      int32           `json:"commit_idx"`
	CreatedAt      *time.Time      `json:"created_at,omitempty"`
	FirstAttemptAt *time.Time      `json:"first_attempt_at,omitempty"`
	LastAttemptAt  *time.Time      `json:"last_attempt_at,omitempty"`
	FailedAt       *time.Time      `json:"failed_at,omitempty"`
	DeliveredAt    *time.Time      `json:"delivered_at,omitempty"`
	Message        json.RawMessage `json:"message"`
}

func newMessageView(m *outbox.MessageRow) messageView {
	utc := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		u := t.UTC()
		return &u
	}
	return messageView{
		ID: m.ID, Group: m.Group, State: m.State, DeliverCount: m.DeliverCount,
		LastError: m.LastError, LastStatus: m.LastStatus, NotBefore: utc(m.NotBefore),
		CommitLSN: m.CommitLSN, CommitIdx: m.CommitIdx,
		CreatedAt: utc(m.CreatedAt), FirstAttemptAt: utc(m.FirstAttemptAt), LastAttemptAt: utc(m.LastAttemptAt),
		FailedAt: utc(m.FailedAt), DeliveredAt: utc(m.DeliveredAt),
		Message: validJSON(m.Payload),
	}
}

func (s *Server) listMessages(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	errs := unknownParams(q, "state", "limit", "after")
	mq := outbox.MessageQuery{State: q.Get("state"), Limit: defaultMessageLimit}
	if mq.State != "" && !slices.Contains(outbox.States, mq.State) {
		errs = append(errs, fieldError{Field: "state", Message: strconv.Quote(mq.State) + " is not one of " + strings.Join(outbox.States, ", ")})
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxMessageLimit {
			errs = append(errs, fieldError{Field: "limit", Message: strconv.Quote(v) + " is not a whole number in 1.." + strconv.Itoa(maxMessageLimit)})
		}
		mq.Limit = n
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			errs = append(errs, fieldError{Field: "after", Message: strconv.Quote(v) + " is not a message id"})
		}
		mq.After = n
	}
	if len(errs) > 0 {
		s.fail(w, r, errs)
		return
	}
	sk, err := s.d.Store.GetSink(ctx, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	mq.SinkID = sk.ID
	rows, err := s.d.Store.ListMessages(ctx, mq)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]messageView, 0, len(rows))
	for _, m := range rows {
		out = append(out, newMessageView(m))
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

// messageOf resolves the sink and message id of a message route.
func (s *Server) messageOf(r *http.Request) (*outbox.SinkRow, int64, error) {
	id, err := pathID(r, "message")
	if err != nil {
		return nil, 0, err
	}
	sk, err := s.d.Store.GetSink(r.Context(), r.PathValue("name"))
	if err != nil {
		return nil, 0, err
	}
	return sk, id, nil
}

func (s *Server) getMessage(w http.ResponseWriter, r *http.Request) {
	sk, id, err := s.messageOf(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	m, err := s.d.Store.GetMessage(r.Context(), sk.ID, id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newMessageView(m))
}

// redeliverMessage makes one failed or backing-off message deliverable
// now. A message already on its way (pending, in flight) is answered as
// it is; a delivered one cannot be redelivered (replays do that).
func (s *Server) redeliverMessage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sk, id, err := s.messageOf(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	m, err := s.d.Store.GetMessage(ctx, sk.ID, id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	switch m.State {
	case outbox.StateDelivered:
		s.fail(w, r, conflict("not_redeliverable", "message %d was delivered already; use a replay to deliver it again", id))
		return
	case outbox.StateFailed, outbox.StateBackingOff:
		if _, err := s.d.Store.Redeliver(ctx, sk.ID, []int64{id}); err != nil {
			s.fail(w, r, err)
			return
		}
		s.log.Info().Str("sink", sk.Name).Int64("message", id).Str("was", m.State).Msg("message redelivered through the API")
		now, err := s.d.Store.GetMessage(ctx, sk.ID, id)
		switch {
		case errors.Is(err, outbox.ErrNotFound):
			// Delivered already, and not yet in the history (written a
			// moment after the ack): it was deliverable, as asked.
			m.State, m.NotBefore = outbox.StatePending, nil
		case err != nil:
			s.fail(w, r, err)
			return
		default:
			m = now
		}
	}
	writeJSON(w, http.StatusOK, newMessageView(m))
}

// redeliverAll makes every failed or backing-off message of a sink
// deliverable now, e.g. once a broken endpoint is fixed.
func (s *Server) redeliverAll(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sk, err := s.d.Store.GetSink(ctx, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := s.d.Store.Redeliver(ctx, sk.ID, nil)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", sk.Name).Int("messages", n).Msg("messages redelivered through the API")
	writeJSON(w, http.StatusOK, map[string]int{"redelivered": n})
}
