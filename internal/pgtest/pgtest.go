// Package pgtest is the PostgreSQL harness of walhook's integration tests:
// one server per test binary, started on first use and stopped when the
// binary ends, and a fresh database per test, so tests stay isolated and
// can run in parallel without paying for a server each.
//
// The server comes from, in order:
//
//  1. $WALHOOK_TEST_DATABASE_URL: an existing server (its maintenance
//     database, e.g. postgres://postgres:pw@localhost:5432/postgres); it
//     needs wal_level=logical and a superuser, and test databases are made
//     in it.
//  2. The local PostgreSQL server programs (initdb, pg_ctl, postgres, see
//     pgcluster.FindBinaries): a private throwaway cluster with Fast
//     settings.
//  3. A Docker engine that answers: a postgres container (testcontainers)
//     with wal_level=logical; image $WALHOOK_TEST_POSTGRES_IMAGE, default
//     postgres:16-alpine.
//
// With none of them the tests are skipped, or fail when $CI is set, so a
// CI that lost its Postgres cannot pass green. $WALHOOK_TEST_POSTGRES
// (local | docker) forces one of the last two.
//
// Every package using it needs
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/pgcluster"
)

// Environment variables read by the harness.
const (
	EnvDatabaseURL = "WALHOOK_TEST_DATABASE_URL"
	EnvPostgres    = "WALHOOK_TEST_POSTGRES" // "", "local" or "docker"
	EnvImage       = "WALHOOK_TEST_POSTGRES_IMAGE"
)

// source is the server of this test binary.
type source struct {
	kind     string // "external", "local" or "docker"
	adminURL string
	cluster  *pgcluster.Cluster              // kind "local" only
	stop     func(ctx context.Context) error // nil for "external"
}

var (
	mu         sync.Mutex
	mainCalled bool
	src        *source
	srcErr     error  // setup failed: every test that needs Postgres fails with it
	srcMissing string // no Postgres at all: skip (or fail on CI) with this
)

// Main runs the tests of a package and then stops its server. Call it from
// TestMain. An interrupt (Ctrl-C, SIGTERM) also stops the server before the
// binary exits, so no cluster outlives an aborted run.
func Main(m *testing.M) {
	mu.Lock()
	mainCalled = true
	mu.Unlock()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "pgtest: %v: stopping Postgres\n", s)
		shutdown()
		os.Exit(1)
	}()

	code := m.Run()
	signal.Stop(sigs)
	shutdown()
	os.Exit(code)
}

func shutdown() {
	mu.Lock()
	defer mu.Unlock()
	if src == nil || src.stop == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := src.stop(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stop %s Postgres: %v\n", src.kind, err)
	}
	src = nil
}

// NewDB creates a fresh, empty database for the test and returns its URL
// (superuser, replication allowed). It is dropped when the test ends, after
// the test's later cleanups (which should stop what uses it): its
// replication slots are dropped and its sessions, walsenders included,
// terminated first.
func NewDB(t testing.TB) string {
	t.Helper()
	s := ensure(t)
	name := dbName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := execAdmin(ctx, s.adminURL, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDB(ctx, s.adminURL, name); err != nil {
			// The server is throwaway (or the name is unique): a leftover
			// database must not fail the test that used it.
			t.Logf("pgtest: drop database %s (left behind): %v", name, err)
		}
	})
	u, err := withDatabase(s.adminURL, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return u
}

// AdminURL is the URL of the server's maintenance database (superuser), for
// server-wide queries. Do not create objects there: it is shared by every
// test of the binary.
func AdminURL(t testing.TB) string {
	t.Helper()
	return ensure(t).adminURL
}

// Cluster is the local cluster, for tests that restart or kill Postgres
// (Restart, Kill, Start). Such tests must not run in parallel with others
// of their package: the server is shared. When the server is not a local
// cluster (an external URL or a container), the test is skipped.
func Cluster(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	s := ensure(t)
	if s.cluster == nil {
		t.Skipf("pgtest: this test controls the Postgres process, which needs the local cluster; the server here is %s", s.kind)
	}
	return s.cluster
}

// ensure returns the binary's server, setting it up on first use, or ends
// the test (skip or fail) when there is none.
func ensure(t testing.TB) *source {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !mainCalled {
		t.Fatal("pgtest: the package lacks `func TestMain(m *testing.M) { pgtest.Main(m) }`, " +
			"without which its Postgres server would outlive the tests")
	}
	if src == nil && srcErr == nil && srcMissing == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		src, srcMissing, srcErr = setup(ctx)
		cancel()
		if src != nil {
			t.Logf("pgtest: using %s Postgres %s", src.kind, redact(src.adminURL))
		}
	}
	switch {
	case srcErr != nil:
		t.Fatalf("pgtest: %v", srcErr)
	case srcMissing != "" && os.Getenv("CI") != "":
		t.Fatalf("pgtest: no Postgres: install postgresql or set %s (%s)", EnvDatabaseURL, srcMissing)
	case srcMissing != "":
		t.Skipf("pgtest: no Postgres: install postgresql or set %s (%s)", EnvDatabaseURL, srcMissing)
	}
	return src
}

// setup finds the server: the external one, the local programs, Docker.
// It returns the source, or why there is no Postgres, or a setup error.
func setup(ctx context.Context) (s *source, missing string, err error) {
	if u := os.Getenv(EnvDatabaseURL); u != "" {
		s, err := external(ctx, u)
		return s, "", err
	}
	force := os.Getenv(EnvPostgres)
	switch force {
	case "", "local", "docker":
	default:
		return nil, "", fmt.Errorf("%s=%q: want local or docker", EnvPostgres, force)
	}

	var why []string
	if force != "docker" {
		_, err := pgcluster.FindBinaries(ctx, "")
		if err == nil {
			// A broken local install is reported, not papered over with
			// another source.
			s, err := local(ctx)
			return s, "", err
		}
		if force == "local" {
			return nil, "", err
		}
		why = append(why, err.Error())
	}

	if err := dockerAnswers(ctx); err != nil {
		if force == "docker" {
			return nil, "", fmt.Errorf("%s=docker: %w", EnvPostgres, err)
		}
		why = append(why, "no Docker engine: "+err.Error())
		return nil, strings.Join(why, "; "), nil
	}
	s, err = docker(ctx)
	return s, "", err
}

func external(ctx context.Context, u string) (*source, error) {
	if _, err := withDatabase(u, "x"); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvDatabaseURL, err)
	}
	if err := checkServer(ctx, u); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", EnvDatabaseURL, redact(u), err)
	}
	return &source{kind: "external", adminURL: u}, nil
}

func local(ctx context.Context) (*source, error) {
	c, err := pgcluster.Start(ctx, pgcluster.Options{Fast: true, Logf: verboseLogf})
	if err != nil {
		return nil, err
	}
	return &source{kind: "local", adminURL: c.URL("postgres"), cluster: c, stop: c.Stop}, nil
}

// verboseLogf shows the cluster's progress and warnings with go test -v.
func verboseLogf(format string, args ...any) {
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

// checkServer makes sure the server can do what the tests need, so a
// misconfigured one fails once, clearly, rather than in every test.
func checkServer(ctx context.Context, adminURL string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var walLevel string
	var super bool
	err = conn.QueryRow(ctx, `SELECT current_setting('wal_level'), rolsuper FROM pg_roles WHERE rolname = current_user`).
		Scan(&walLevel, &super)
	if err != nil {
		return fmt.Errorf("check settings: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("wal_level is %s; walhook needs logical (postgres -c wal_level=logical)", walLevel)
	}
	if !super {
		return errors.New("the role is not a superuser; the tests create databases, slots and publications")
	}
	return nil
}

// --- databases -------------------------------------------------------------

// dbName is unique across test binaries and machines sharing a server, and
// names the test for whoever finds a leftover.
func dbName(testName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= 30 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:]) // never fails
	return "wt_" + b.String() + "_" + hex.EncodeToString(suffix[:])
}

func execAdmin(ctx context.Context, adminURL, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// dropDB drops a test database. Its logical replication slots block DROP
// DATABASE even WITH (FORCE), and an active one can only be dropped once
// its walsender is gone, hence the loop: terminate the sessions (a
// replication client may reconnect in between), drop the inactive slots,
// until none is left.
func dropDB(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var lastErr error
	for {
		_, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = $1 AND pid <> pg_backend_pid()`, name)
		if err == nil {
			_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
				WHERE database = $1 AND NOT active`, name)
		}
		var left int
		if err == nil {
			err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left)
		}
		if err == nil && left == 0 {
			break
		}
		if err != nil {
			lastErr = err // e.g. a slot became active between the two statements
		} else {
			lastErr = fmt.Errorf("%d replication slot(s) still active", left)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop slots: %w (%w)", lastErr, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop: %w", err)
	}
	return nil
}

// withDatabase is adminURL with its database replaced by name.
func withDatabase(adminURL, name string) (string, error) {
	u, err := url.Parse(adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("%s is not a postgres:// URL", redact(adminURL))
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}

// redact hides a URL's password for logs; anything but a URL (a
// keyword/value string, say) is not shown at all, as it may hold one too.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return "(not a URL)"
	}
	return u.Redacted()
}
