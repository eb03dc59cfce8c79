//go:build !unix

package pgcluster

import (
	"os"
	"syscall"
)

// runAs is unused off Unix: there is no root to step down from.
type runAs struct{ name, home string }

func lookupRunAs(string) (*runAs, error)           { return nil, nil }
func (r *runAs) sysProcAttr() *syscall.SysProcAttr { return nil }
func (r *runAs) chown(string) error                { return nil }
func (r *runAs) checkReachable(string) error       { return nil }

// processAlive cannot be probed portably; answering true keeps the sweep of
// orphaned clusters conservative (it never touches a live one).
func processAlive(int) bool { return true }

func killProcess(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}

// fileUID matches os.Geteuid off Unix (both -1): ownership is not checked.
func fileUID(os.FileInfo) int { return os.Geteuid() }

func (r *runAs) serverUID() int      { return os.Geteuid() }
func (r *runAs) lchown(string) error { return nil }
