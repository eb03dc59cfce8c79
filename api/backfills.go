package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/outbox"
)

// Backfills and replays (docs/reference.md#56-backfills-and-replays). The work
// is in package backfill; these handlers only decode, call and answer.
// Backfills run on the leader, whichever process took the request.

// backfillRoutes registers the backfill and replay routes.
func (s *Server) backfillRoutes() {
	s.handle("GET /api/sinks/{name}/backfills", s.listBackfills)
	s.handle("POST /api/sinks/{name}/backfills", s.createBackfill)
	s.handle("GET /api/sinks/{name}/backfills/{id}", s.getBackfill)
	s.handle("DELETE /api/sinks/{name}/backfills/{id}", s.cancelBackfill)
	s.replayRoutes() // replays.go
}

// backfillError turns the backfill package's errors into API errors: its
// ErrInvalid is a 400; outbox.ErrNotFound passes through as a 404.
func backfillError(err error) error {
	if errors.Is(err, backfill.ErrInvalid) {
		msg := strings.TrimPrefix(err.Error(), backfill.ErrInvalid.Error()+": ")
		return invalid("", "%s", msg)
	}
	return err
}

func (s *Server) listBackfills(w http.ResponseWriter, r *http.Request) {
	list, err := backfill.List(r.Context(), s.d.Store, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": list})
}

func (s *Server) createBackfill(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req backfill.Request
	if strings.TrimSpace(string(body)) != "" { // every field is optional, the body too
		if err := decodeStrict(body, &req); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	b, err := backfill.Create(r.Context(), s.d.Store, nil, r.PathValue("name"), req)
	if err != nil {
		s.fail(w, r, backfillError(err))
		return
	}
	s.log.Info().Str("sink", b.Sink).Int64("backfill", b.ID).Strs("tables", b.Tables).Msg("backfill created through the API")
	writeJSON(w, http.StatusCreated, b)
}

// backfillID reads the {id} of a backfill route; anything but a positive
// number names no backfill (a 404, unlike pathID's 400).
func backfillID(r *http.Request) (int64, error) { return jobID(r, "backfill") }

// jobID reads the {id} of a backfill or replay route: anything but a
// positive number names no job, a 404.
func jobID(r *http.Request, what string) (int64, error) {
	id, err := pathID(r, what)
	if err != nil {
		return 0, fmt.Errorf("%s %q of sink %q: %w", what, r.PathValue("id"), r.PathValue("name"), outbox.ErrNotFound)
	}
	return id, nil
}

func (s *Server) getBackfill(w http.ResponseWriter, r *http.Request) {
	id, err := backfillID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	b, err := backfill.Get(r.Context(), s.d.Store, r.PathValue("name"), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// cancelBackfill is DELETE: it cancels a running backfill (the leader
// stops it within a page) and answers the backfill as it is now; one that
// already ended is left as it is.
func (s *Server) cancelBackfill(w http.ResponseWriter, r *http.Request) {
	id, err := backfillID(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	b, err := backfill.Cancel(r.Context(), s.d.Store, r.PathValue("name"), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info().Str("sink", b.Sink).Int64("backfill", b.ID).Str("state", b.State).Msg("backfill cancelled through the API")
	writeJSON(w, http.StatusOK, b)
}
