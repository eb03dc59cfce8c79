package outbox

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Listener receives the outbox notifications (NOTIFY on Channel) on a
// connection of its own, so live views wake when messages arrive instead
// of polling hard.
type Listener struct {
	conn *pgxpool.Conn
}

// Listen takes a connection from the pool and LISTENs on Channel. Close
// gives the connection back.
func (s *Store) Listen(ctx context.Context) (*Listener, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("listen for outbox notifications: %w", err)
	}
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{s.Channel()}.Sanitize()); err != nil {
		conn.Release()
		return nil, fmt.Errorf("listen for outbox notifications: %w", err)
	}
	return &Listener{conn: conn}, nil
}

// Wait blocks until a notification arrives, returning the ids of the
// sinks that got messages (the payload joinIDs wrote), or ctx ends.
func (l *Listener) Wait(ctx context.Context) ([]int64, error) {
	n, err := l.conn.Conn().WaitForNotification(ctx)
	if err != nil {
		return nil, err
	}
	var ids []int64
	for _, part := range strings.Split(n.Payload, ",") {
		if id, err := strconv.ParseInt(part, 10, 64); err == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// Close stops listening and returns the connection. A connection that
// cannot UNLISTEN (it broke) is closed rather than pooled.
func (l *Listener) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := l.conn.Exec(ctx, `UNLISTEN *`); err != nil {
		_ = l.conn.Conn().Close(ctx)
	}
	l.conn.Release()
}

// Observed is a message seen entering the outbox.
type Observed struct {
	ID        int64
	SinkID    int64
	Sink      string
	Group     string
	CommitLSN int64
	CommitIdx int32
	Payload   []byte
}

// ObservePage is one look at the outbox for a live tail.
type ObservePage struct {
	// Messages are in id order: first those found in the holes asked
	// for, then new ones.
	Messages []Observed
	// More says a part of the look stopped at its limit: look again now.
	More bool
	// Xmin and Xmax are the look's snapshot bounds (xid8): once a later
	// look's Xmin reaches this Xmax, every transaction in progress during
	// this look has ended, so no message with an id up to this look's
	// highest can still appear.
	Xmin, Xmax uint64
}

// IDRange is an inclusive range of message ids.
type IDRange struct{ Lo, Hi int64 }

// ObserveHead is the highest message id handed out so far, where a live
// tail starts. (The outbox's sequence, not its rows: a message acked a
// moment ago is in neither the outbox nor, yet, the history.)
func (s *Store) ObserveHead(ctx context.Context) (int64, error) {
	var id int64
	err := s.pool.QueryRow(ctx, `SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'id')), 0)`).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("observe: read head: %w", err)
	}
	return id, nil
}

// observeColumns is what a look reads of a message, from the outbox and,
// for those delivered already, the history.
const observeColumns = `id, sink_id, group_key, commit_lsn, commit_idx, payload`

// ObserveSince returns, in one snapshot, the messages in holes (ids below
// after that were not visible at earlier looks: ids are assigned before
// commit, so a message can appear below ids seen already) and up to limit
// messages with an id above after, in id order. Only those ids are read,
// never the messages a tail has seen, however long a transaction holds
// the snapshot's xmin back.
func (s *Store) ObserveSince(ctx context.Context, after int64, holes []IDRange, limit int) (ObservePage, error) {
	var page ObservePage
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var xmin, xmax string
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_snapshot_xmax(pg_current_snapshot())::text`).Scan(&xmin, &xmax); err != nil {
			return err
		}
		var err error
		if page.Xmin, err = strconv.ParseUint(xmin, 10, 64); err != nil {
			return err
		}
		if page.Xmax, err = strconv.ParseUint(xmax, 10, 64); err != nil {
			return err
		}
		if len(holes) > 0 {
			los, his := make([]int64, len(holes)), make([]int64, len(holes))
			for i, h := range holes {
				los[i], his[i] = h.Lo, h.Hi
			}
			found, err := observeQuery(ctx, tx, `
				SELECT `+observeColumns+` FROM unnest($1::bigint[], $2::bigint[]) r(lo, hi)
					CROSS JOIN LATERAL (SELECT `+observeColumns+` FROM outbox WHERE id BETWEEN r.lo AND r.hi) o
				UNION ALL
				SELECT `+observeColumns+` FROM unnest($1::bigint[], $2::bigint[]) r(lo, hi)
					CROSS JOIN LATERAL (SELECT `+observeColumns+` FROM delivered WHERE id BETWEEN r.lo AND r.hi) d`, limit, los, his)
			if err != nil {
				return err
			}
			page.Messages = found
			page.More = len(found) == limit
		}
		fresh, err := observeQuery(ctx, tx, `
			(SELECT `+observeColumns+` FROM outbox WHERE id > $1 ORDER BY id LIMIT $2)
			UNION ALL
			(SELECT `+observeColumns+` FROM delivered WHERE id > $1 ORDER BY id LIMIT $2)`, limit, after, limit)
		if err != nil {
			return err
		}
		page.Messages = append(page.Messages, fresh...)
		page.More = page.More || len(fresh) == limit
		return nil
	})
	if err != nil {
		return ObservePage{}, fmt.Errorf("observe outbox: %w", err)
	}
	return page, nil
}

// observeQuery runs one part of a look (inner selects the messages) and
// returns up to limit of them in id order, with their sink's name.
func observeQuery(ctx context.Context, tx pgx.Tx, inner string, limit int, args ...any) ([]Observed, error) {
	n := len(args) + 1
	rows, err := tx.Query(ctx, `
		SELECT m.id, m.sink_id, COALESCE(s.name, ''), m.group_key, m.commit_lsn, m.commit_idx, m.payload
		FROM (`+inner+`) m LEFT JOIN sinks s ON s.id = m.sink_id
		ORDER BY m.id LIMIT $`+strconv.Itoa(n), append(args, limit)...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Observed, error) {
		var o Observed
		err := r.Scan(&o.ID, &o.SinkID, &o.Sink, &o.Group, &o.CommitLSN, &o.CommitIdx, &o.Payload)
		return o, err
	})
}
