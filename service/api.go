package service

import (
	"context"
	"fmt"
	"time"

	"github.com/walhook/walhook/api"
	"github.com/walhook/walhook/replication"
	"github.com/walhook/walhook/sink"
)

// API builds this process's HTTP server on the service's parts. Main
// serves it; tests that run the service in-process serve it themselves.
func (s *Service) API() *api.Server {
	return api.New(api.Deps{
		Config:  s.Cfg,
		Store:   s.Store,
		Box:     s.Box,
		Log:     s.Log,
		Router:  s.Router.Load,
		Refresh: s.Refresh,
		Reload:  s.Delivery.Reload,
		// Pull acks join push deliveries in delivery's batched history.
		Delivered: s.Delivery.Delivered,
		ResolveTables: func(ctx context.Context, sinks []*sink.Sink) (*replication.Resolution, error) {
			return s.ResolveTables(ctx, sinks, false)
		},
		WaitPublished: s.waitPublished,
		Leading:       s.Leading,
		Stream:        s.Stream.Status,
		Logins:        s.Logins,
	})
}

// waitPublished polls the publication until it holds every table. The
// leader (this process or another) adds them after its next Refresh; the
// API waits so that a change committed after its answer is captured.
func (s *Service) waitPublished(ctx context.Context, tables []string) error {
	for {
		have, err := replication.PublishedTables(ctx, s.Source, s.Cfg.Database.Publication)
		if err != nil {
			return err
		}
		missing := ""
		for _, t := range tables {
			if !have[t] {
				missing = t
				break
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("publication %s: %s not added yet: %w", s.Cfg.Database.Publication, missing, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
