package outbox

import (
	"fmt"
	"testing"
)

// TestR7bGroupWindowAfterDemote pins the states where reading a group's
// window per chosen head, in a lateral after demote's UPDATE of the same
// statement, could differ from reading it once per candidate: a head that
// demote clears in the same statement, a group whose first message failed,
// several candidates of one group (a retry among them) under a share of
// one message, a busy group and a group behind an unready first message.
// claimSQL must do what oldClaimHeadsJoinSQL does, under custom and
// generic plans.
func TestR7bGroupWindowAfterDemote(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	generic := r7Generic(t, b, 1)
	msg := func(g string, lsn, count int, ready string, failed bool) int64 {
		t.Helper()
		f := "NULL"
		if failed {
			f = "now()"
		}
		var id int64
		if err := b.store.Pool.QueryRow(ctx, fmt.Sprintf(`INSERT INTO outbox (sink_id, group_key, commit_lsn, commit_idx, payload, deliver_count, head, ready_at, failed_at)
			VALUES ($1, $2, $3, 0, '{}', $4, NULL, now() + $5::interval, %s) RETURNING id`, f), b.sinkID, g, lsn, count, ready).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	fillers := func(n int) {
		for i := range n {
			msg(fmt.Sprintf("z%02d", i), 1, 0, "-1 minute", false)
		}
	}
	r7FixedStates(t, b, generic, true, []r7Fixed{
		{"the head is demoted in the same statement, behind a failed first message", ClaimRequest{BatchSize: 5, Batches: 1, MaxAckPending: 10}, func() string {
			msg("a", 1, 0, "-4 hours", true)
			m2 := msg("a", 2, 0, "-1 hour", false)
			m3 := msg("a", 3, 0, "-3 hours", false) // the head: first by ready_at, not its group's first
			return fmt.Sprintf("demoted 1; batch %d/a/0 %d/a/0;", m2, m3)
		}},
		{"several candidates of a group, a retry among them, a share of one", ClaimRequest{BatchSize: 2, Batches: 1, MaxAckPending: 10}, func() string {
			msg("a", 1, 0, "-3 hours", false)
			msg("a", 2, 1, "-4 hours", false)
			msg("a", 3, 0, "-2 hours", false)
			msg("r", 1, 1, "-1 minute", false) // both legs of cand full: a share of one
			fillers(6)
			return ""
		}},
		{"a retry head whose window ends before it", ClaimRequest{BatchSize: 3, Batches: 2, MaxAckPending: 3}, func() string {
			msg("a", 1, 0, "-3 hours", true)
			msg("a", 2, 0, "-2 hours", false)
			msg("a", 3, 0, "-2 hours", false)
			msg("a", 4, 2, "-5 hours", false)
			fillers(9)
			return ""
		}},
		{"a busy group and a group behind an unready first message", ClaimRequest{BatchSize: 2, Batches: 2, MaxAckPending: 20}, func() string {
			a1 := msg("a", 1, 0, "-3 hours", false)
			msg("a", 2, 0, "-2 hours", false)
			msg("a", 3, 1, "-2 hours", false)
			msg("b", 1, 0, "1 hour", false)
			msg("b", 2, 0, "-2 hours", false)
			msg("b", 3, 1, "-6 hours", false)
			msg("c", 1, 0, "-1 hour", true)
			msg("c", 2, 0, "-1 hour", false)
			if _, err := b.store.Pool.Exec(ctx, `INSERT INTO claims (sink_id, worker, until, fresh, ids, groups)
				VALUES ($1, 'x', now() + interval '1 hour', 1, $2, '{a}')`, b.sinkID, []int64{a1}); err != nil {
				t.Fatal(err)
			}
			return ""
		}},
	})
}
