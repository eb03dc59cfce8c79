package delivery

import "context"

// purgeDeleted sweeps up messages written for sinks deleted meanwhile
// (see outbox.Store.PurgeDeletedSinks).
func (m *Manager) purgeDeleted(ctx context.Context) {
	n, err := m.cfg.Store.PurgeDeletedSinks(ctx)
	if err != nil && ctx.Err() == nil {
		m.cfg.Log.Warn().Err(err).Msg("purge messages of deleted sinks")
	} else if n > 0 {
		m.cfg.Log.Info().Int64("messages", n).Msg("purged messages of deleted sinks")
	}
}
