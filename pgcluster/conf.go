package pgcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

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
