package api

import (
	"errors"
	"net/http"
	"strings"

	"github.com/walhook/walhook/backfill"
)

// Replays are jobs like backfills (docs/reference.md#56-backfills-and-replays):
// POST answers the replay at once, the leader runs it, GET shows its progress.

func (s *Server) replayRoutes() {
	s.handle("GET /api/sinks/{name}/replays", s.listReplays)
	s.handle("POST /api/sinks/{name}/replays", s.createReplay)
	s.handle("GET /api/sinks/{name}/replays/{id}", s.getReplay)
	s.handle("DELETE /api/sinks/{name}/replays/{id}", s.cancelReplay)
}

func (s *Server) listReplays(w http.ResponseWriter, r *http.Request) {
	list, err := backfill.ListReplays(r.Context(), s.d.Store, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": list})
}

// createReplay answers 201 with a new replay, or 200 with the one a
// retried request (same Idempotency-Key header, or the same window as a
// running replay) already made: the window is never queued twice for
// one request.
func (s *Server) createReplay(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req backfill.ReplayRequest
	if err := decodeStrict(body, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.From.IsZero() {
		s.fail(w, r, invalid("from", "is required: an RFC 3339 time"))
		return
	}
	key := strings.TrimSpace(r.Header.Get("Idempotency-Key"))
	if len(key) > 255 {
		s.fail(w, r, invalid("Idempotency-Key", "is longer than 255 characters"))
		return
	}
	rp, created, err := backfill.CreateReplay(r.Context(), s.d.Store, r.PathValue("name"), req, key)
	if errors.Is(err, backfill.ErrKeyReused) {
		s.fail(w, r, conflict("idempotency_key_reused", "%s", strings.TrimPrefix(err.Error(), backfill.ErrKeyReused.Error()+": ")))
		return
	}
	if err != nil {
		s.fail(w, r, backfillError(err))
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		s.log.Info().Str("sink", rp.Sink).Int64("replay", rp.ID).Time("from", rp.From).Time("to", rp.To).Msg("replay created through the API")
	}
	writeJSON(w, status, rp)
}

func (s *Server) getReplay(w http.ResponseWriter, r *http.Request) {
	id, err := jobID(r, "replay")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rp, err := backfill.GetReplay(r.Context(), s.d.Store, r.PathValue("name"), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rp)
}

// cancelReplay is DELETE: the replay stops after the chunk being queued;
// what it queued stays. One that already ended is left as it is.
func (s *Server) cancelReplay(w http.ResponseWriter, r *http.Request) {
	id, err := jobID(r, "replay")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rp, err := backfill.CancelReplay(r.Context(), s.d.Store, r.PathValue("name"), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", rp.Sink).Int64("replay", rp.ID).Str("state", rp.State).Msg("replay cancelled through the API")
	writeJSON(w, http.StatusOK, rp)
}
