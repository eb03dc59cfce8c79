package pgcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// templatePrefix names the cached initdb results of Fast clusters. It does
// not start with tempPrefix, so sweepOrphans leaves them alone.
const templatePrefix = "walhook-pgtemplate-"

// copyTemplate fills the empty data folder with a copy of a template data
// folder, made by initdb once per machine, PostgreSQL installation and OS
// user, and returns the template's path. The template is built in a
// private folder and renamed into place, so concurrent test binaries never
// see a half-made one; whoever renames first wins.
func (c *Cluster) copyTemplate(ctx context.Context) (string, error) {
	uid := c.user.serverUID()
	h := sha256.New()
	// Everything initdbInto's result depends on: a change of any of these
	// (an upgrade, a new pg_hba.conf) makes a new template.
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%d", c.bins.InitDB, c.bins.Version, hbaConf, includeLine, uid)
	if st, err := os.Stat(c.bins.Postgres); err == nil {
		fmt.Fprintf(h, "\x00%d\x00%d", st.Size(), st.ModTime().UnixNano())
	}
	tpl := filepath.Join(os.TempDir(), templatePrefix+hex.EncodeToString(h.Sum(nil))[:16])

	if err := checkTemplate(tpl, uid); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if err := c.buildTemplate(ctx, tpl); err != nil {
			return "", err
		}
		if err := checkTemplate(tpl, uid); err != nil {
			return "", err
		}
	}
	if err := c.copyTree(ctx, tpl, c.dataDir); err != nil {
		return "", fmt.Errorf("copy template %s: %w", tpl, err)
	}
	return tpl, nil
}

// checkTemplate accepts only a complete data folder private to the server's
// OS user: a folder in a shared /tmp that someone else could have planted
// or altered must not become a data folder.
func checkTemplate(tpl string, uid int) error {
	st, err := os.Lstat(tpl)
	if err != nil {
		return err
	}
	if !st.IsDir() || st.Mode().Perm() != 0o700 || fileUID(st) != uid {
		return fmt.Errorf("template %s is not a folder of uid %d with mode 0700", tpl, uid)
	}
	if _, err := os.Stat(filepath.Join(tpl, "PG_VERSION")); err != nil {
		return fmt.Errorf("template %s is incomplete: %w", tpl, err)
	}
	return nil
}

func (c *Cluster) buildTemplate(ctx context.Context, tpl string) error {
	// Named like a cluster folder, with an owner file, so a build cut short
	// by a crash is reaped by sweepOrphans.
	build, err := os.MkdirTemp(os.TempDir(), tempPrefix+"template-")
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	defer os.RemoveAll(build)
	if err := os.WriteFile(filepath.Join(build, ownerFileName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("template: %w", err)
	}
	if err := c.user.chown(build); err != nil {
		return err
	}
	data := filepath.Join(build, "data")
	if err := c.mkdirOwned(data); err != nil {
		return err
	}
	if err := c.initdbInto(ctx, data); err != nil {
		return err
	}
	if err := os.Rename(data, tpl); err != nil {
		if _, statErr := os.Stat(tpl); statErr == nil {
			return nil // another process won the race
		}
		return fmt.Errorf("template: %w", err)
	}
	c.logf("pgcluster: cached an initialised data folder in %s", tpl)
	return nil
}

// copyTree copies the template src into the empty folder dst, with modes,
// owned by the server's OS user.
func (c *Cluster) copyTree(ctx context.Context, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case rel == ".":
			return nil // dst exists, owned and 0700 already
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			return c.user.lchown(target)
		case d.Type().IsRegular():
			if err := copyFile(p, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unexpected file type %v", p, d.Type())
		}
		return c.user.chown(target)
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// emptyDir removes the contents of dir, keeping dir (and its owner).
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("pgcluster: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("pgcluster: %w", err)
		}
	}
	return nil
}
