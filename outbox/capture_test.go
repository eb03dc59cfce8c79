package outbox

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/sink"
)

// A flush writes its messages and the stream position together, or
// neither, whether it is small (one pipeline) or large (COPY into a
// transaction); a leader whose term is over writes nothing, and one whose
// term is live writes everything, in commit order, with the head flags of
// queueRows.
func TestCaptureFlushWritesAllOrNothing(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, smallFlush, smallFlush + 1} {
		for _, live := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d rows, live term %v", n, live), func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				ctx := t.Context()
				c, rel := newTestCapture(t, b)
				until := "clock_timestamp() + interval '1 minute'"
				if !live {
					until = "clock_timestamp() - interval '1 second'"
				}
				if _, err := b.store.Pool.Exec(ctx, `INSERT INTO leases (name, holder, token, until) VALUES ('t', 'me', 7, `+until+`)`); err != nil {
					t.Fatal(err)
				}
				c.SetLease("t", 7)
				const lsn = 1000
				if err := c.Begin(ctx, lsn, time.Now()); err != nil {
					t.Fatal(err)
				}
				ids := map[int]bool{}
				for i := range n {
					// Every third change updates row 0 again: a group of several.
					id := i
					if i%3 == 2 {
						id = 0
					}
					ids[id] = true
					ch := &sink.Change{Rel: rel, Action: sink.Update, New: [][]byte{[]byte(fmt.Sprint(id)), []byte(fmt.Sprintf(`"v%d"`, i))}, CommitLSN: lsn, CommitIdx: i}
					if err := c.Change(ctx, ch); err != nil {
						t.Fatal(err)
					}
				}
				if err := c.Commit(ctx, lsn, lsn+1); err != nil {
					t.Fatal(err)
				}
				end, err := c.Flush(ctx)
				var rows, heads int
				var pos *int64
				if err := b.store.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE head IS NOT FALSE),
					(SELECT end_lsn FROM replication_state WHERE slot = 'slot') FROM outbox`).Scan(&rows, &heads, &pos); err != nil {
					t.Fatal(err)
				}
				if !live {
					if !errors.Is(err, ErrLostLease) || end != 0 {
						t.Fatalf("flush of a lost term: %d, %v; want ErrLostLease", end, err)
					}
					if rows != 0 || pos != nil {
						t.Fatalf("a lost term wrote %d messages and position %v", rows, pos)
					}
					return
				}
				if err != nil || end != lsn+1 {
					t.Fatalf("flush: %d, %v; want %d", end, err, lsn+1)
				}
				groups := len(ids)
				if rows != n || heads != groups || pos == nil || *pos != lsn+1 {
					t.Fatalf("flush wrote %d messages (%d heads) and position %v; want %d (%d heads) and %d", rows, heads, pos, n, groups, lsn+1)
				}
				r5CheckOrder(t, b) // in commit order within a group
			})
		}
	}
}

// newTestCapture is a capture for slot "slot" whose router sends table
// public.t (rel: id int key, v text) to the bundle's sink, at its position.
func newTestCapture(t *testing.T, b *testBundle) (*Capture, *sink.Relation) {
	t.Helper()
	var router atomic.Pointer[sink.Router]
	router.Store(sink.NewRouter([]*sink.Sink{{ID: b.sinkID, UUID: "u", Name: "s", Config: config.Sink{Name: "s", Tables: []string{"public.t"}}}}))
	c := NewCapture(b.store.Store, "slot", &router, zerolog.Nop())
	if _, _, err := c.Position(t.Context()); err != nil {
		t.Fatal(err)
	}
	return c, &sink.Relation{Schema: "public", Table: "t", Columns: []sink.Column{{Name: "id", TypeOID: 23, Key: true}, {Name: "v", TypeOID: 25}}}
}
