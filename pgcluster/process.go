package pgcluster

import (
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

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
