// Package replication reads a logical replication slot with pgoutput and
// turns WAL into sink.Change values: slot and publication set-up, message
// decoding, type mapping and LSN checkpointing. What happens to a change is
// the Handler's business; the stream only confirms to the slot what the
// handler reports durable.
package replication

import (
	"context"
	"time"

	"github.com/walhook/walhook/sink"
)

// Handler receives the decoded stream, one source transaction at a time,
// in commit order. Transactions at or before the handler's Position are
// not passed again after a restart.
//
// The *sink.Change passed to Change, and its value slices, are only valid
// during the call: the decoder reuses their memory.
type Handler interface {
	// Position is the last source transaction durably handled: its commit
	// LSN and end LSN. Zero when nothing was handled yet.
	Position(ctx context.Context) (commitLSN, endLSN uint64, err error)
	Begin(ctx context.Context, commitLSN uint64, commitTime time.Time) error
	Change(ctx context.Context, c *sink.Change) error
	// Truncate reports tables truncated in the current transaction.
	Truncate(ctx context.Context, rels []*sink.Relation) error
	// Message is a logical decoding message (pg_logical_emit_message), used
	// for backfill watermarks. lsn is the message's own LSN.
	Message(ctx context.Context, lsn uint64, transactional bool, prefix string, content []byte) error
	Commit(ctx context.Context, commitLSN, endLSN uint64) error
	// Flush makes every committed transaction durable and returns the end
	// LSN up to which the slot may be confirmed. Called only between
	// transactions.
	Flush(ctx context.Context) (uint64, error)
	// Buffered reports how many changes wait for the next Flush; the stream
	// flushes early when it grows.
	Buffered() int
}
