package outbox

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/sink"
)

// chunkRows is how many messages are buffered before they are copied into
// the open state transaction. It bounds memory for transactions of any
// size: a 1M-row source transaction streams through in chunks and commits
// once, with its stream position.
const chunkRows = 5000

// smallFlush and smallFlushBytes bound a flush written in one round trip
// (Flush): light traffic, where the round trips of a transaction opened,
// copied into and committed apart are most of the latency. Larger
// flushes COPY, which is cheaper per row and has no bound on the size of
// one protocol message (1 GB), as the payloads of one statement's
// parameters do.
const (
	smallFlush      = 64
	smallFlushBytes = 1 << 20
)

// Capture writes the replication stream into the outbox. It groups several
// source transactions into one state transaction (group commit) and
// records the stream position in that same transaction, so after a crash
// the outbox and the position agree: nothing is missing and nothing is
// written twice. It implements replication.Handler.
type Capture struct {
	store  *Store
	slot   string
	router *atomic.Pointer[sink.Router]
	log    zerolog.Logger

	// OnMessage, when set, receives logical decoding messages
	// (watermarks). It runs on the stream's goroutine.
	OnMessage func(ctx context.Context, lsn uint64, transactional bool, prefix string, content []byte) error
	// OnCommit, when set, runs after each flush with the sinks that got
	// messages (for metrics).
	OnCommit func(counts map[int64]int)

	// Backfills and retention (backfill_hook.go, retention.go): open
	// watermark windows, the current transaction's commit time (for read
	// messages), the pages being written (the latest of each sink, and the
	// latest of all), and the retained changes not yet copied.
	wm          watermarks
	txTime      time.Time
	pending     map[int64]*pageWrite
	pendingPage *pageWrite
	ret         retentionState
	// testPages, when set, takes the pages instead of the outbox: tests
	// without a database.
	testPages func(*pageWrite)

	// lease is the leadership term capture writes for (SetLease); every
	// flush checks it is still live before it commits.
	lease *leaseRef

	tx         pgx.Tx // open while a flush is in progress or a chunk spilled
	routerSeen *sink.Router
	routes     map[*sink.Relation][]*sink.Route
	received   []int64 // sinks the current change went to, while a backfill window records

	rows    []NewMessage
	arena   []byte
	touched map[int64]int
	trunc   map[string]int

	buffered   int
	lastCommit uint64
	lastEnd    uint64
	durableEnd uint64
}

// NewCapture writes for slot, routing with whatever router is current.
func NewCapture(store *Store, slot string, router *atomic.Pointer[sink.Router], log zerolog.Logger) *Capture {
	return &Capture{store: store, slot: slot, router: router, log: log}
}

type leaseRef struct {
	name  string
	token int64
}

// SetLease fences capture with a leadership term (doc.go, rule T): a flush
// commits only while the term named and token is live, and holds it until
// the commit, so a leader that lost its lease (frozen, partitioned) writes
// neither messages nor a stream position after its successor started.
// Without a lease (tests, a single process) nothing is checked.
func (c *Capture) SetLease(name string, token int64) { c.lease = &leaseRef{name, token} }

// Position reads the durable stream position and drops anything buffered
// from an earlier, failed run.
func (c *Capture) Position(ctx context.Context) (uint64, uint64, error) {
	c.reset(ctx)
	var commit, end int64
	err := c.store.pool.QueryRow(ctx, `SELECT commit_lsn, end_lsn FROM replication_state WHERE slot = $1`, c.slot).Scan(&commit, &end)
	if err == pgx.ErrNoRows {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("read replication_state: %w", err)
	}
	c.lastCommit, c.lastEnd, c.durableEnd = uint64(commit), uint64(end), uint64(end)
	return uint64(commit), uint64(end), nil
}

func (c *Capture) reset(ctx context.Context) {
	if c.tx != nil {
		_ = c.tx.Rollback(context.WithoutCancel(ctx))
		c.tx = nil
	}
	c.rows, c.arena, c.buffered = c.rows[:0], c.arena[:0], 0
	c.touched, c.trunc = map[int64]int{}, map[string]int{}
	c.ret.reset()
}

// Begin starts a source transaction.
func (c *Capture) Begin(ctx context.Context, commitLSN uint64, commitTime time.Time) error {
	if r := c.router.Load(); r != c.routerSeen {
		c.routerSeen = r
		c.routes = map[*sink.Relation][]*sink.Route{}
	}
	c.txTime = commitTime
	return nil
}

// Change routes one change to its sinks and buffers their messages.
func (c *Capture) Change(ctx context.Context, ch *sink.Change) error {
	routes, ok := c.routes[ch.Rel]
	if !ok {
		if len(c.routes) > 1000 { // relations are replaced on DDL; forget old ones
			clear(c.routes)
		}
		if c.routerSeen != nil {
			routes = c.routerSeen.ForTable(ch.Rel.Schema, ch.Rel.Table)
		}
		c.routes[ch.Rel] = routes
	}
	// Backfill windows record the keys of the changes their sink
	// receives; retained tables keep every change (backfill_hook.go,
	// retention.go).
	recording := c.wm.recording.Load() > 0
	c.received = c.received[:0]
	for _, rt := range routes {
		if c.add(rt, ch) && recording {
			c.received = append(c.received, rt.Sink.ID)
		}
	}
	if recording {
		c.wm.observe(ch, routes, c.received)
	}
	c.retainChange(ch)
	if len(c.rows) >= chunkRows || len(c.ret.rows) >= chunkRows {
		return c.spill(ctx)
	}
	return nil
}

// add buffers the message of one route for a change, if the route
// matches it. Backfill pages come through here too.
func (c *Capture) add(rt *sink.Route, ch *sink.Change) bool {
	if !rt.Match(ch) {
		return false
	}
	start := len(c.arena)
	c.arena = rt.Render(c.arena, ch)
	c.rows = append(c.rows, NewMessage{SinkID: rt.Sink.ID, Group: rt.GroupKey(ch), CommitLSN: ch.CommitLSN, CommitIdx: ch.CommitIdx,
		Payload: c.arena[start:len(c.arena):len(c.arena)]})
	c.touched[rt.Sink.ID]++
	c.buffered++
	return true
}

// Truncate counts truncated tables; a TRUNCATE is not delivered.
func (c *Capture) Truncate(ctx context.Context, rels []*sink.Relation) error {
	for _, r := range rels {
		c.log.Warn().Str("table", r.QualifiedName()).Msg("TRUNCATE captured; not delivered")
		c.trunc[r.QualifiedName()]++
	}
	return nil
}

// Message handles backfill watermarks (backfill_hook.go) and passes other
// logical decoding messages on to OnMessage.
func (c *Capture) Message(ctx context.Context, lsn uint64, transactional bool, prefix string, content []byte) error {
	if prefix == WatermarkPrefix && transactional {
		return c.watermark(ctx, lsn, content)
	}
	if c.OnMessage != nil {
		return c.OnMessage(ctx, lsn, transactional, prefix, content)
	}
	return nil
}

// Commit records the transaction's position; it becomes durable at the
// next Flush.
func (c *Capture) Commit(ctx context.Context, commitLSN, endLSN uint64) error {
	c.lastCommit, c.lastEnd = commitLSN, endLSN
	return nil
}

// Buffered counts messages not yet committed to the outbox.
func (c *Capture) Buffered() int { return c.buffered }

// spill copies the buffered rows into the open state transaction.
func (c *Capture) spill(ctx context.Context) error {
	if c.tx == nil {
		tx, err := c.store.pool.Begin(ctx)
		if err != nil {
			return fmt.Errorf("begin outbox transaction: %w", err)
		}
		c.tx = tx
		// A large source transaction keeps this one open while the rest
		// of it is decoded, however long that takes; the pool's idle
		// timeout applies again from the flush on (fenceSQL).
		if _, err := tx.Exec(ctx, `SET LOCAL idle_in_transaction_session_timeout = 0`); err != nil {
			return fmt.Errorf("begin outbox transaction: %w", err)
		}
	}
	if err := queueRows(ctx, c.tx, c.rows); err != nil {
		return err
	}
	if err := c.spillRetained(ctx); err != nil {
		return err
	}
	c.rows, c.arena = c.rows[:0], c.arena[:0]
	return nil
}

// Flush commits every buffered transaction with the stream position and
// wakes delivery. It returns the end LSN now durable.
func (c *Capture) Flush(ctx context.Context) (uint64, error) {
	if c.lastEnd == c.durableEnd && c.buffered == 0 && len(c.trunc) == 0 {
		return c.durableEnd, nil
	}
	if err := c.waitPages(ctx); err != nil {
		c.reset(ctx)
		return 0, fmt.Errorf("wait for backfill pages: %w", err)
	}
	b := &pgx.Batch{}
	// Small: nothing spilled yet, few rows, few bytes. The whole flush is
	// then one pipeline, one implicit transaction committed at its end,
	// and a lost term fails its fence (fenceOrFailSQL) and so all of it,
	// where a large flush checks the fence before it commits. The fence
	// comes after the rows and before the position: a leader frozen while
	// it sends the rows holds no lock a successor needs (the server waits
	// for the rest of a pipeline with no timeout, unlike for the commit of
	// an open transaction), and one frozen after the fence has only a few
	// hundred bytes left to send.
	n := len(c.rows)
	small := c.tx == nil && len(c.ret.rows) == 0 && n <= smallFlush && len(c.arena) <= smallFlushBytes
	if small {
		queueInsert(b, c.rows)
		if c.lease != nil {
			b.Queue(fenceOrFailSQL, c.lease.name, c.lease.token)
		}
	} else if err := c.spill(ctx); err != nil {
		c.reset(ctx)
		return 0, err
	}
	fenced := true
	if c.lease != nil && !small {
		// From here the transaction holds the lease row: a process frozen
		// before its commit must not keep a successor waiting for good.
		b.Queue(`SET LOCAL idle_in_transaction_session_timeout = '` + idleInTransactionTimeout + `'`)
		b.Queue(fenceSQL, c.lease.name, c.lease.token).Query(func(rows pgx.Rows) error {
			fenced = rows.Next()
			rows.Close()
			return rows.Err()
		})
	}
	b.Queue(`INSERT INTO replication_state (slot, commit_lsn, end_lsn, updated_at) VALUES ($1, $2, $3, now())
		ON CONFLICT (slot) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, end_lsn = EXCLUDED.end_lsn, updated_at = now()`,
		c.slot, int64(c.lastCommit), int64(c.lastEnd))
	for table, n := range c.trunc {
		b.Queue(`INSERT INTO truncates (table_name, count) VALUES ($1, $2)
			ON CONFLICT (table_name) DO UPDATE SET count = truncates.count + EXCLUDED.count, last_at = now()`, table, n)
	}
	if len(c.touched) > 0 {
		ids := make([]int64, 0, len(c.touched))
		for id := range c.touched {
			ids = append(ids, id)
		}
		b.Queue(`SELECT pg_notify($1, $2)`, c.store.Channel(), joinIDs(ids))
	}
	if small {
		err := c.store.pool.SendBatch(ctx, b).Close()
		if isFenceFailed(err) {
			err = ErrLostLease
		}
		if err != nil {
			c.reset(ctx)
			return 0, fmt.Errorf("commit %d messages with the stream position: %w", n, err)
		}
		c.rows, c.arena = c.rows[:0], c.arena[:0]
	} else {
		if err := c.tx.SendBatch(ctx, b).Close(); err != nil {
			c.reset(ctx)
			return 0, fmt.Errorf("record stream position: %w", err)
		}
		if !fenced {
			c.reset(ctx)
			return 0, fmt.Errorf("flush stream position: %w", ErrLostLease)
		}
		if err := c.tx.Commit(ctx); err != nil {
			c.tx = nil
			c.reset(ctx)
			return 0, fmt.Errorf("commit outbox transaction: %w", err)
		}
		c.tx = nil
	}
	if c.OnCommit != nil && len(c.touched) > 0 {
		c.OnCommit(c.touched)
	}
	c.durableEnd = c.lastEnd
	c.buffered = 0
	c.touched, c.trunc = map[int64]int{}, map[string]int{}
	return c.durableEnd, nil
}
