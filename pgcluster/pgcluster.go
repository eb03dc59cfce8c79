// Package pgcluster runs a private PostgreSQL cluster from the local server
// programs (initdb, pg_ctl, postgres), configured for logical replication:
// the throwaway server of the integration tests and the zero-setup server
// of `walhook dev`. It needs no running server, no Docker and no network,
// only the PostgreSQL server package.
//
// The cluster listens on 127.0.0.1 only and trusts every local connection
// (replication included), so it must never hold data worth protecting from
// other local users. When the process runs as root the Postgres programs
// run as the `postgres` OS user (Postgres refuses to run as root).
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Superuser is the cluster's superuser role (initdb -U), also used for
// replication connections.
const Superuser = "postgres"

// tempPrefix names the temporary folders of clusters, so that folders left
// by a process that died without stopping its cluster can be found and
// reaped by the next Start (see sweepOrphans).
const tempPrefix = "walhook-pgcluster-"

// Options configure Start. The zero value is a throwaway cluster in a
// temporary folder on a free port, with durable settings.
type Options struct {
	// DataDir is the data folder. Empty: a temporary folder, removed by
	// Stop. Set: kept across runs; an initialised folder is reused as is
	// (`walhook dev` restarts keep their data), an empty or missing one is
	// initialised.
	DataDir string
	// Port is the TCP port on 127.0.0.1. 0 picks a free one.
	Port int
	// Fast turns off fsync and full_page_writes (and initdb's sync, and
	// initialises from a cached template): for data that may be lost in an
	// OS crash, as in tests. A crash of Postgres alone (Kill, Restart) still
	// loses nothing committed, which tests of "Postgres restarts" rely on;
	// that is why synchronous_commit stays on: off, the last commits before
	// a Kill vanish (and with fsync off it would save little anyway).
	Fast bool
	// Settings are extra postgresql.conf settings, applied last so they
	// override the defaults; listen_addresses, port and
	// unix_socket_directories are reserved (use Port).
	Settings map[string]string
	// Logf, if set, receives progress (initdb, start, stop) and warnings.
	Logf func(format string, args ...any)
	// BinDir, if set, is the only folder searched for the programs (see
	// FindBinaries).
	BinDir string
	// RunAs is the OS user the programs run as when this process is root.
	// Default "postgres". Ignored when not root.
	RunAs string
}

// Cluster is a running (or killed, restartable) private PostgreSQL server.
// Its methods are safe for concurrent use; the ones that start or stop the
// server are serialised.
type Cluster struct {
	bins     *Binaries
	opts     Options
	user     *runAs
	env      []string
	port     int
	baseDir  string // temporary: owner file, socket folder, and the data of a throwaway cluster
	dataDir  string
	sockDir  string
	logFile  string
	tempData bool // dataDir is inside baseDir
	owns     bool // this Cluster initialised or claimed dataDir, so a server there is its own

	mu      sync.Mutex
	running bool
	stopped bool
}

// Start initialises (if needed) and starts a cluster. On error nothing is
// left running and temporary folders are removed.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	began := time.Now()
	if err := validateSettings(opts.Settings); err != nil {
		return nil, err
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("pgcluster: port %d out of range", opts.Port)
	}
	bins, err := FindBinaries(ctx, opts.BinDir)
	if err != nil {
		return nil, err
	}
	user, err := lookupRunAs(opts.RunAs)
	if err != nil {
		return nil, err
	}
	c := &Cluster{bins: bins, opts: opts, user: user, port: opts.Port}
	var extraEnv []string
	if user != nil && user.home != "" {
		extraEnv = append(extraEnv, "HOME="+user.home, "USER="+user.name, "LOGNAME="+user.name)
	}
	c.env = cleanEnv(extraEnv)

	c.sweepOrphans(ctx)
	if err := c.makeBaseDir(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.abandon()
		}
	}()

	if err := c.prepareDataDir(ctx); err != nil {
		return nil, err
	}
	autoPort := c.port == 0
	for attempt := 1; ; attempt++ {
		if autoPort {
			if c.port, err = freePort(); err != nil {
				return nil, err
			}
		}
		err = c.startServer(ctx)
		// A port picked free can be taken by another process (often another
		// test binary doing the same) before the server binds it.
		var pc *portConflictError
		if err != nil && autoPort && attempt < 5 && errors.As(err, &pc) && ctx.Err() == nil {
			c.logf("pgcluster: port %d was taken meanwhile; trying another", c.port)
			continue
		}
		if err != nil {
			return nil, err
		}
		break
	}
	ok = true
	c.logf("pgcluster: PostgreSQL %s ready on 127.0.0.1:%d (data %s) in %v",
		bins.Version, c.port, c.dataDir, time.Since(began).Round(time.Millisecond))
	return c, nil
}

// URL is the connection URL of dbname for the superuser, over TCP (so it
// also works for replication connections and from other processes).
func (c *Cluster) URL(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// DataDir is the data folder (absolute).
func (c *Cluster) DataDir() string { return c.dataDir }

// SocketDir is the folder of the Unix socket (psql -h SocketDir).
func (c *Cluster) SocketDir() string { return c.sockDir }

// LogFile is the server log, worth showing when something goes wrong.
func (c *Cluster) LogFile() string { return c.logFile }

// Version is the server version, e.g. "15.8".
func (c *Cluster) Version() string { return c.bins.Version }

// CreateDatabase creates database name unless it exists already, so
// `walhook dev` can call it on every start of a kept data folder.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pgcluster: create database %q: connect: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
		return nil
	}
	if err != nil {
		return fmt.Errorf("pgcluster: create database %q: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (fast mode: sessions are disconnected,
// nothing committed is lost) and removes the temporary folders, the data
// folder too when it was temporary. A server that does not stop in time is
// shut down in immediate mode, and a throwaway one is killed as a last
// resort, since its folder is about to go. Stop is final and idempotent.
//
// Give it a live context (after Ctrl-C, a fresh one with a timeout, not the
// cancelled one): a context already done skips the fast shutdown, and the
// next start of a kept data folder then runs crash recovery.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	c.stopped = true
	var errs []error
	if c.serverMayRun() {
		began := time.Now()
		err := c.stopServer(ctx, "fast", 30*time.Second)
		if err != nil {
			c.logf("pgcluster: fast shutdown failed (%v); trying immediate", err)
			err = c.stopServer(context.WithoutCancel(ctx), "immediate", 15*time.Second)
		}
		if err != nil && c.tempData {
			err = c.killPostmaster(ctx)
		}
		if err != nil {
			// Keep the owner file and socket folder: the next Start on this
			// data folder recognises the orphaned server and stops it.
			c.running = false
			return fmt.Errorf("pgcluster: stop server on %s: %w", c.dataDir, err)
		}
		c.logf("pgcluster: stopped PostgreSQL on port %d in %v", c.port, time.Since(began).Round(time.Millisecond))
	}
	c.running = false
	if !c.tempData {
		if err := os.Remove(filepath.Join(c.dataDir, ownerFileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("pgcluster: %w", err))
		}
	}
	if err := os.RemoveAll(c.baseDir); err != nil {
		errs = append(errs, fmt.Errorf("pgcluster: remove %s: %w", c.baseDir, err))
	}
	return errors.Join(errs...)
}

// Kill shuts the server down in immediate mode, like a crash: no shutdown
// checkpoint, sessions and replication connections cut, and crash recovery
// on the next start. The data and the port are kept for Start/Restart.
func (c *Cluster) Kill(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("pgcluster: kill: cluster is stopped")
	}
	if err := c.stopServer(ctx, "immediate", 30*time.Second); err != nil {
		return fmt.Errorf("pgcluster: kill: %w", err)
	}
	c.running = false
	c.logf("pgcluster: killed PostgreSQL on port %d", c.port)
	return nil
}

// Start starts the server again after Kill, on the same port and data. It
// is a no-op while the server runs.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return errors.New("pgcluster: start: cluster is stopped")
	}
	if c.running {
		return nil
	}
	return c.startServer(ctx)
}

// Restart kills the server (immediate mode, as in a crash) and starts it
// again on the same port and data: clients see their connections drop and
// must reconnect, as after a real Postgres restart.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Kill(ctx); err != nil {
		return err
	}
	return c.Start(ctx)
}
