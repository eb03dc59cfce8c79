//go:build unix

package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// runAs is the OS user the Postgres programs run as when walhook runs as
// root: initdb, pg_ctl and postgres refuse to run as root, so they are
// started with that user's credentials instead.
type runAs struct {
	name     string
	home     string
	uid, gid uint32
	groups   []uint32
}

// lookupRunAs returns the user to switch to, or nil when the process is not
// root and the programs simply run as the current user.
func lookupRunAs(name string) (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: running as root, and PostgreSQL refuses to run as root, "+
			"so it must run as OS user %q, which cannot be looked up (%v); create it (useradd --system %s) or run as a non-root user",
			name, err, name)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("pgcluster: OS user %q has non-numeric uid/gid %q/%q", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("pgcluster: OS user %q is root (uid 0); PostgreSQL refuses to run as root", name)
	}
	r := &runAs{name: name, home: u.HomeDir, uid: uint32(uid), gid: uint32(gid)}
	// Keep the user's supplementary groups (e.g. ssl-cert) and nothing of
	// root's: an empty list would still be applied, dropping root's groups.
	r.groups = []uint32{}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				r.groups = append(r.groups, uint32(g))
			}
		}
	}
	return r, nil
}

// sysProcAttr puts every Postgres program in its own process group, so a
// Ctrl-C on the terminal reaches only walhook, which then shuts the server
// down in order (stopping replication first) instead of the server dying
// under it; and switches to r's credentials when set.
func (r *runAs) sysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if r != nil {
		a.Credential = &syscall.Credential{Uid: r.uid, Gid: r.gid, Groups: r.groups}
	}
	return a
}

// chown gives path to r (no-op when not switching users).
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	if err := os.Chown(path, int(r.uid), int(r.gid)); err != nil {
		return fmt.Errorf("pgcluster: give %s to OS user %s: %w", path, r.name, err)
	}
	return nil
}

// checkReachable verifies that r can traverse every folder above dir: root
// can create a data folder anywhere, but the server, running as r, could
// not reach one under e.g. /root (mode 0700), and initdb's error for that is
// obscure.
func (r *runAs) checkReachable(dir string) error {
	if r == nil {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("pgcluster: %s: %w", dir, err)
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			// Created later by MkdirAll with mode 0755: reachable.
			if p == filepath.Dir(p) {
				return nil
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("pgcluster: %s: %w", p, err)
		}
		if !r.canSearch(st) {
			return fmt.Errorf("pgcluster: %s is not reachable by OS user %s, which runs PostgreSQL because walhook runs as root: "+
				"%s (mode %v) is not searchable by it; choose a folder outside it (e.g. under %s) or run walhook as a non-root user",
				abs, r.name, p, st.Mode().Perm(), os.TempDir())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func (r *runAs) canSearch(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true // unknown: let the server report it
	}
	mode := fi.Mode().Perm()
	if st.Uid == r.uid {
		return mode&0o100 != 0
	}
	inGroup := st.Gid == r.gid
	for _, g := range r.groups {
		inGroup = inGroup || st.Gid == g
	}
	if inGroup {
		return mode&0o010 != 0
	}
	return mode&0o001 != 0
}

// processAlive reports whether pid exists. EPERM means it exists but
// belongs to someone else.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killProcess sends SIGKILL: the last resort when pg_ctl cannot stop a
// server whose temporary folder is about to be removed.
func killProcess(pid int) error {
	return syscall.Kill(pid, syscall.SIGKILL)
}

// fileUID is the owner of a file.
func fileUID(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

// serverUID is the uid the server runs as.
func (r *runAs) serverUID() int {
	if r == nil {
		return os.Geteuid()
	}
	return int(r.uid)
}

// lchown is chown for symlinks themselves.
func (r *runAs) lchown(path string) error {
	if r == nil {
		return nil
	}
	if err := os.Lchown(path, int(r.uid), int(r.gid)); err != nil {
		return fmt.Errorf("pgcluster: give %s to OS user %s: %w", path, r.name, err)
	}
	return nil
}
