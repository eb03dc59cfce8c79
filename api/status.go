package api

import (
	"context"
	"net/http"
	"time"

	"github.com/walhook/walhook/console"
	"github.com/walhook/walhook/metrics"
)

// statusView is GET /api/status: what an operator checks first (is this
// process streaming, how far behind) plus running totals a client turns
// into rates. Totals rather than rates keep the server stateless: the
// console divides the change between two polls by their distance.
type statusView struct {
	Time        time.Time `json:"time"`
	StateDB     string    `json:"state_db"`
	Leading     bool      `json:"leading"`
	Replication string    `json:"replication"`
	// Positions and lag are known only on the leader, which streams.
	ReceivedLSN  *uint64 `json:"received_lsn"`
	ConfirmedLSN *uint64 `json:"confirmed_lsn"`
	LagBytes     *uint64 `json:"lag_bytes"`
	// Totals since this process started, over every sink.
	Delivered         float64 `json:"delivered_total"`
	Captured          float64 `json:"captured_total"`
	LatencySumSeconds float64 `json:"latency_seconds_sum"`
	LatencyCount      uint64  `json:"latency_count"`
}

// status answers the process's replication state and delivery totals.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	v := statusView{Time: time.Now().UTC(), StateDB: "ok", Replication: "standby", Leading: s.d.Leading()}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.d.Store.Ping(ctx); err != nil {
		s.log.Warn().Err(err).Msg("status: state database does not answer")
		v.StateDB = "unreachable"
	}
	if v.Leading {
		st := s.d.Stream()
		v.Replication = "starting"
		if st.Streaming {
			v.Replication = "streaming"
		}
		lag := uint64(0)
		if st.Received > st.Confirmed {
			lag = st.Received - st.Confirmed
		}
		v.ReceivedLSN, v.ConfirmedLSN, v.LagBytes = &st.Received, &st.Confirmed, &lag
	}
	families, err := metrics.Registry.Gather()
	if err != nil {
		// Gather reports partial failures but still returns what it got.
		s.log.Warn().Err(err).Msg("status: gather metrics")
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetName() {
			case "walhook_messages_delivered_total":
				v.Delivered += m.GetCounter().GetValue()
			case "walhook_messages_captured_total":
				v.Captured += m.GetCounter().GetValue()
			case "walhook_delivery_latency_seconds":
				v.LatencySumSeconds += m.GetHistogram().GetSampleSum()
				v.LatencyCount += m.GetHistogram().GetSampleCount()
			}
		}
	}
	writeJSON(w, http.StatusOK, v)
}

// mountConsole serves the web console (open: the page signs in with a
// token). Only / itself and the console's own paths, so unknown paths
// keep their JSON 404.
func (s *Server) mountConsole() {
	h := console.Handler(s.d.Logins)
	s.mux.Handle("GET /{$}", h)
	s.mux.Handle("GET "+console.Prefix, h)
	s.mux.Handle("POST "+console.LoginPath, h)
}
