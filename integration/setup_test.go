package integration

import (
	"context"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/pgcluster"
	"github.com/walhook/walhook/service"
)

// Processes starting together migrate one after the other.
func TestConcurrentMigrations(t *testing.T) {
	url := pgtest.NewDB(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	applied := make([]int, 4)
	for i := range errs {
		wg.Go(func() { applied[i], errs[i] = migrations.Up(context.Background(), url, "walhook") })
	}
	wg.Wait()
	total := 0
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migration %d: %v", i, err)
		}
		total += applied[i]
	}
	n, err := migrations.Up(context.Background(), url, "walhook")
	if err != nil || n != 0 {
		t.Fatalf("re-run applied %d, %v", n, err)
	}
	if total == 0 {
		t.Fatal("no migration applied")
	}
}

// Start-up problems are reported as one clear error naming the thing.
func TestStartupErrors(t *testing.T) {
	ctx := context.Background()
	log := zerolog.Nop()
	t.Run("missing table is no error", func(t *testing.T) {
		// It is a warning (TestSinkNamingMissingTable): the table is
		// captured once it is created.
		b := setup(t, ``, "public.nope")
		s, err := service.New(ctx, b.cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
	t.Run("no primary key", func(t *testing.T) {
		b := setup(t, `CREATE TABLE nopk (a int)`, "public.nopk")
		_, err := service.New(ctx, b.cfg, log)
		wantErr(t, err, "table public.nopk has no primary key")
	})
	t.Run("no primary key but group_by", func(t *testing.T) {
		b := setup(t, `CREATE TABLE nopk (a int)`, "public.nopk")
		b.cfg.Sinks[0].GroupBy = map[string][]string{"public.nopk": {"a"}}
		s, err := service.New(ctx, b.cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
	t.Run("role without REPLICATION", func(t *testing.T) {
		b := setup(t, `CREATE ROLE plain LOGIN`, "public.t")
		b.cfg.Database.URL = strings.Replace(b.url, "postgres@", "plain@", 1)
		_, err := service.New(ctx, b.cfg, log)
		wantErr(t, err, `role "plain" lacks the REPLICATION attribute`)
	})
	t.Run("wal_level replica", func(t *testing.T) {
		if _, err := pgcluster.FindBinaries(ctx, ""); err != nil {
			skipUnlessCI(t, "needs local Postgres binaries: %v", err)
		}
		c, err := pgcluster.Start(ctx, pgcluster.Options{Fast: true, Settings: map[string]string{"wal_level": "replica"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Stop(context.Background())
		b := setup(t, ``, "public.t")
		b.cfg.Database.URL = c.URL("postgres")
		b.cfg.State.URL = c.URL("postgres")
		_, err = service.New(ctx, b.cfg, log)
		wantErr(t, err, `wal_level is "replica", walhook needs "logical"`)
	})
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want one containing %q", err, want)
	}
}

// walhook's own tables are never published, and the slot advances on an
// idle database (changes of unpublished tables only), so WAL is not kept
// without need.
func TestPublicationAndIdleSlotAdvance(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)`, "public.t")
	b.start(t)
	ctx := context.Background()
	var published []string
	rows, err := b.db.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'walhook'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		published = append(published, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(published, ",") != "public.t" {
		t.Fatalf("publication has %v, want exactly public.t", published)
	}
	b.exec(t, `INSERT INTO other SELECT generate_series(1, 1000)`)
	var target string
	mustScan(t, b.db.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`), &target)
	waitFor(t, 30*time.Second, "the slot to confirm past unpublished changes", func() bool {
		var ok bool
		mustScan(t, b.db.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = 'walhook'`, target), &ok)
		return ok
	})
}

// A Postgres restart mid-stream loses nothing: walhook reconnects and
// delivers every committed change.
func TestPostgresRestart(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	cluster := pgtest.Cluster(t)
	b.start(t)
	b.exec(t, `INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g`)
	b.recv.waitCount(t, 100, 20*time.Second)
	if err := cluster.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	db, err := pgxpool.New(context.Background(), b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	waitFor(t, 30*time.Second, "Postgres back", func() bool {
		_, err := db.Exec(context.Background(), `INSERT INTO t SELECT g, 0 FROM generate_series(101, 200) g`)
		return err == nil
	})
	// Batches in flight at the restart come again (their claims died with
	// the sessions): count distinct rows, not requests.
	distinct := func() int {
		seen := map[float64]bool{}
		for _, m := range b.recv.acked() {
			seen[m.Record["id"].(float64)] = true
		}
		return len(seen)
	}
	deadline := time.Now().Add(60 * time.Second)
	for distinct() < 200 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := distinct(); n != 200 {
		t.Fatalf("delivered %d distinct rows, want 200", n)
	}
}

// SIGTERM stops taking work, finishes in-flight batches and exits 0.
func TestGracefulShutdown(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	release := make(chan struct{})
	var started sync.Once
	inFlight := make(chan struct{})
	b.recv.setRespond(func(*request) int {
		started.Do(func() { close(inFlight) })
		<-release
		return 200
	})
	p := startProc(t, b.writeConfig(t, b.recv.URL()), "walhook")
	waitFor(t, 20*time.Second, "streaming", b.slotActive)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	select {
	case <-inFlight:
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery started")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the point: walhook handles SIGTERM while the batch is still in flight
	close(release)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("walhook did not exit after SIGTERM")
	}
	var left int
	mustScan(t, b.db.QueryRow(context.Background(), `SELECT count(*) FROM walhook.outbox`), &left)
	if left != 0 || b.recv.count() != 1 {
		t.Fatalf("in-flight batch not finished: %d left in outbox, %d delivered", left, b.recv.count())
	}
}
