package pgtest_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func connect(t *testing.T, u string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), u)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func dbOf(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(p.Path, "/")
}

func TestPGNewDBIsolated(t *testing.T) {
	t.Parallel()
	a, b := pgtest.NewDB(t), pgtest.NewDB(t)
	if dbOf(t, a) == dbOf(t, b) || !strings.HasPrefix(dbOf(t, a), "wt_testpgnewdbisolated_") {
		t.Fatalf("names: %s, %s", dbOf(t, a), dbOf(t, b))
	}
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(t.Context(), `CREATE TABLE only_in_a (id int)`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := cb.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("table leaked across databases: %d, %v", n, err)
	}
	var walLevel string
	if err := ca.QueryRow(t.Context(), `SHOW wal_level`).Scan(&walLevel); err != nil || walLevel != "logical" {
		t.Errorf("wal_level %q, %v", walLevel, err)
	}
}

func TestPGAdminURL(t *testing.T) {
	t.Parallel()
	var one int
	if err := connect(t, pgtest.AdminURL(t)).QueryRow(t.Context(), `SELECT 1`).Scan(&one); err != nil || one != 1 {
		t.Fatalf("admin: %d, %v", one, err)
	}
}

// The database of a test that leaves an inactive slot and a streaming
// replication connection behind is still dropped.
func TestPGNewDBCleanupDropsSlots(t *testing.T) {
	t.Parallel()
	var name string
	var repl *pgconn.PgConn
	t.Run("leaves slots", func(t *testing.T) {
		u := pgtest.NewDB(t)
		name = dbOf(t, u)
		ctx := t.Context()
		conn := connect(t, u)
		if _, err := conn.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR ALL TABLES`); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot('idle', 'pgoutput')`); err != nil {
			t.Fatal(err)
		}
		var err error
		repl, err = pgconn.Connect(context.Background(), u+"&replication=database")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pglogrepl.CreateReplicationSlot(ctx, repl, "streaming", "pgoutput", pglogrepl.CreateReplicationSlotOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := pglogrepl.StartReplication(ctx, repl, "streaming", 0, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names 'p'"},
		}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			var active bool
			if err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = 'streaming'`).Scan(&active); err != nil {
				t.Fatal(err)
			}
			if active {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("slot never became active")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	if repl != nil {
		defer repl.Close(context.Background())
	}

	admin := connect(t, pgtest.AdminURL(t))
	var dbs, slots int
	err := admin.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM pg_database WHERE datname = $1),
		(SELECT count(*) FROM pg_replication_slots WHERE database = $1)`, name).Scan(&dbs, &slots)
	if err != nil {
		t.Fatal(err)
	}
	if dbs != 0 || slots != 0 {
		t.Errorf("after cleanup: %d database(s), %d slot(s) named after %s", dbs, slots, name)
	}
}

// Not parallel: it restarts the server every test of the package shares.
func TestPGClusterRestart(t *testing.T) {
	c := pgtest.Cluster(t)
	u := pgtest.NewDB(t)
	ctx := t.Context()
	conn := connect(t, u)
	if _, err := conn.Exec(ctx, `CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')`); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := connect(t, u).QueryRow(ctx, `SELECT v FROM t`).Scan(&v); err != nil || v != "kept" {
		t.Fatalf("after restart: %q, %v", v, err)
	}
}
