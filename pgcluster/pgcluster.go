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
	"io"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
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

// --- setup -----------------------------------------------------------------

// ownerFileName records the PID of the process that started the server, so
// that a later Start can tell a server orphaned by a crashed walhook (safe
// to stop) from one in use.
const ownerFileName = "walhook.owner"

func (c *Cluster) makeBaseDir() error {
	base, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return fmt.Errorf("pgcluster: create temporary folder: %w", err)
	}
	c.baseDir = base
	if err := os.WriteFile(filepath.Join(base, ownerFileName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if err := c.user.checkReachable(base); err != nil {
		return err
	}
	if err := c.user.chown(base); err != nil {
		return err
	}
	c.sockDir = filepath.Join(base, "sock")
	if err := c.mkdirOwned(c.sockDir); err != nil {
		return err
	}
	if c.opts.DataDir == "" {
		c.tempData, c.owns = true, true
		c.dataDir = filepath.Join(base, "data")
		c.logFile = filepath.Join(base, "postgres.log")
	} else {
		abs, err := filepath.Abs(c.opts.DataDir)
		if err != nil {
			return fmt.Errorf("pgcluster: data folder %s: %w", c.opts.DataDir, err)
		}
		c.dataDir = abs
		c.logFile = filepath.Join(abs, "walhook-postgres.log")
	}
	return nil
}

// abandon undoes a failed Start.
func (c *Cluster) abandon() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c.owns && c.serverMayRun() {
		_ = c.stopServer(ctx, "immediate", 15*time.Second)
	}
	if c.owns && !c.tempData {
		_ = os.Remove(filepath.Join(c.dataDir, ownerFileName))
	}
	if c.baseDir != "" {
		_ = os.RemoveAll(c.baseDir)
	}
}

func (c *Cluster) prepareDataDir(ctx context.Context) error {
	if !c.tempData {
		if err := c.user.checkReachable(c.dataDir); err != nil {
			return err
		}
	}
	st, err := os.Stat(c.dataDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(c.dataDir), 0o755); err != nil {
			return fmt.Errorf("pgcluster: create data folder: %w", err)
		}
		if err := c.mkdirOwned(c.dataDir); err != nil {
			return err
		}
		return c.initdb(ctx)
	case err != nil:
		return fmt.Errorf("pgcluster: data folder: %w", err)
	case !st.IsDir():
		return fmt.Errorf("pgcluster: data folder %s is not a folder", c.dataDir)
	}

	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err == nil {
		return c.reuseDataDir(ctx)
	}
	entries, err := os.ReadDir(c.dataDir)
	if err != nil {
		return fmt.Errorf("pgcluster: data folder: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("pgcluster: data folder %s is neither empty nor a PostgreSQL data folder (no PG_VERSION); "+
			"choose another folder or empty it", c.dataDir)
	}
	if err := c.user.chown(c.dataDir); err != nil {
		return err
	}
	if err := os.Chmod(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("pgcluster: data folder: %w", err)
	}
	return c.initdb(ctx)
}

// initdb initialises the data folder: for a Fast cluster by copying a
// cached, freshly initialised template (initdb takes seconds of CPU, a copy
// a fraction of that, which adds up over the many test binaries of a `go
// test ./...`), else by running initdb.
func (c *Cluster) initdb(ctx context.Context) error {
	began := time.Now()
	how := "initdb"
	copied := false
	if c.opts.Fast {
		tpl, err := c.copyTemplate(ctx)
		if err != nil {
			c.logf("pgcluster: no template (%v); running initdb", err)
			if err := emptyDir(c.dataDir); err != nil {
				return err
			}
		} else {
			copied, how = true, "template "+tpl
		}
	}
	if !copied {
		if err := c.initdbInto(ctx, c.dataDir); err != nil {
			return err
		}
	}
	c.logf("pgcluster: initialised %s (PostgreSQL %s) from %s in %v",
		c.dataDir, c.bins.Version, how, time.Since(began).Round(time.Millisecond))
	return c.writeOwner()
}

// initdbInto runs initdb on the empty folder dir (owned by the server's OS
// user) and adds pgcluster's pg_hba.conf and include line.
func (c *Cluster) initdbInto(ctx context.Context, dir string) error {
	args := []string{"-D", dir, "-A", "trust", "-U", Superuser, "-E", "UTF8", "--locale=C"}
	if c.opts.Fast {
		args = append(args, "--no-sync")
	}
	if out, err := c.run(ctx, c.bins.InitDB, args...); err != nil {
		return fmt.Errorf("pgcluster: initdb %s: %w\n%s", dir, err, out)
	}
	if err := c.writeOwned(filepath.Join(dir, "pg_hba.conf"), hbaConf, 0o600); err != nil {
		return err
	}
	return ensureInclude(dir)
}

// hbaConf trusts every connection that can reach the cluster: it listens on
// 127.0.0.1 and a private socket folder only. Replication connections need
// their own lines.
const hbaConf = `# Written by walhook pgcluster: a private cluster reachable only from this
# machine (127.0.0.1 and a private socket folder); local connections are
# trusted, replication connections included.
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
host    all          all   ::1/128        trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
host    replication  all   ::1/128        trust
`

// confFileName holds the settings written at every start (the port may
// change between runs of a kept data folder); postgresql.conf includes it
// at its end so it wins over initdb's defaults, while ALTER SYSTEM
// (postgresql.auto.conf) still wins over it.
const confFileName = "walhook.conf"

const includeLine = "include_if_exists = '" + confFileName + "'"

func ensureInclude(dataDir string) error {
	p := filepath.Join(dataDir, "postgresql.conf")
	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	if strings.Contains(string(data), includeLine) {
		return nil
	}
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	_, err = fmt.Fprintf(f, "\n# Added by walhook pgcluster: its settings, rewritten at every start.\n%s\n", includeLine)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgcluster: %s: %w", p, err)
	}
	return nil
}

func (c *Cluster) reuseDataDir(ctx context.Context) error {
	raw, err := os.ReadFile(filepath.Join(c.dataDir, "PG_VERSION"))
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	dataMajor, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	if dataMajor != c.bins.Major {
		return fmt.Errorf("pgcluster: data folder %s was made by PostgreSQL %s, but the programs found are version %s (%s); "+
			"remove the folder to start afresh, or use matching programs",
			c.dataDir, strings.TrimSpace(string(raw)), c.bins.Version, filepath.Dir(c.bins.Postgres))
	}
	if pid := readPID(filepath.Join(c.dataDir, "postmaster.pid")); pid > 0 && processAlive(pid) {
		owner := readPID(filepath.Join(c.dataDir, ownerFileName))
		switch {
		case owner > 0 && owner != os.Getpid() && !processAlive(owner):
			c.logf("pgcluster: stopping server (pid %d) left running on %s by process %d, which is gone", pid, c.dataDir, owner)
			err := c.stopServer(ctx, "fast", 30*time.Second)
			if err != nil {
				err = c.stopServer(ctx, "immediate", 15*time.Second)
			}
			if err != nil {
				return fmt.Errorf("pgcluster: stop orphaned server on %s: %w", c.dataDir, err)
			}
		case owner > 0:
			return fmt.Errorf("pgcluster: data folder %s is in use by a server (pid %d) that process %d started; stop that first",
				c.dataDir, pid, owner)
		default:
			return fmt.Errorf("pgcluster: a PostgreSQL server (pid %d) is already running on data folder %s; "+
				"stop it first (pg_ctl stop -D %s)", pid, c.dataDir, c.dataDir)
		}
	}
	if err := ensureInclude(c.dataDir); err != nil {
		return err
	}
	c.logf("pgcluster: reusing data folder %s", c.dataDir)
	return c.writeOwner()
}

func (c *Cluster) writeOwner() error {
	if c.tempData {
		return nil // the base folder's owner file covers it
	}
	if err := c.writeOwned(filepath.Join(c.dataDir, ownerFileName), strconv.Itoa(os.Getpid())+"\n", 0o644); err != nil {
		return err
	}
	c.owns = true
	return nil
}

// settings are the server settings of this cluster, defaults first.
func (c *Cluster) settings() map[string]string {
	s := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(c.port),
		"unix_socket_directories": c.sockDir,
		"wal_level":               "logical",
		"max_replication_slots":   "64",
		"max_wal_senders":         "64",
		"shared_buffers":          "128MB",
		"max_connections":         "300",
	}
	if c.opts.Fast {
		s["fsync"] = "off"
		s["full_page_writes"] = "off"
	}
	for k, v := range c.opts.Settings {
		s[strings.ToLower(k)] = v
	}
	return s
}

var settingNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

func validateSettings(s map[string]string) error {
	for k, v := range s {
		if !settingNameRE.MatchString(k) {
			return fmt.Errorf("pgcluster: setting name %q is not valid", k)
		}
		switch strings.ToLower(k) {
		case "listen_addresses", "port", "unix_socket_directories":
			return fmt.Errorf("pgcluster: setting %q is managed by pgcluster (use Options.Port)", k)
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return fmt.Errorf("pgcluster: setting %s: value must be one line", k)
		}
	}
	return nil
}

func (c *Cluster) writeConf() error {
	s := c.settings()
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Written by walhook pgcluster at every start: edits here are lost.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(s[k], "'", "''"))
	}
	return c.writeOwned(filepath.Join(c.dataDir, confFileName), b.String(), 0o600)
}

// --- server control --------------------------------------------------------

// portConflictError is a start failure because the port was in use.
type portConflictError struct{ err error }

func (e *portConflictError) Error() string { return e.err.Error() }
func (e *portConflictError) Unwrap() error { return e.err }

// startServer starts the postmaster with pg_ctl and waits until it accepts
// connections. Called with c.mu held (or before c is shared).
func (c *Cluster) startServer(ctx context.Context) error {
	if err := c.writeConf(); err != nil {
		return err
	}
	var logOffset int64
	if st, err := os.Stat(c.logFile); err == nil {
		logOffset = st.Size()
	}
	out, err := c.run(ctx, c.bins.PGCtl, "start", "-w", "-s",
		"-t", strconv.Itoa(secondsLeft(ctx, 120*time.Second)),
		"-D", c.dataDir, "-l", c.logFile, "-p", c.bins.Postgres)
	if err == nil {
		c.running = true
		return nil
	}
	// pg_ctl may have given up (timeout, ctx) on a postmaster that is still
	// coming up: make sure nothing is left behind.
	if c.serverMayRun() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
		_ = c.stopServer(stopCtx, "immediate", 15*time.Second)
		cancel()
	}
	tail := readTail(c.logFile, logOffset, 4096)
	err = fmt.Errorf("pgcluster: start PostgreSQL %s on port %d (data %s): %w\n%s\nserver log %s:\n%s",
		c.bins.Version, c.port, c.dataDir, err, strings.TrimSpace(out), c.logFile, tail)
	if strings.Contains(tail, "could not bind") || strings.Contains(tail, "Address already in use") {
		return &portConflictError{err}
	}
	return err
}

// stopServer runs pg_ctl stop in mode (fast, immediate) waiting at most
// limit. A server that is not running counts as stopped.
func (c *Cluster) stopServer(ctx context.Context, mode string, limit time.Duration) error {
	if !c.serverMayRun() {
		return nil
	}
	out, err := c.run(ctx, c.bins.PGCtl, "stop", "-w", "-s", "-m", mode,
		"-t", strconv.Itoa(secondsLeft(ctx, limit)), "-D", c.dataDir)
	if err != nil && !c.serverMayRun() {
		return nil // it went away on its own (or had already)
	}
	if err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w: %s", mode, err, strings.TrimSpace(out))
	}
	return nil
}

// serverMayRun reports whether a postmaster.pid names a live process.
func (c *Cluster) serverMayRun() bool {
	pid := readPID(filepath.Join(c.dataDir, "postmaster.pid"))
	return pid > 0 && processAlive(pid)
}

// killPostmaster SIGKILLs the postmaster and waits for it to go; its
// backends notice the postmaster's death and exit by themselves.
func (c *Cluster) killPostmaster(ctx context.Context) error {
	pid := readPID(filepath.Join(c.dataDir, "postmaster.pid"))
	if pid <= 0 || !processAlive(pid) {
		return nil
	}
	c.logf("pgcluster: killing postmaster %d", pid)
	if err := killProcess(pid); err != nil {
		return fmt.Errorf("kill postmaster %d: %w", pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(pid) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	if processAlive(pid) {
		return fmt.Errorf("postmaster %d still alive after SIGKILL", pid)
	}
	return nil
}

// sweepOrphans reaps the temporary folders (and stops the servers) of
// clusters whose owning process died without calling Stop — a test binary
// killed by -timeout or Ctrl-C, say — so they do not pile up.
func (c *Cluster) sweepOrphans(ctx context.Context) {
	bases, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, base := range bases {
		owner := readPID(filepath.Join(base, ownerFileName))
		if owner <= 0 {
			// Being created right now, or left by a crash before the owner
			// file was written: only the latter is old.
			if st, err := os.Stat(base); err != nil || time.Since(st.ModTime()) < time.Hour {
				continue
			}
		} else if owner == os.Getpid() || processAlive(owner) {
			continue
		}
		data := filepath.Join(base, "data")
		if pid := readPID(filepath.Join(data, "postmaster.pid")); pid > 0 && processAlive(pid) {
			orphan := &Cluster{bins: c.bins, user: c.user, env: c.env, dataDir: data, tempData: true, opts: Options{Logf: c.opts.Logf}}
			stopCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
			if err := orphan.stopServer(stopCtx, "immediate", 15*time.Second); err != nil {
				_ = orphan.killPostmaster(stopCtx)
			}
			cancel()
			if orphan.serverMayRun() {
				c.logf("pgcluster: could not stop orphaned server in %s; leaving it", base)
				continue
			}
		}
		if err := os.RemoveAll(base); err == nil {
			c.logf("pgcluster: removed %s, left by process %d, which is gone", base, owner)
		}
	}
}

// --- helpers ---------------------------------------------------------------

// run runs a Postgres program as the cluster's OS user and returns its
// combined output.
func (c *Cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = c.env
	cmd.Dir = "/" // the caller's folder may be unreadable for the postgres user
	cmd.SysProcAttr = c.user.sysProcAttr()
	// The postmaster pg_ctl launches redirects its output to the log file,
	// but never let a stray inherited descriptor hang us.
	cmd.WaitDelay = 5 * time.Second
	var buf strings.Builder
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return buf.String(), err
}

func (c *Cluster) mkdirOwned(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.user.chown(dir)
}

func (c *Cluster) writeOwned(path, data string, perm os.FileMode) error {
	if err := os.WriteFile(path, []byte(data), perm); err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	return c.user.chown(path)
}

func (c *Cluster) logf(format string, args ...any) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

// readPID reads the PID on the first line of path (postmaster.pid, owner
// files); 0 when absent or unreadable.
func readPID(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// readTail returns at most max bytes of path after offset, from its end.
func readTail(path string, offset, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if st.Size()-offset > max {
		offset = st.Size() - max
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return "(no log: " + err.Error() + ")"
	}
	data, _ := io.ReadAll(f)
	return strings.TrimSpace(string(data))
}

// secondsLeft is limit, or less when ctx ends sooner, in whole seconds for
// pg_ctl -t.
func secondsLeft(ctx context.Context, limit time.Duration) int {
	if dl, ok := ctx.Deadline(); ok {
		limit = min(limit, time.Until(dl))
	}
	return max(1, int((limit+time.Second-1)/time.Second))
}

// freePort picks a free port on 127.0.0.1 below the kernel's ephemeral
// range: the kernel hands out ports from that range to every listener on
// port 0 (httptest servers, say) and every outgoing connection, and one of
// those could take the port while the server is down for a Restart.
// Another process may still take the port before the server binds it;
// Start retries on that.
func freePort() (int, error) {
	hi := 32768 // Linux's default ip_local_port_range start
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				hi = n
			}
		}
	}
	if lo := max(1024, hi-16384); hi-lo >= 1024 {
		for range 50 {
			port := lo + mrand.IntN(hi-lo)
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err == nil {
				l.Close()
				return port, nil
			}
		}
	}
	// An odd ephemeral range (or a crowded one): let the kernel choose.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgcluster: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
