package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

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
