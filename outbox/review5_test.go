package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/sink"
)

// Fifth adversarial review: the small capture flush (one pipeline on the
// pool, 0623398) and the warmed state pool (e6ec114), against a real
// Postgres.

// r5Row is one change of a staged source transaction: key id, JSON value v.
type r5Row struct {
	id int
	v  string // raw text, rendered as a JSON string
}

// r5Stage runs one source transaction through c (Begin, changes,
// Commit) at commit LSN lsn, end LSN lsn+1.
func r5Stage(t *testing.T, c *Capture, rel *sink.Relation, lsn uint64, rows []r5Row) {
	t.Helper()
	ctx := t.Context()
	if err := c.Begin(ctx, lsn, time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	for i, r := range rows {
		ch := &sink.Change{Rel: rel, Action: sink.Update, New: [][]byte{[]byte(fmt.Sprint(r.id)), sink.AppendJSONString(nil, r.v)},
			CommitLSN: lsn, CommitIdx: i, CommitTime: time.Unix(1700000000, 0)}
		if err := c.Change(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Commit(ctx, lsn, lsn+1); err != nil {
		t.Fatal(err)
	}
}

func r5Rows(n, groups int, v string) []r5Row {
	rows := make([]r5Row, n)
	for i := range rows {
		rows[i] = r5Row{id: i % groups, v: fmt.Sprintf("%s%d", v, i)}
	}
	return rows
}

// r5Lease inserts lease 't' with token 7, live for ttl (negative: over).
func r5Lease(t *testing.T, b *testBundle, ttl time.Duration) {
	t.Helper()
	if _, err := b.store.Pool.Exec(t.Context(), `INSERT INTO leases (name, holder, token, until) VALUES ('t', 'me', 7, clock_timestamp() + make_interval(secs => $1::float8))
		ON CONFLICT (name) DO UPDATE SET holder = 'me', token = 7, until = EXCLUDED.until`, ttl.Seconds()); err != nil {
		t.Fatal(err)
	}
}

// r5State is what the outbox holds: messages, position, truncate count.
type r5State struct {
	rows  int
	pos   int64 // 0: none
	trunc int64
}

func r5Read(t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) r5State {
	t.Helper()
	var s r5State
	if err := q.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM outbox),
		COALESCE((SELECT end_lsn FROM replication_state WHERE slot = 'slot'), 0),
		COALESCE((SELECT sum(count) FROM truncates), 0)::bigint`).Scan(&s.rows, &s.pos, &s.trunc); err != nil {
		t.Fatal(err)
	}
	return s
}

// r5CheckOrder fails when a message stands before an older one of its
// group (ids must follow commit order within a group, across flushes).
func r5CheckOrder(t *testing.T, b *testBundle) {
	t.Helper()
	var disorder int
	if err := b.store.Pool.QueryRow(t.Context(), `SELECT count(*) FROM (
		SELECT (commit_lsn, commit_idx) < (lag(commit_lsn) OVER w, lag(commit_idx) OVER w) AS bad
		FROM outbox WINDOW w AS (PARTITION BY sink_id, group_key ORDER BY id)) x WHERE bad`).Scan(&disorder); err != nil {
		t.Fatal(err)
	}
	if disorder != 0 {
		t.Fatalf("%d messages stand before an older one of their group", disorder)
	}
}

// Many flushes, small (0..64 rows, some with only a position move or a
// truncate) and large (65 rows) in turn, while another session reads the
// outbox and the position in one snapshot over and over: it must never
// see a flush's messages without its position or the reverse (a small
// flush is one implicit transaction), and ids follow commit order within
// each group across all the flushes.
func TestR5SmallFlushesAtomicUnderConcurrentReads(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	c, rel := newTestCapture(t, b)
	r5Lease(t, b, time.Hour)
	c.SetLease("t", 7)
	rel2 := &sink.Relation{Schema: rel.Schema, Table: rel.Table, Columns: rel.Columns}

	var done atomic.Bool
	type seen struct{ s r5State }
	var seenMu sync.Mutex
	var seens []seen
	readerErr := make(chan error, 1)
	go func() {
		conn, err := b.store.Pool.Acquire(ctx)
		if err != nil {
			readerErr <- err
			return
		}
		defer conn.Release()
		for !done.Load() {
			var s r5State
			if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox),
				COALESCE((SELECT end_lsn FROM replication_state WHERE slot = 'slot'), 0),
				COALESCE((SELECT sum(count) FROM truncates), 0)::bigint`).Scan(&s.rows, &s.pos, &s.trunc); err != nil {
				readerErr <- err
				return
			}
			seenMu.Lock()
			seens = append(seens, seen{s})
			seenMu.Unlock()
		}
		readerErr <- nil
	}()

	want := map[int64]r5State{0: {}}
	total, trunc := 0, int64(0)
	lsn := uint64(1000)
	for i := range 150 {
		n := (i * 7) % (smallFlush + 2) // 0 .. 65
		lsn += 10
		rows := r5Rows(n, 5, fmt.Sprintf("f%d-", i))
		r5Stage(t, c, rel, lsn, rows)
		if i%11 == 3 {
			// A second transaction in the same flush, and a truncate.
			lsn += 10
			if err := c.Begin(ctx, lsn, time.Now()); err != nil {
				t.Fatal(err)
			}
			if err := c.Truncate(ctx, []*sink.Relation{rel2}); err != nil {
				t.Fatal(err)
			}
			if err := c.Commit(ctx, lsn, lsn+1); err != nil {
				t.Fatal(err)
			}
			trunc++
		}
		end, err := c.Flush(ctx)
		if err != nil || end != lsn+1 {
			t.Fatalf("flush %d (%d rows): %d, %v; want %d", i, n, end, err, lsn+1)
		}
		total += n
		want[int64(lsn+1)] = r5State{rows: total, pos: int64(lsn + 1), trunc: trunc}
	}
	done.Store(true)
	if err := <-readerErr; err != nil {
		t.Fatal(err)
	}
	if got := r5Read(t, b.store.Pool); got != want[int64(lsn+1)] {
		t.Fatalf("after the flushes: %+v; want %+v", got, want[int64(lsn+1)])
	}
	for _, s := range seens {
		if w, ok := want[s.s.pos]; !ok || w != s.s {
			t.Fatalf("a reader saw %+v: no flush committed that (want %+v)", s.s, w)
		}
	}
	t.Logf("%d snapshots read during the flushes", len(seens))
	r5CheckOrder(t, b)
}

// A lease lost between two flushes: the first (live term) writes, and
// every later small flush (rows, a position move alone, a truncate alone)
// writes nothing and reports ErrLostLease.
func TestR5SmallFlushAfterLeaseLost(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"rows", "position only", "truncate only"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := t.Context()
			c, rel := newTestCapture(t, b)
			r5Lease(t, b, time.Hour)
			c.SetLease("t", 7)
			r5Stage(t, c, rel, 1000, r5Rows(10, 3, "a"))
			if _, err := c.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			before := r5Read(t, b.store.Pool)
			// The term runs out and a successor takes the lease.
			if _, err := b.store.Pool.Exec(ctx, `UPDATE leases SET until = clock_timestamp() WHERE name = 't'`); err != nil {
				t.Fatal(err)
			}
			if tok, ok, err := b.store.AcquireLease(ctx, "t", "successor", time.Hour); err != nil || !ok || tok != 8 {
				t.Fatalf("successor: %d %v %v", tok, ok, err)
			}
			switch kind {
			case "rows":
				r5Stage(t, c, rel, 2000, r5Rows(10, 3, "b"))
			case "position only":
				r5Stage(t, c, rel, 2000, nil)
			case "truncate only":
				if err := c.Begin(ctx, 2000, time.Now()); err != nil {
					t.Fatal(err)
				}
				if err := c.Truncate(ctx, []*sink.Relation{rel}); err != nil {
					t.Fatal(err)
				}
				if err := c.Commit(ctx, 2000, 2001); err != nil {
					t.Fatal(err)
				}
			}
			end, err := c.Flush(ctx)
			if !errors.Is(err, ErrLostLease) || end != 0 {
				t.Fatalf("flush after the term: %d, %v; want ErrLostLease", end, err)
			}
			if got := r5Read(t, b.store.Pool); got != before {
				t.Fatalf("a flush after the term changed the outbox: %+v, was %+v", got, before)
			}
		})
	}
}

// r5Backend waits for the capture's flush to wait on a lock, and returns
// its backend pid.
func r5Backend(t *testing.T, b *testBundle, flushDone <-chan error) int32 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var pid int32
		err := b.store.Pool.QueryRow(t.Context(), `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%held%' LIMIT 1`).Scan(&pid)
		if err == nil {
			return pid
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		select {
		case err := <-flushDone:
			t.Fatalf("the flush ended before it waited for the lease row: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatal("the flush never waited for the lease row")
	return 0
}

// A successor takes the lease while a small flush waits for the lease row
// at its fence: the fence sees the new token (the row is re-read after the
// wait), the pipeline fails, and nothing of it is written.
func TestR5SmallFlushFenceSeesSuccessor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	c, rel := newTestCapture(t, b)
	r5Lease(t, b, time.Hour)
	c.SetLease("t", 7)
	succ, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if _, err := succ.Exec(ctx, `UPDATE leases SET holder = 'successor', token = token + 1 WHERE name = 't'`); err != nil {
		t.Fatal(err)
	}
	r5Stage(t, c, rel, 1000, r5Rows(20, 4, "a"))
	flushed := make(chan error, 1)
	go func() {
		_, err := c.Flush(ctx)
		flushed <- err
	}()
	r5Backend(t, b, flushed)
	if err := succ.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-flushed; !errors.Is(err, ErrLostLease) {
		t.Fatalf("flush whose term ended while it waited: %v; want ErrLostLease", err)
	}
	if got := r5Read(t, b.store.Pool); got != (r5State{}) {
		t.Fatalf("the flush wrote %+v", got)
	}
}

// The state session of a small flush is killed mid-pipeline (waiting at
// its fence): nothing is written, and capture resumes from the durable
// position and writes the transaction once.
func TestR5SmallFlushBackendKilled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	c, rel := newTestCapture(t, b)
	r5Lease(t, b, time.Hour)
	c.SetLease("t", 7)
	r5Stage(t, c, rel, 1000, r5Rows(7, 3, "a"))
	if _, err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	hold, err := b.store.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hold.Exec(ctx, `SELECT 1 FROM leases WHERE name = 't' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	rows := r5Rows(smallFlush, 5, "b")
	r5Stage(t, c, rel, 2000, rows)
	flushed := make(chan error, 1)
	go func() {
		_, err := c.Flush(ctx)
		flushed <- err
	}()
	pid := r5Backend(t, b, flushed)
	if _, err := b.store.Pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	if err := <-flushed; err == nil {
		t.Fatal("flush on a killed session succeeded")
	}
	if err := hold.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r5Read(t, b.store.Pool); got != (r5State{rows: 7, pos: 1001}) {
		t.Fatalf("after the killed flush: %+v; want the first flush only", got)
	}
	// The stream restarts: from the durable position, the same transaction.
	commit, end, err := c.Position(ctx)
	if err != nil || commit != 1000 || end != 1001 {
		t.Fatalf("position: %d %d %v", commit, end, err)
	}
	r5Stage(t, c, rel, 2000, rows)
	if end, err := c.Flush(ctx); err != nil || end != 2001 {
		t.Fatalf("flush again: %d %v", end, err)
	}
	if got := r5Read(t, b.store.Pool); got != (r5State{rows: 7 + smallFlush, pos: 2001}) {
		t.Fatalf("after the retry: %+v", got)
	}
	r5CheckOrder(t, b)
}

// Payloads written by a small flush are the rendered bytes, unchanged:
// odd UTF-8 (astral planes, combining marks, U+2028, U+FFFF, escapes,
// quotes and backslashes) and large values (64 of 256 KiB in one flush),
// exactly as the COPY of a large flush writes them.
func TestR5SmallFlushPayloadBytes(t *testing.T) {
	t.Parallel()
	odd := []string{"", "😀𝄞\U0010FFFF", "e\u0301\u0301", "\u2028\u2029", "\uFFFF\uFFFE", `"\\\"'`, "\t\r\n\b\f\x01\x1f", "ß" + strings.Repeat("€", 1000),
		strings.Repeat("x", 256<<10)}
	for _, n := range []int{smallFlush, smallFlush + 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := t.Context()
			c, rel := newTestCapture(t, b)
			rows := make([]r5Row, n)
			for i := range rows {
				rows[i] = r5Row{id: i, v: odd[i%len(odd)]}
				if i >= n-8 {
					rows[i].v = strings.Repeat(string(rune('a'+i%26)), 256<<10)
				}
			}
			r5Stage(t, c, rel, 1000, rows)
			rt := c.routerSeen.RouteOf(b.sinkID)
			if _, err := c.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := b.store.Pool.Query(ctx, `SELECT commit_idx, payload FROM outbox ORDER BY commit_idx`)
			if err != nil {
				t.Fatal(err)
			}
			defer got.Close()
			i := 0
			for got.Next() {
				var idx int
				var payload []byte
				if err := got.Scan(&idx, &payload); err != nil {
					t.Fatal(err)
				}
				r := rows[idx]
				ch := &sink.Change{Rel: rel, Action: sink.Update, New: [][]byte{[]byte(fmt.Sprint(r.id)), sink.AppendJSONString(nil, r.v)},
					CommitLSN: 1000, CommitIdx: idx, CommitTime: time.Unix(1700000000, 0)}
				if want := rt.Render(nil, ch); !bytes.Equal(payload, want) {
					t.Fatalf("message %d: payload of %d bytes differs from the %d rendered", idx, len(payload), len(want))
				}
				i++
			}
			if got.Err() != nil || i != n {
				t.Fatalf("%d messages, %v; want %d", i, got.Err(), n)
			}
		})
	}
}

// r5Proxy stands between a client and Postgres. Throttled, it passes the
// client's bytes on in small pieces; frozen, it passes nothing on and
// holds the connections open, as a client process stopped by SIGSTOP does
// (its kernel still answers keepalives).
type r5Proxy struct {
	ln       net.Listener
	target   string
	throttle atomic.Bool
	frozen   atomic.Bool
	// freezeAt, when set, freezes the proxy once that many bytes from the
	// client have been forwarded while throttled (sent counts them).
	freezeAt, sent atomic.Int64
	mu             sync.Mutex
	conns          []net.Conn
}

func newR5Proxy(t *testing.T, target string) *r5Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &r5Proxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *r5Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go p.pipe(s, c, true)
		go p.pipe(c, s, false)
	}
}

func (p *r5Proxy) pipe(dst, src net.Conn, fromClient bool) {
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			// Throttled, the server's answers come late too, so that a
			// freeze lands before the client's next statement (the
			// COMMIT of a large flush).
			if p.throttle.Load() {
				if fromClient {
					if at := p.freezeAt.Load(); at > 0 && p.sent.Add(int64(n)) >= at {
						p.frozen.Store(true)
					}
					time.Sleep(5 * time.Millisecond)
				} else {
					time.Sleep(200 * time.Millisecond)
				}
			}
			for p.frozen.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			return
		}
	}
}

func (p *r5Proxy) close() {
	p.ln.Close()
	p.frozen.Store(false)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// A leader stopped (SIGSTOP) while it sends a small flush's pipeline, its
// rows half sent. The session is then not idle in a transaction (no
// ReadyForQuery was sent: the server waits inside the pipeline), so
// idle_in_transaction_session_timeout never fires, and keepalives are
// answered: the pipeline must hold no lock a successor needs (the fence
// and the position come after the rows), and the successor gets the
// lease as soon as the term is over. (Found by review 5 as a break: the
// fence came first, and held the lease row for good.)
//
// The flush of 65 messages (COPY, then the fence) is the control: frozen
// once its fence holds the row, it is freed by that timeout.
func TestR5FrozenMidPipelineSuccessorTakesOver(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out idle_in_transaction_session_timeout (30s)")
	}
	t.Parallel()
	t.Run("small flush, frozen mid-rows", func(t *testing.T) {
		t.Parallel()
		// 64 rows of 15 KiB: under smallFlushBytes, one pipeline.
		r5FrozenMidFlush(t, smallFlush, 15<<10, smallFlush*15<<10/2, 5*time.Second)
	})
	t.Run("COPY flush, frozen at its fence", func(t *testing.T) {
		t.Parallel()
		r5FrozenMidFlush(t, smallFlush+1, 128<<10, 0, 40*time.Second)
	})
}

// r5FrozenMidFlush freezes a leader's flush of n messages of size bytes:
// after freezeAt bytes of it reached the server, or (0) once its fence
// holds the lease row. The successor must get the lease within late of
// the term's end.
func r5FrozenMidFlush(t *testing.T, n, size int, freezeAt int64, late time.Duration) {
	b := setup(t)
	ctx := t.Context()
	// The leader's state pool goes through the proxy, to the bundle's database.
	cc := b.store.Pool.Config().ConnConfig
	u, err := url.Parse(b.store.Pool.Config().ConnString())
	if err != nil || u.Scheme == "" {
		t.Skipf("the test database's URL is not a URL: %v", err)
	}
	p := newR5Proxy(t, net.JoinHostPort(cc.Host, fmt.Sprint(cc.Port)))
	u.Host = p.ln.Addr().String()
	leaderStore, err := Open(ctx, u.String(), "walhook", 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(leaderStore.Close)
	c, rel := newTestCapture(t, &testBundle{store: &testStore{Store: leaderStore, Pool: leaderStore.pool}, sinkID: b.sinkID})
	const ttl = 8 * time.Second
	r5Lease(t, b, ttl)
	leaseEnd := time.Now().Add(ttl)
	c.SetLease("t", 7)
	// One flush to prepare its statements on a connection, then the one
	// that freezes: n messages of 128 KiB, about 8 MiB.
	r5Stage(t, c, rel, 1000, r5Rows(1, 1, "a"))
	if _, err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rows := make([]r5Row, n)
	for i := range rows {
		rows[i] = r5Row{id: i, v: strings.Repeat("z", size)}
	}
	r5Stage(t, c, rel, 3000, rows)
	if small := c.tx == nil && len(c.arena) <= smallFlushBytes && n <= smallFlush; small != (freezeAt > 0) {
		t.Fatalf("the flush of %d messages of %d bytes is small: %v; this case wants it %v", n, size, small, freezeAt > 0)
	}
	p.freezeAt.Store(freezeAt)
	p.throttle.Store(true)
	flushCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	flushed := make(chan error, 1)
	go func() {
		_, err := c.Flush(flushCtx)
		flushed <- err
	}()
	// Freeze once the fence holds the lease row.
	for freezeAt == 0 {
		select {
		case err := <-flushed:
			t.Fatalf("the flush ended before it could be frozen: %v", err)
		default:
		}
		tx, err := b.store.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, `SELECT 1 FROM leases WHERE name = 't' FOR UPDATE NOWAIT`)
		_ = tx.Rollback(ctx)
		if isLockTimeout(err) {
			p.frozen.Store(true)
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if got := r5Read(t, b.store.Pool); got.rows != 1 {
		t.Fatalf("frozen mid-pipeline, yet the outbox holds %d messages", got.rows)
	}
	for !p.frozen.Load() {
		select {
		case err := <-flushed:
			t.Fatalf("the flush ended before it could be frozen: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	// The successor campaigns as the leader package does, once a second.
	give := time.Until(leaseEnd) + late
	deadline := time.Now().Add(give)
	for {
		tok, ok, err := b.store.AcquireLease(ctx, "t", "successor", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			t.Logf("successor took the lease (token %d) %s after the term ended", tok, time.Since(leaseEnd).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			var state, wait string
			_ = b.store.Pool.QueryRow(ctx, `SELECT state, COALESCE(wait_event, '') FROM pg_stat_activity
				WHERE datname = current_database() AND query LIKE '%unnest%' ORDER BY backend_start LIMIT 1`).Scan(&state, &wait)
			t.Fatalf("the successor could not take the lease %s after the frozen leader's term ended: its small flush holds the lease row "+
				"(session state %q, wait %q), and no timeout ends it", time.Since(leaseEnd).Round(time.Second), state, wait)
		}
		time.Sleep(time.Second)
	}
}

// warm changes nothing: no claims row, no notification, no advisory lock
// or open transaction left on the connection, and the transaction-local
// settings of the claim lock statement do not stay on the session.
func TestR5WarmLeavesNoTrace(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDB(t)
	ctx := t.Context()
	if _, err := migrations.Up(ctx, url, "walhook"); err != nil {
		t.Fatal(err)
	}
	listener, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(context.WithoutCancel(ctx))
	if _, err := listener.Exec(ctx, `LISTEN walhook_walhook`); err != nil {
		t.Fatal(err)
	}
	store, err := Open(ctx, url, "walhook", 8)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	conns := make([]*pgxpool.Conn, 0, minConns)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range minConns + 2 {
		c, err := store.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		var pcm, sc string
		var locks, xacts int
		if err := c.QueryRow(ctx, `SELECT current_setting('plan_cache_mode'), current_setting('synchronous_commit'),
			(SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'),
			(SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid() AND backend_xid IS NOT NULL)`).Scan(&pcm, &sc, &locks, &xacts); err != nil {
			t.Fatal(err)
		}
		if pcm != "auto" || sc != "on" || locks != 0 || xacts != 0 || c.Conn().PgConn().TxStatus() != 'I' {
			t.Fatalf("a warmed connection: plan_cache_mode %s, synchronous_commit %s, %d advisory locks, %d xids, tx status %c",
				pcm, sc, locks, xacts, c.Conn().PgConn().TxStatus())
		}
	}
	var claims int
	if err := conns[0].QueryRow(ctx, `SELECT count(*) FROM claims`).Scan(&claims); err != nil || claims != 0 {
		t.Fatalf("claims after warm-up: %d, %v", claims, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if n, err := listener.WaitForNotification(wctx); err == nil {
		t.Fatalf("warm-up notified %s: %s", n.Channel, n.Payload)
	}
}

// Open before the schema exists (or at an older version), migrate after:
// the warmed connections then claim, ack, promote and flush on the new
// schema without error (nothing stale cached).
func TestR5WarmBeforeMigrations(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDB(t)
	ctx := t.Context()
	store, err := Open(ctx, url, "walhook", 8)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for range 50 {
		if store.pool.Stat().TotalConns() >= minConns {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := migrations.Up(ctx, url, "walhook"); err != nil {
		t.Fatal(err)
	}
	var sinkID int64
	if err := store.pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s', '{}') RETURNING id`).Scan(&sinkID); err != nil {
		t.Fatal(err)
	}
	b := &testBundle{store: &testStore{Store: store, Pool: store.pool}, sinkID: sinkID}
	c, rel := newTestCapture(t, b)
	conns := make([]*pgxpool.Conn, 0, minConns)
	for range minConns {
		conn, err := store.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	for i, conn := range conns {
		var cl claimed
		pb := &pgx.Batch{}
		pb.Queue(claimLockPlanSQL, sinkID)
		queueClaimSQL(pb, claimSQL, ClaimRequest{SinkID: sinkID, BatchSize: 10, MaxAckPending: 100, Lease: time.Minute}, &cl)
		pb.Queue(ackSQL, []int64{1})
		pb.Queue(promoteSQL, sinkID, []string{"x"})
		if err := conn.SendBatch(ctx, pb).Close(); err != nil {
			t.Fatalf("connection %d, warmed before the migrations: %v", i, err)
		}
	}
	for _, conn := range conns {
		conn.Release()
	}
	r5Stage(t, c, rel, 1000, r5Rows(3, 2, "a"))
	if _, err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	bs, err := store.ClaimBatches(ctx, ClaimRequest{SinkID: sinkID, BatchSize: 10, MaxAckPending: 100, Lease: time.Minute})
	if err != nil || len(bs) != 1 || len(bs[0].Messages) != 3 {
		t.Fatalf("claim after migrating: %d batches, %v; want one of 3 messages", len(bs), err)
	}
	if _, err := store.AckAll(ctx, sinkID, bs); err != nil {
		t.Fatal(err)
	}
}

// A connection the pool opens while some session holds a lock on the
// outbox (a migration of another walhook version, VACUUM FULL, an
// operator's LOCK TABLE) must not hang the statement that asked for it
// when that statement does not touch the outbox: a leader renewing its
// lease, here. warm parses the claim on every new connection, and the
// parse waits for the lock with no timeout.
func TestR5NewConnectionWhileOutboxLocked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	r5Lease(t, b, time.Hour)
	// Every open connection is busy (capture, claims, acks...).
	var held []*pgxpool.Conn
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	for range 100 {
		if st := b.store.Pool.Stat(); st.TotalConns() >= minConns && st.ConstructingConns() == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	held = b.store.Pool.AcquireAllIdle(ctx)
	if st := b.store.Pool.Stat(); st.TotalConns() >= st.MaxConns() || st.IdleConns() != 0 {
		t.Fatalf("pool: %d of %d open, %d idle", st.TotalConns(), st.MaxConns(), st.IdleConns())
	}
	newConns := b.store.Pool.Stat().NewConnsCount()
	var lockerPid int32
	locker, err := pgx.Connect(ctx, b.store.Pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(context.WithoutCancel(ctx))
	if err := locker.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&lockerPid); err != nil {
		t.Fatal(err)
	}
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE walhook.outbox IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	ok, err := b.store.RenewLease(rctx, "t", 7, time.Minute)
	took := time.Since(start)
	_ = tx.Rollback(context.WithoutCancel(ctx))
	if b.store.Pool.Stat().NewConnsCount() == newConns {
		t.Fatal("the renewal found an open connection: the test did not make the pool open one")
	}
	if err != nil || !ok {
		var pgErr *pgconn.PgError
		_ = errors.As(err, &pgErr)
		t.Fatalf("lease renewal on a new connection while the outbox is locked: ok %v, %v after %s; it waited for the pool's new "+
			"connection, whose warm-up waits for the outbox lock", ok, err, took.Round(time.Millisecond))
	}
}

// A small flush is one Bind message, all its payloads in one text[]
// parameter, and neither pgx nor Postgres takes a message over 1 GB. A
// source transaction of three rows with 380 MiB values (a field may hold
// up to 1 GB) is then a small flush that can never be written: the stream
// fails, resumes from the same position and fails again, for good. The
// COPY of a large flush ("copy", the control: the same rows spilled
// first) sends each row on its own and writes them. Each variant takes
// about 7 GB of memory and a minute or two: run with WALHOOK_R5_BIG=1.
func TestR5SmallFlushOverOneGigabyte(t *testing.T) {
	if os.Getenv("WALHOOK_R5_BIG") == "" {
		t.Skip("needs about 7 GB of memory: set WALHOOK_R5_BIG=1")
	}
	for _, path := range []string{"small", "copy"} {
		t.Run(path, func(t *testing.T) {
			if only := os.Getenv("WALHOOK_R5_BIG"); only != "1" && only != path {
				t.Skip()
			}
			r5FlushOverOneGigabyte(t, path == "copy")
		})
	}
}

func r5FlushOverOneGigabyte(t *testing.T, spill bool) {
	b := setup(t)
	ctx := t.Context()
	c, rel := newTestCapture(t, b)
	value := sink.AppendJSONString(nil, strings.Repeat("x", 380<<20))
	if err := c.Begin(ctx, 1000, time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		ch := &sink.Change{Rel: rel, Action: sink.Update, New: [][]byte{[]byte(fmt.Sprint(i)), value},
			CommitLSN: 1000, CommitIdx: i, CommitTime: time.Unix(1700000000, 0)}
		if err := c.Change(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	value = nil
	if err := c.Commit(ctx, 1000, 1001); err != nil {
		t.Fatal(err)
	}
	if spill {
		if err := c.spill(ctx); err != nil {
			t.Fatal(err)
		}
	}
	end, err := c.Flush(ctx)
	if err != nil || end != 1001 {
		t.Fatalf("flush of 3 messages of 380 MiB: %d, %v; want 1001 (as a COPY writes them)", end, err)
	}
	var n int
	if err := b.store.Pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("%d messages, %v", n, err)
	}
}

// Open on a schema one migration behind (00006), so warm caches the
// claim, ack and promote statements on it; then 00007 runs (as another
// process's migrate would) and every warmed connection claims, acks and
// promotes on the new schema without "cached plan must not change result
// type" or any other error.
func TestR5WarmThenMigrate(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDB(t)
	ctx := t.Context()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = "walhook"
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE SCHEMA walhook`); err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, os.DirFS("../migrations/sql"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 6); err != nil {
		t.Fatal(err)
	}
	store, err := Open(ctx, url, "walhook", 8)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var sinkID int64
	if err := store.pool.QueryRow(ctx, `INSERT INTO sinks (name, config) VALUES ('s', '{}') RETURNING id`).Scan(&sinkID); err != nil {
		t.Fatal(err)
	}
	conns := make([]*pgxpool.Conn, 0, minConns)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range minConns {
		c, err := store.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for i, c := range conns {
		var prepared int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%claims%'`).Scan(&prepared); err != nil {
			t.Fatal(err)
		}
		if prepared == 0 {
			t.Fatalf("connection %d: warm prepared nothing on the older schema", i)
		}
	}
	if _, err := migrations.Up(ctx, url, "walhook"); err != nil {
		t.Fatal(err)
	}
	for i, conn := range conns {
		if _, err := conn.Exec(ctx, `INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload) VALUES ($1, $2, 1, 0, '{}')`, sinkID, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		var cl claimed
		pb := &pgx.Batch{}
		pb.Queue(claimLockPlanSQL, sinkID)
		queueClaimSQL(pb, claimSQL, ClaimRequest{SinkID: sinkID, BatchSize: 10, MaxAckPending: 100, Lease: time.Minute}, &cl)
		if err := conn.SendBatch(ctx, pb).Close(); err != nil {
			t.Fatalf("connection %d, warmed before 00007: claim: %v", i, err)
		}
		if len(cl.batches) != 1 {
			t.Fatalf("connection %d: claimed %d batches", i, len(cl.batches))
		}
		var live []int64
		pb = &pgx.Batch{}
		pb.Queue(claimLockPlanSQL, sinkID)
		pb.Queue(ackSQL, []int64{cl.batches[0].ClaimID}).QueryRow(func(row pgx.Row) error { return row.Scan(&live) })
		pb.Queue(promoteSQL, sinkID, []string{fmt.Sprint(i)})
		if err := conn.SendBatch(ctx, pb).Close(); err != nil || len(live) != 1 {
			t.Fatalf("connection %d, warmed before 00007: ack: %v, %v", i, live, err)
		}
	}
}
