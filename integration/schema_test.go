package integration

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/backfill"
	"github.com/walhook/walhook/replication"
)

// Schema changes while walhook runs: tables created, re-created, renamed
// into place or named before they exist are streamed within seconds, with
// no restart.

// published reports whether the publication streams table ("schema.name")
// now, by name or with its whole schema.
func (b *testBundle) published(t testing.TB, table string) bool {
	t.Helper()
	var ok bool
	err := b.db.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_publication_tables
		WHERE pubname = 'walhook' AND schemaname || '.' || tablename = $1)`, table).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// schemaPublished reports whether the publication takes schema whole
// (never before Postgres 15, which has no such publications).
func (b *testBundle) schemaPublished(t testing.TB, schema string) bool {
	t.Helper()
	var ok bool
	if err := b.db.QueryRow(context.Background(), `SELECT to_regclass('pg_catalog.pg_publication_namespace') IS NOT NULL`).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	if !ok {
		return false
	}
	err := b.db.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_publication p
		JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid JOIN pg_namespace n ON n.oid = pn.pnnspid
		WHERE p.pubname = 'walhook' AND n.nspname = $1)`, schema).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// waitRecord waits for the delivery of the row with id of table and
// returns its message.
func (b *testBundle) waitRecord(t testing.TB, table string, id int) message {
	t.Helper()
	var found message
	waitFor(t, 20*time.Second, fmt.Sprintf("delivery of %s id %d", table, id), func() bool {
		for _, m := range b.recv.acked() {
			if m.Metadata.TableName == table && m.Record["id"] == float64(id) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

// wholeSchemas reports whether this server lets walhook publish schemas
// whole; where it cannot, a new table is published on the next tick and a
// test must wait for that before writing to it.
func (b *testBundle) wholeSchemas(t testing.TB) bool {
	t.Helper()
	ok, err := replication.PublishesSchemas(context.Background(), b.db)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// A table created under a "public.*" sink while walhook runs is streamed
// from its first row: the schema is published whole, so the insert
// committed right after CREATE TABLE is delivered. The same holds for a
// table dropped and created again with another shape.
func TestNewTableUnderSchemaPattern(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.*")
	b.start(t)
	whole := b.wholeSchemas(t)
	b.exec(t, `CREATE TABLE fresh (id int PRIMARY KEY, v text)`)
	if !whole {
		waitFor(t, 20*time.Second, "public.fresh in the publication", func() bool { return b.published(t, "public.fresh") })
	}
	b.exec(t, `INSERT INTO fresh VALUES (1, 'a')`)
	if m := b.waitRecord(t, "fresh", 1); jsonString(m.Record) != `{"id":1,"v":"a"}` {
		t.Errorf("record %s", jsonString(m.Record))
	}
	b.exec(t, `DROP TABLE fresh`)
	b.exec(t, `CREATE TABLE fresh (id int PRIMARY KEY, w int)`)
	if !whole {
		waitFor(t, 20*time.Second, "public.fresh back in the publication", func() bool { return b.published(t, "public.fresh") })
	}
	b.exec(t, `INSERT INTO fresh VALUES (2, 7)`)
	if m := b.waitRecord(t, "fresh", 2); jsonString(m.Record) != `{"id":2,"w":7}` {
		t.Errorf("record after re-creation %s", jsonString(m.Record))
	}
}

// A table without a primary key created under "public.*" is not
// captured, and it must not stay published: Postgres refuses UPDATE and
// DELETE on a published table without a replica identity. walhook then
// publishes the schema's other tables one by one (a new one on the next
// tick), and the schema whole again once the table is gone.
func TestTableWithoutKeyUnderSchemaPattern(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.*")
	e := startAPI(t, b)
	// Where schemas cannot be published whole, tables are published by
	// name throughout: the same checks hold, bar the schema's.
	whole := b.wholeSchemas(t)
	if whole {
		waitFor(t, 20*time.Second, "schema public published whole", func() bool { return b.schemaPublished(t, "public") })
	}
	b.exec(t, `CREATE TABLE scratch (a int)`)
	waitFor(t, 20*time.Second, "schema public published table by table", func() bool {
		return !b.schemaPublished(t, "public") && b.published(t, "public.t")
	})
	b.exec(t, `UPDATE scratch SET a = 1`)
	sk := decodeAs[struct {
		Warnings []string `json:"warnings"`
	}](t, e.must(t, 200, "GET", "/api/sinks/s", nil))
	if len(sk.Warnings) != 1 || !strings.Contains(sk.Warnings[0], "table public.scratch has no primary key") {
		t.Errorf("warnings %q, want one about public.scratch", sk.Warnings)
	}
	b.exec(t, `CREATE TABLE later (id int PRIMARY KEY)`)
	waitFor(t, 20*time.Second, "public.later in the publication", func() bool { return b.published(t, "public.later") })
	b.exec(t, `INSERT INTO later VALUES (1)`)
	b.waitRecord(t, "later", 1)

	b.exec(t, `DROP TABLE scratch`)
	if !whole {
		return
	}
	waitFor(t, 20*time.Second, "schema public published whole again", func() bool { return b.schemaPublished(t, "public") })
	b.exec(t, `CREATE TABLE fresh (id int PRIMARY KEY)`)
	b.exec(t, `INSERT INTO fresh VALUES (1)`)
	b.waitRecord(t, "fresh", 1)
}

// A table a sink names, dropped and created again or swapped in by a
// rename, is published again within seconds and streamed with its new
// columns; the table renamed away is no longer published.
func TestNamedTableRecreatedOrSwapped(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	b.start(t)
	b.exec(t, `INSERT INTO t VALUES (1, 1)`)
	b.waitRecord(t, "t", 1)

	b.exec(t, `DROP TABLE t`)
	b.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v int, extra text)`)
	waitFor(t, 20*time.Second, "public.t back in the publication", func() bool { return b.published(t, "public.t") })
	b.exec(t, `INSERT INTO t VALUES (2, 2, 'x')`)
	if m := b.waitRecord(t, "t", 2); jsonString(m.Record) != `{"extra":"x","id":2,"v":2}` {
		t.Errorf("record after re-creation %s", jsonString(m.Record))
	}

	b.exec(t, `BEGIN; CREATE TABLE t_new (id int PRIMARY KEY, w text);
		ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t; COMMIT`)
	waitFor(t, 20*time.Second, "the new public.t published and public.t_old not", func() bool {
		return b.published(t, "public.t") && !b.published(t, "public.t_old")
	})
	b.exec(t, `INSERT INTO t VALUES (3, 'y')`)
	if m := b.waitRecord(t, "t", 3); jsonString(m.Record) != `{"id":3,"w":"y"}` {
		t.Errorf("record after the swap %s", jsonString(m.Record))
	}
	// The old table's rows are no sink's business any more: a row of the
	// new table committed after it proves the stream went past it.
	b.exec(t, `INSERT INTO t_old VALUES (4, 4, 'z')`)
	b.exec(t, `INSERT INTO t VALUES (5, 'marker')`)
	b.waitRecord(t, "t", 5)
	for _, m := range b.recv.acked() {
		if m.Metadata.TableName == "t_old" || m.Record["id"] == float64(4) {
			t.Errorf("delivered a change of the renamed-away table: %s", m.Raw)
		}
	}
}

// A sink naming a table that does not exist yet: walhook starts, the API
// and `walhook sink info` show a warning, a sink naming another missing
// table is accepted through the API, and each table is streamed once it
// is created, the warning gone.
func TestSinkNamingMissingTable(t *testing.T) {
	b := apiBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t", "public.later")
	c := &cliEnv{apiEnv: startAPI(t, b), bin: walhookBin(t)}
	type sinkWarnings struct {
		Warnings []string `json:"warnings"`
	}
	const want = "table public.later does not exist (yet); it is captured once it is created"
	if w := decodeAs[sinkWarnings](t, c.must(t, 200, "GET", "/api/sinks/s", nil)).Warnings; !slices.Equal(w, []string{want}) {
		t.Errorf("GET sink: warnings %q, want %q", w, want)
	}
	list := decodeAs[struct {
		Data []sinkWarnings `json:"data"`
	}](t, c.must(t, 200, "GET", "/api/sinks", nil))
	if len(list.Data) != 1 || !slices.Equal(list.Data[0].Warnings, []string{want}) {
		t.Errorf("GET sinks: %+v", list.Data)
	}
	if out := c.ok(t, "sink", "info", "s"); !strings.Contains(out, "warning:          "+want+"\n") {
		t.Errorf("sink info does not show the warning:\n%s", out)
	}
	// start: beginning backfills the tables that exist and skips the
	// missing one; a backfill asked for the missing table by name is
	// refused.
	b.exec(t, `INSERT INTO t VALUES (10)`)
	b.waitRecord(t, "t", 10)
	created := decodeAs[sinkWarnings](t, c.must(t, 201, "POST", "/api/sinks",
		`{"name": "x", "endpoint": "recv", "path": "/x", "tables": ["public.t", "public.other"], "start": "beginning"}`))
	if len(created.Warnings) != 1 || !strings.Contains(created.Warnings[0], "table public.other does not exist (yet)") {
		t.Errorf("POST sink: warnings %q", created.Warnings)
	}
	waitFor(t, 30*time.Second, "sink x's backfill of public.t", func() bool {
		for _, m := range b.recv.acked() {
			if m.Action == "read" && m.Metadata.Consumer.Name == "x" && m.Record["id"] == float64(10) {
				return true
			}
		}
		return false
	})
	asked := decodeAs[backfill.Backfill](t, c.must(t, 201, "POST", "/api/sinks/x/backfills", `{"tables": ["public.other"]}`))
	st := stateStore(t, b.url)
	if bf := waitBackfill(t, st, "x", asked.ID, 30*time.Second); bf.State != backfill.Failed || !strings.Contains(bf.Error, "table public.other does not exist") {
		t.Errorf("backfill of the missing table: %+v", bf)
	}

	b.exec(t, `CREATE TABLE later (id int PRIMARY KEY)`)
	b.exec(t, `CREATE TABLE other (id int PRIMARY KEY)`)
	waitFor(t, 20*time.Second, "the new tables in the publication", func() bool {
		return b.published(t, "public.later") && b.published(t, "public.other")
	})
	b.exec(t, `INSERT INTO later VALUES (1)`)
	b.exec(t, `INSERT INTO other VALUES (2)`)
	b.waitRecord(t, "later", 1)
	m := b.waitRecord(t, "other", 2)
	if m.Metadata.Consumer.Name != "x" {
		t.Errorf("public.other delivered for sink %q, want x", m.Metadata.Consumer.Name)
	}
	for _, name := range []string{"s", "x"} {
		if w := decodeAs[sinkWarnings](t, c.must(t, 200, "GET", "/api/sinks/"+name, nil)).Warnings; len(w) != 0 {
			t.Errorf("sink %s: warnings %q after the table was created", name, w)
		}
	}
	if out := c.ok(t, "sink", "info", "s"); strings.Contains(out, "warning:") {
		t.Errorf("sink info still warns:\n%s", out)
	}
}

// Without the right to publish schemas whole (a role with REPLICATION but
// not superuser), a table created under "public.*" is published by name
// on the next tick of the leader and streamed from then on.
func TestNewTableUnderSchemaPatternByName(t *testing.T) {
	b := setup(t, `CREATE ROLE tick_app LOGIN REPLICATION;
		DO $$BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO tick_app', current_database()); END$$;
		CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO tick_app`, "public.*")
	t.Cleanup(func() {
		// Roles are cluster-wide: drop it once its database is gone.
		if _, err := b.db.Exec(context.Background(), `DROP OWNED BY tick_app; DROP ROLE IF EXISTS tick_app`); err != nil {
			t.Errorf("drop role tick_app: %v", err)
		}
	})
	b.cfg.State.URL = b.url
	b.cfg.Database.URL = strings.Replace(b.url, "postgres@", "tick_app@", 1)
	b.start(t)
	if b.schemaPublished(t, "public") {
		t.Fatal("schema public published whole by a role that may not")
	}
	b.exec(t, `CREATE TABLE fresh (id int PRIMARY KEY); ALTER TABLE fresh OWNER TO tick_app`)
	waitFor(t, 20*time.Second, "public.fresh in the publication", func() bool { return b.published(t, "public.fresh") })
	b.exec(t, `INSERT INTO fresh VALUES (1)`)
	b.waitRecord(t, "fresh", 1)
}
