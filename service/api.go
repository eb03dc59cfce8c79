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
		CheckTables: func(ctx context.Context, sk *sink.Sink) ([]string, error) {
			tables, err := replication.ResolveTables(ctx, s.Source, []*sink.Sink{sk}, s.Cfg.State.Schema)
			if err != nil {
				return nil, err
			}
			names := make([]string, len(tables))
			for i, t := range tables {
				names[i] = t.String()
			}
			return names, nil
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
		rows, err := s.Source.Query(ctx, `
			SELECT n.nspname || '.' || c.relname FROM pg_publication p
			JOIN pg_publication_rel pr ON pr.prpubid = p.oid
			JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE p.pubname = $1`, s.Cfg.Database.Publication)
		if err != nil {
			return fmt.Errorf("publication %s: list tables: %w", s.Cfg.Database.Publication, err)
		}
		have := map[string]bool{}
		for rows.Next() {
			var t string
			if err := rows.Scan(&t); err != nil {
				rows.Close()
				return fmt.Errorf("publication %s: list tables: %w", s.Cfg.Database.Publication, err)
			}
			have[t] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("publication %s: list tables: %w", s.Cfg.Database.Publication, err)
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
