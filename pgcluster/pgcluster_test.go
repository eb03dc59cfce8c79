package pgcluster

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// needBinaries skips when the machine has no PostgreSQL server programs:
// these tests exercise the real programs, nothing is faked.
func needBinaries(t *testing.T) {
	t.Helper()
	if _, err := FindBinaries(t.Context(), ""); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no Postgres: install postgresql: %v", err)
		}
		t.Skip(err)
	}
}

func startFast(t *testing.T, opts Options) *Cluster {
	t.Helper()
	opts.Fast = true
	return startCluster(t, opts)
}

func startCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	opts.Logf = t.Logf
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return c
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func show(t *testing.T, conn *pgx.Conn, name string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(t.Context(), "SHOW "+name).Scan(&v); err != nil {
		t.Fatalf("SHOW %s: %v", name, err)
	}
	return v
}

// deadPID returns the PID of a process that has exited, to stand for an
// owner that crashed.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// sharedTempDir is a folder the postgres OS user can traverse when the
// tests run as root (t.TempDir's folders are 0700).
func sharedTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgcluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ownBases lists the temporary cluster folders of this process (other test
// binaries may be making theirs meanwhile).
func ownBases() []string {
	var own []string
	bases, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, b := range bases {
		if readPID(filepath.Join(b, ownerFileName)) == os.Getpid() {
			own = append(own, b)
		}
	}
	return own
}

func TestClusterFindBinaries(t *testing.T) {
	needBinaries(t)
	b, err := FindBinaries(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if b.Major < 10 || b.Version == "" {
		t.Errorf("version %q major %d", b.Version, b.Major)
	}
	for _, p := range []string{b.InitDB, b.PGCtl, b.Postgres} {
		if !filepath.IsAbs(p) || !isExecutable(p) {
			t.Errorf("%s: not an absolute executable path", p)
		}
	}
	t.Logf("PostgreSQL %s: %s", b.Version, filepath.Dir(b.Postgres))

	_, err = FindBinaries(t.Context(), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "initdb, pg_ctl, postgres missing") {
		t.Errorf("empty BinDir: got %v", err)
	}
}

func TestClusterVersionOrder(t *testing.T) {
	dirs := []string{"/usr/lib/postgresql/9.6/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"}
	best := dirs[0]
	for _, d := range dirs[1:] {
		if compareVersions(versionFromPath(d), versionFromPath(best)) > 0 {
			best = d
		}
	}
	if best != "/usr/lib/postgresql/16/bin" {
		t.Errorf("highest version: got %s", best)
	}
}

func TestClusterLifecycle(t *testing.T) {
	needBinaries(t)
	began := time.Now()
	c := startFast(t, Options{})
	t.Logf("start took %v", time.Since(began))
	ctx := t.Context()

	if !strings.HasPrefix(c.URL("x"), "postgres://postgres@127.0.0.1:"+strconv.Itoa(c.Port())+"/x?sslmode=disable") {
		t.Errorf("URL: %s", c.URL("x"))
	}
	conn := connect(t, c.URL("postgres"))
	for name, want := range map[string]string{
		"wal_level": "logical", "max_replication_slots": "64", "max_wal_senders": "64",
		"fsync": "off", "full_page_writes": "off", "synchronous_commit": "on",
		"max_connections": "300", "listen_addresses": "127.0.0.1", "shared_buffers": "128MB",
	} {
		if got := show(t, conn, name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}

	if err := c.CreateDatabase(ctx, "app db"); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, "app db"); err != nil {
		t.Fatalf("second CreateDatabase must be a no-op: %v", err)
	}
	app := connect(t, c.URL("app db"))
	if _, err := app.Exec(ctx, `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)`); err != nil {
		t.Fatal(err)
	}
	if _, err := app.Exec(ctx, `SELECT pg_create_logical_replication_slot('s1', 'pgoutput')`); err != nil {
		t.Fatalf("create pgoutput slot: %v", err)
	}

	// A replication connection over TCP, as walhook makes it.
	repl, err := pgconn.Connect(ctx, c.URL("app db")+"&replication=database")
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	if _, err := repl.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
	repl.Close(ctx)

	// Restart: crash-like, same port, data and slot kept, including a
	// commit made just before.
	if _, err := app.Exec(ctx, `INSERT INTO t VALUES (3)`); err != nil {
		t.Fatal(err)
	}
	port := c.Port()
	began = time.Now()
	if err := c.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart took %v", time.Since(began))
	if c.Port() != port {
		t.Errorf("port changed: %d -> %d", port, c.Port())
	}
	if err := app.Ping(ctx); err == nil {
		t.Error("old connection survived a restart")
	}
	app = connect(t, c.URL("app db"))
	var n int
	if err := app.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil || n != 3 {
		t.Errorf("rows after restart: %d, %v", n, err)
	}
	if err := app.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's1'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("slot after restart: %d, %v", n, err)
	}

	// Kill leaves it down until Start.
	if err := c.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, c.URL("postgres")); err == nil {
		t.Error("connected to a killed cluster")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	connect(t, c.URL("postgres"))

	dataDir, base := c.DataDir(), c.baseDir
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dataDir, base} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Stop: %v", p, err)
		}
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := c.Start(ctx); err == nil {
		t.Error("Start after Stop must fail")
	}
}

func TestClusterKeptDataDir(t *testing.T) {
	needBinaries(t)
	ctx := t.Context()
	dir := filepath.Join(sharedTempDir(t), "dev", "data")

	// Durable, as `walhook dev` runs it.
	c := startCluster(t, Options{DataDir: dir, Settings: map[string]string{"application_name": "it's walhook"}})
	conn := connect(t, c.URL("postgres"))
	if got := show(t, conn, "fsync"); got != "on" {
		t.Errorf("fsync = %q without Fast", got)
	}
	if got := show(t, conn, "application_name"); got != "it's walhook" {
		t.Errorf("extra setting: %q", got)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	// A second cluster on a folder in use is refused, and leaves it alone.
	if _, err := Start(ctx, Options{DataDir: dir, Fast: true}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Start on a used folder: %v", err)
	}
	connect(t, c.URL("postgres"))

	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		t.Fatalf("kept data folder was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, ownerFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("owner file left after Stop: %v", err)
	}

	c2 := startFast(t, Options{DataDir: dir})
	var v string
	if err := connect(t, c2.URL("postgres")).QueryRow(ctx, `SELECT v FROM kept`).Scan(&v); err != nil || v != "hello" {
		t.Errorf("data after reuse: %q, %v", v, err)
	}

	// The owner dies without stopping: the next Start stops the orphan.
	if err := os.WriteFile(filepath.Join(dir, ownerFileName), []byte(strconv.Itoa(deadPID(t))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	orphanBase := c2.baseDir
	c3 := startFast(t, Options{DataDir: dir})
	if err := connect(t, c3.URL("postgres")).QueryRow(ctx, `SELECT v FROM kept`).Scan(&v); err != nil || v != "hello" {
		t.Errorf("data after orphan takeover: %q, %v", v, err)
	}
	// c2 is the dead owner: it must not stop c3's server on cleanup.
	c2.mu.Lock()
	c2.stopped = true
	c2.mu.Unlock()
	os.RemoveAll(orphanBase)
}

func TestClusterSweepsOrphanedTempClusters(t *testing.T) {
	needBinaries(t)
	ctx := t.Context()
	c1 := startFast(t, Options{})
	if err := os.WriteFile(filepath.Join(c1.baseDir, ownerFileName), []byte(strconv.Itoa(deadPID(t))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	startFast(t, Options{})
	if _, err := os.Stat(c1.baseDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphaned folder %s not swept: %v", c1.baseDir, err)
	}
	if _, err := pgx.Connect(ctx, c1.URL("postgres")); err == nil {
		t.Error("orphaned server still answers")
	}
}

func TestClusterStartFailureShowsLog(t *testing.T) {
	needBinaries(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	before := ownBases()

	_, err = Start(t.Context(), Options{Port: port, Fast: true, Logf: t.Logf})
	if err == nil {
		t.Fatal("started on a port in use")
	}
	if !strings.Contains(err.Error(), "server log") || !strings.Contains(err.Error(), "could not bind") {
		t.Errorf("error lacks the server log tail: %v", err)
	}
	if after := ownBases(); len(after) > len(before) {
		t.Errorf("failed Start left temporary folders: %v -> %v", before, after)
	}
}

func TestClusterBadOptions(t *testing.T) {
	for _, s := range []map[string]string{{"port": "1"}, {"bad name": "x"}, {"work_mem": "1\n2"}} {
		if _, err := Start(t.Context(), Options{Settings: s}); err == nil {
			t.Errorf("settings %v accepted", s)
		}
	}
}

func TestClusterUnreachableDataDirAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("only root hands the server to another OS user, and CI runs as root (.ci/run installs packages)")
		}
		t.Skip("only root hands the server to another OS user")
	}
	needBinaries(t)
	hidden := t.TempDir() // 0700, root's
	_, err := Start(t.Context(), Options{DataDir: filepath.Join(hidden, "data"), Fast: true})
	if err == nil || !strings.Contains(err.Error(), "not reachable by OS user postgres") {
		t.Fatalf("got %v", err)
	}
}
