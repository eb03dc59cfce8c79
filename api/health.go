package api

import (
	"context"
	"net/http"
	"time"
)

// healthz answers while the process can serve HTTP at all: a liveness
// probe must not fail because a dependency is down, or the process would be
// restarted for nothing.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when the state database answers and replication is
// either streaming (on the leader) or standing by (on the others).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.d.Store.Ping(ctx); err != nil {
		s.log.Warn().Err(err).Msg("readiness: state database does not answer")
		writeError(w, http.StatusServiceUnavailable, "not_ready", "state database does not answer")
		return
	}
	replication := "standby"
	if s.d.Leading() {
		if !s.d.Stream().Streaming {
			writeError(w, http.StatusServiceUnavailable, "not_ready", "elected to stream the replication slot, but not streaming (yet)")
			return
		}
		replication = "streaming"
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "state_db": "ok", "replication": replication})
}
