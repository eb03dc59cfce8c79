package integration

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
)

// Every value type of docs/reference.md#44-values arrives as documented there.
func TestValueTypes(t *testing.T) {
	b := setup(t, `
		CREATE TYPE mood AS ENUM ('sad', 'happy');
		CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
		CREATE TABLE t (
			id bigint PRIMARY KEY, i2 smallint, i4 integer, f4 real, f8 double precision,
			num numeric, num_nan numeric, f_inf double precision, ok boolean, txt text, vc varchar(10), ch char(3),
			u uuid, m mood, j json, jb jsonb, ia integer[], ta text[], ma mood[], nested integer[][],
			tstz timestamptz, ts timestamp, d date, tm time, by bytea, iv interval, inet_v inet,
			dom posint, nul text)`, "public.t")
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (
		1, -2, 2147483647, 1.5, 0.1, 12345678901234567890.000100, 'NaN', '-Infinity', true, 'he said "hi"
next', 'abc', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '{"a": [1, 2]}', '{"b": {"c": null}}',
		'{1,NULL,3}', '{"x,y","q\"z"}', '{sad,happy}', '{{1,2},{3,4}}',
		'2024-03-20 15:30:00.123456+02', '2024-03-20 15:30:00', '2024-03-20', '15:30:00', '\x0102ff', '1 day 02:00:00', '10.0.0.1/32',
		7, NULL)`)
	msgs := b.recv.waitCount(t, 1, 20*time.Second)
	got := string(msgs[0].Raw)
	var rec map[string]json.RawMessage
	var env struct {
		Record json.RawMessage `json:"record"`
	}
	if err := json.Unmarshal(msgs[0].Raw, &env); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(env.Record, &rec); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"id": `1`, "i2": `-2`, "i4": `2147483647`, "f4": `1.5`, "f8": `0.1`,
		"num": `12345678901234567890.000100`, "num_nan": `"NaN"`, "f_inf": `"-Infinity"`, "ok": `true`,
		"txt": `"he said \"hi\"\nnext"`, "vc": `"abc"`, "ch": `"ab "`, "u": `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`,
		"m": `"happy"`, "j": `{"a": [1, 2]}`, "jb": `{"b": {"c": null}}`, "ia": `[1,null,3]`, "ta": `["x,y","q\"z"]`,
		"ma": `["sad","happy"]`, "nested": `[[1,2],[3,4]]`,
		"tstz": `"2024-03-20T13:30:00.123456Z"`, "ts": `"2024-03-20T15:30:00"`, "d": `"2024-03-20"`, "tm": `"15:30:00"`,
		"by": `"AQL/"`, "iv": `"1 day 02:00:00"`, "inet_v": `"10.0.0.1"`, "dom": `7`, "nul": `null`,
	}
	for k, v := range want {
		if string(rec[k]) != v {
			t.Errorf("column %s = %s, want %s", k, rec[k], v)
		}
	}
	if len(rec) != len(want) {
		t.Errorf("record has %d columns, want %d: %s", len(rec), len(want), got)
	}
}

// Inserts, updates and deletes arrive in commit order with the documented
// shapes; a TRUNCATE is counted, not delivered.
func TestChangesInCommitOrder(t *testing.T) {
	b := setup(t, `CREATE TABLE orders (id int PRIMARY KEY, customer_id int, status text)`, "public.orders")
	b.start(t)
	b.exec(t, `INSERT INTO orders VALUES (1, 10, 'new'), (2, 20, 'new')`)
	b.exec(t, `UPDATE orders SET status = 'paid' WHERE id = 1`)
	b.exec(t, `DELETE FROM orders WHERE id = 2`)
	b.exec(t, `TRUNCATE orders`)
	b.exec(t, `INSERT INTO orders VALUES (3, 30, 'after truncate')`)
	msgs := b.recv.waitCount(t, 5, 20*time.Second)
	// Order is guaranteed per group (row); across rows, groups are
	// delivered in parallel.
	perRow := map[float64][]string{}
	byIdx := map[float64]map[string]message{}
	for _, m := range msgs {
		id := m.Record["id"].(float64)
		perRow[id] = append(perRow[id], m.Action)
		if byIdx[id] == nil {
			byIdx[id] = map[string]message{}
		}
		byIdx[id][m.Action] = m
	}
	want := map[float64]string{1: "insert,update", 2: "insert,delete", 3: "insert"}
	for id, w := range want {
		if got := strings.Join(perRow[id], ","); got != w {
			t.Errorf("row %v: got %s, want %s", id, got, w)
		}
	}
	if len(msgs) != 5 {
		t.Fatalf("got %d messages, want 5", len(msgs))
	}
	ins1, ins2, upd1, del2 := byIdx[1]["insert"], byIdx[2]["insert"], byIdx[1]["update"], byIdx[2]["delete"]
	msgs = []message{ins1, ins2, upd1, del2}
	// One transaction: same commit_lsn, commit_idx 0 and 1.
	if msgs[0].Metadata.CommitLSN != msgs[1].Metadata.CommitLSN || msgs[0].Metadata.CommitIdx != 0 || msgs[1].Metadata.CommitIdx != 1 {
		t.Errorf("commit_lsn/idx of one transaction: %+v %+v", msgs[0].Metadata, msgs[1].Metadata)
	}
	if !(upd1.Metadata.CommitLSN > ins1.Metadata.CommitLSN && del2.Metadata.CommitLSN > upd1.Metadata.CommitLSN) {
		t.Errorf("commit_lsn does not follow commit order: %d %d %d", ins1.Metadata.CommitLSN, upd1.Metadata.CommitLSN, del2.Metadata.CommitLSN)
	}
	if string(msgs[0].Changes) != "null" || string(msgs[2].Changes) != "{}" {
		t.Errorf("changes: insert %s, update without FULL %s", msgs[0].Changes, msgs[2].Changes)
	}
	if len(msgs[3].Record) != 1 {
		t.Errorf("delete without FULL should carry the key only: %v", msgs[3].Record)
	}
	if msgs[0].Metadata.Consumer.Name != "s" || msgs[0].Metadata.Consumer.ID == "" || msgs[0].Metadata.IdempotencyKey == "" {
		t.Errorf("metadata: %+v", msgs[0].Metadata)
	}
	var n int
	if err := b.db.QueryRow(context.Background(), `SELECT count FROM walhook.truncates WHERE table_name = 'public.orders'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("truncate count = %d, %v", n, err)
	}
	// The insert after the TRUNCATE was delivered: had the TRUNCATE been
	// queued, it would be in the outbox or delivered by now.
	b.waitDrained(t, 20*time.Second)
	if c := b.recv.count(); c != 5 {
		t.Errorf("delivered %d messages, want 5 (TRUNCATE must not be delivered)", c)
	}
}

// With REPLICA IDENTITY FULL, updates carry the previous values of the
// changed columns and deletes carry the whole old row.
func TestReplicaIdentityFull(t *testing.T) {
	b := setup(t, `CREATE TABLE orders (id int PRIMARY KEY, status text, note text);
		ALTER TABLE orders REPLICA IDENTITY FULL`, "public.orders")
	b.start(t)
	b.exec(t, `INSERT INTO orders VALUES (1, 'new', 'x')`)
	b.exec(t, `UPDATE orders SET status = 'paid' WHERE id = 1`)
	b.exec(t, `DELETE FROM orders WHERE id = 1`)
	msgs := b.recv.waitCount(t, 3, 20*time.Second)
	if string(msgs[1].Changes) != `{"status":"new"}` {
		t.Errorf("update changes = %s", msgs[1].Changes)
	}
	if msgs[2].Record["note"] != "x" || msgs[2].Record["status"] != "paid" {
		t.Errorf("delete record = %v", msgs[2].Record)
	}
}

// An update that leaves a TOASTed column alone: filled from the old row
// with FULL, "__unchanged_toast" without.
func TestUnchangedToast(t *testing.T) {
	b := setup(t, `CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
		ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
		CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int);
		ALTER TABLE docs_full ALTER COLUMN body SET STORAGE EXTERNAL;
		ALTER TABLE docs_full REPLICA IDENTITY FULL`, "public.docs", "public.docs_full")
	b.start(t)
	big := strings.Repeat("0123456789", 1000)
	b.exec(t, `INSERT INTO docs VALUES (1, $1, 0)`, big)
	b.exec(t, `INSERT INTO docs_full VALUES (1, $1, 0)`, big)
	b.exec(t, `UPDATE docs SET n = 1`)
	b.exec(t, `UPDATE docs_full SET n = 1`)
	msgs := b.recv.waitCount(t, 4, 20*time.Second)
	for _, m := range msgs {
		if m.Action != "update" {
			continue
		}
		switch m.Metadata.TableName {
		case "docs":
			if m.Record["body"] != "__unchanged_toast" {
				t.Errorf("docs body = %.20v…, want __unchanged_toast", m.Record["body"])
			}
		case "docs_full":
			if m.Record["body"] != big {
				t.Errorf("docs_full body not filled from the old row: %.20v…", m.Record["body"])
			}
			if string(m.Changes) != `{"n":0}` {
				t.Errorf("docs_full changes = %s", m.Changes)
			}
		}
	}
}

// ALTER TABLE mid-stream: new columns appear, dropped ones disappear,
// retyped ones render as their new type.
func TestAlterTableMidStream(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, a text)`, "public.t")
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (1, 'a')`)
	b.exec(t, `ALTER TABLE t ADD COLUMN b int DEFAULT 5`)
	b.exec(t, `INSERT INTO t VALUES (2, 'a', 6)`)
	b.exec(t, `ALTER TABLE t DROP COLUMN a`)
	b.exec(t, `INSERT INTO t VALUES (3, 7)`)
	b.exec(t, `ALTER TABLE t ALTER COLUMN b TYPE text USING b::text`)
	b.exec(t, `INSERT INTO t VALUES (4, '8')`)
	msgs := b.recv.waitCount(t, 4, 20*time.Second)
	// Rows are separate groups, delivered in parallel: compare by id.
	got := map[string]bool{}
	for _, m := range msgs {
		got[jsonString(m.Record)] = true
	}
	for _, w := range []string{`{"a":"a","id":1}`, `{"a":"a","b":6,"id":2}`, `{"b":7,"id":3}`, `{"b":"8","id":4}`} {
		if !got[w] {
			t.Errorf("no message with record %s (got %v)", w, got)
		}
	}
}

// A rolled-back transaction never reaches the receiver.
func TestRollbackNeverDelivered(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.start(t)
	ctx := context.Background()
	tx, err := b.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO t SELECT generate_series(1, 100)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `INSERT INTO t VALUES (1000)`)
	b.recv.waitCount(t, 1, 20*time.Second)
	b.waitDrained(t, 20*time.Second) // the marker 1000 committed after the rollback
	msgs := b.recv.acked()
	if len(msgs) != 1 || msgs[0].Record["id"] != float64(1000) {
		t.Fatalf("delivered %v, want only id 1000", msgs)
	}
}

// Filters, actions and the row shape decide what a sink gets.
func TestFiltersActionsAndRowShape(t *testing.T) {
	b := setup(t, `CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)`, "public.orders")
	b.cfg.Sinks[0].Filters = nil
	b.cfg.Sinks = append(b.cfg.Sinks, b.cfg.Sinks[0])
	b.cfg.Sinks[0].Filters = []config.Filter{{Column: "status", Op: "=", Value: "shipped"}, {Column: "total", Op: ">=", Value: 10}}
	b.cfg.Sinks[0].Actions = []string{"insert", "update"}
	b.cfg.Sinks[1].Name, b.cfg.Sinks[1].Path, b.cfg.Sinks[1].Message = "rows", "/rows", "row"
	b.start(t)
	b.exec(t, `INSERT INTO orders VALUES (1, 'shipped', 5), (2, 'shipped', 50), (3, 'new', 50)`)
	b.exec(t, `DELETE FROM orders WHERE id = 2`)
	waitFor(t, 20*time.Second, "4 row messages", func() bool { return b.recv.count() >= 5 })
	b.waitDrained(t, 20*time.Second) // nothing else was queued for either sink
	var filtered, rows []message
	for _, rq := range b.recv.ackedRequests() {
		if rq.Path == "/hook" {
			filtered = append(filtered, rq.Data...)
		} else {
			rows = append(rows, rq.Data...)
		}
	}
	if len(filtered) != 1 || filtered[0].Record["id"] != float64(2) {
		t.Errorf("filtered sink got %v, want only id 2 (and no delete)", filtered)
	}
	deleted := 0
	for _, r := range rows {
		if r.Metadata.Deleted {
			deleted++
			if r.Record["id"] != float64(2) || len(r.Record) != 1 {
				t.Errorf("deleted row message: %+v", r.Record)
			}
		}
		if r.Action != "" || r.Changes != nil {
			t.Errorf("row shape has action/changes: %+v", r)
		}
	}
	if len(rows) != 4 || deleted != 1 {
		t.Errorf("row sink got %d messages, %d deleted: %+v", len(rows), deleted, rows)
	}
}

// Changes of a partitioned table arrive under the root's name.
func TestPartitionedTable(t *testing.T) {
	b := setup(t, `CREATE TABLE events (id int, day date, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
		CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
		CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')`, "public.events")
	b.start(t)
	b.exec(t, `INSERT INTO events VALUES (1, '2024-05-01'), (2, '2025-05-01')`)
	msgs := b.recv.waitCount(t, 2, 20*time.Second)
	for _, m := range msgs {
		if m.Metadata.TableName != "events" {
			t.Errorf("table_name = %s, want the root events", m.Metadata.TableName)
		}
	}
}
