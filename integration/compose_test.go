package integration

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	walhookconfig "github.com/walhook/walhook/config"
)

// There is no Docker engine in CI, so reading docker-compose.yml (and the
// files it refers to) is the test: it catches the drift that breaks
// `docker compose up` without anyone running it, such as a renamed config
// key, a moved file or a lost wal_level.

// composeRepoRoot is where docker-compose.yml lives, relative to this package.
const composeRepoRoot = ".."

// composeFile is the part of the Compose file the test reads. Fields with
// a short and a long syntax are kept as nodes and normalised.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Configs  map[string]struct {
		Content string `yaml:"content"`
		File    string `yaml:"file"`
	} `yaml:"configs"`
}

type composeService struct {
	Image       string      `yaml:"image"`
	Build       yaml.Node   `yaml:"build"`
	Command     yaml.Node   `yaml:"command"`
	Ports       []yaml.Node `yaml:"ports"`
	Volumes     []yaml.Node `yaml:"volumes"`
	DependsOn   yaml.Node   `yaml:"depends_on"`
	Healthcheck *struct {
		Test yaml.Node `yaml:"test"`
	} `yaml:"healthcheck"`
	Configs []struct {
		Source string `yaml:"source"`
		Target string `yaml:"target"`
	} `yaml:"configs"`
}

func composeLoad(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(composeRepoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return f
}

func composeSvc(t *testing.T, f composeFile, name string) composeService {
	t.Helper()
	s, ok := f.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml: no service %q (have %v)", name, composeKeys(f.Services))
	}
	return s
}

// composeWords is a command (string or list) as a list.
func composeWords(t *testing.T, n yaml.Node) []string {
	t.Helper()
	switch n.Kind {
	case 0:
		return nil
	case yaml.ScalarNode:
		return strings.Fields(n.Value)
	default:
		var list []string
		if err := n.Decode(&list); err != nil {
			t.Fatalf("line %d: %v", n.Line, err)
		}
		return list
	}
}

// composePorts are the container ports published to the host, short
// ("5432:5432", "127.0.0.1:5432:5432/tcp") and long ({target: 5432}) forms.
func composePorts(t *testing.T, ports []yaml.Node) []string {
	t.Helper()
	var out []string
	for _, n := range ports {
		if n.Kind == yaml.MappingNode {
			var long struct {
				Target any `yaml:"target"`
			}
			if err := n.Decode(&long); err != nil {
				t.Fatalf("line %d: %v", n.Line, err)
			}
			out = append(out, fmt.Sprint(long.Target))
			continue
		}
		parts := strings.Split(n.Value, ":")
		target, _, _ := strings.Cut(parts[len(parts)-1], "/")
		out = append(out, target)
	}
	return out
}

// composeMounts maps a service's bind/volume targets to their sources.
func composeMounts(t *testing.T, vols []yaml.Node) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, n := range vols {
		if n.Kind == yaml.MappingNode {
			var long struct{ Source, Target string }
			if err := n.Decode(&long); err != nil {
				t.Fatalf("line %d: %v", n.Line, err)
			}
			m[long.Target] = long.Source
			continue
		}
		parts := strings.Split(n.Value, ":")
		if len(parts) >= 2 {
			m[parts[1]] = parts[0]
		}
	}
	return m
}

// composeDeps maps depends_on (list or map form) to conditions.
func composeDeps(t *testing.T, n yaml.Node) map[string]string {
	t.Helper()
	deps := map[string]string{}
	switch n.Kind {
	case 0:
	case yaml.SequenceNode:
		var list []string
		if err := n.Decode(&list); err != nil {
			t.Fatal(err)
		}
		for _, d := range list {
			deps[d] = "service_started"
		}
	default:
		var long map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := n.Decode(&long); err != nil {
			t.Fatal(err)
		}
		for d, v := range long {
			deps[d] = v.Condition
		}
	}
	return deps
}

func composeKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func TestComposeServices(t *testing.T) {
	f := composeLoad(t)
	for _, name := range []string{"postgres", "walhook", "receiver"} {
		composeSvc(t, f, name)
	}
	if img := composeSvc(t, f, "receiver").Image; img == "" {
		t.Error("receiver has no image")
	}
}

func TestComposePostgres(t *testing.T) {
	f := composeLoad(t)
	pg := composeSvc(t, f, "postgres")
	if !strings.HasPrefix(pg.Image, "postgres:") {
		t.Errorf("postgres image %q", pg.Image)
	}
	cmd := composeWords(t, pg.Command)
	settings := map[string]string{}
	for i, w := range cmd {
		var kv string
		switch {
		case w == "-c" && i+1 < len(cmd):
			kv = cmd[i+1]
		case strings.HasPrefix(w, "-c") && len(w) > 2:
			kv = w[2:]
		case strings.HasPrefix(w, "--") && strings.Contains(w, "="):
			kv = w[2:]
		default:
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		settings[strings.ReplaceAll(k, "-", "_")] = v
	}
	if settings["wal_level"] != "logical" {
		t.Errorf("postgres command %v: wal_level must be logical", cmd)
	}
	for _, k := range []string{"max_replication_slots", "max_wal_senders"} {
		if settings[k] == "" || settings[k] == "0" {
			t.Errorf("postgres command %v: %s not set", cmd, k)
		}
	}
	if !slices.Contains(composePorts(t, pg.Ports), "5432") {
		t.Errorf("postgres does not publish 5432")
	}
	if pg.Healthcheck == nil || len(composeWords(t, pg.Healthcheck.Test)) == 0 {
		t.Error("postgres has no healthcheck, so walhook cannot wait for it")
	}

	// The sample sink's table is created when the volume is initialised.
	var initSQL string
	for _, c := range pg.Configs {
		if strings.HasPrefix(c.Target, "/docker-entrypoint-initdb.d/") {
			initSQL += f.Configs[c.Source].Content
		}
	}
	if !strings.Contains(initSQL, "CREATE TABLE public.orders") {
		t.Errorf("no init script creates public.orders, which the sample sink streams")
	}
}

func TestComposeWalhook(t *testing.T) {
	f := composeLoad(t)
	wh := composeSvc(t, f, "walhook")

	var build struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	}
	switch wh.Build.Kind {
	case yaml.ScalarNode:
		build.Context = wh.Build.Value
	case yaml.MappingNode:
		if err := wh.Build.Decode(&build); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("walhook has no build")
	}
	if build.Dockerfile == "" {
		build.Dockerfile = "Dockerfile"
	}
	dockerfile, err := os.ReadFile(filepath.Join(composeRepoRoot, build.Context, build.Dockerfile))
	if err != nil {
		t.Fatalf("walhook build: %v", err)
	}
	if !bytes.Contains(dockerfile, []byte("./cmd/walhook")) {
		t.Errorf("%s does not build ./cmd/walhook", build.Dockerfile)
	}

	if !slices.Contains(composePorts(t, wh.Ports), "7376") {
		t.Errorf("walhook does not publish 7376")
	}
	deps := composeDeps(t, wh.DependsOn)
	if cond, ok := deps["postgres"]; !ok || cond != "service_healthy" {
		t.Errorf("walhook must depend on postgres being healthy: depends_on %v", deps)
	}

	// The config file walhook is told to read is mounted from the repo.
	cmd := composeWords(t, wh.Command)
	i := slices.Index(cmd, "-c")
	if len(cmd) == 0 || cmd[0] != "run" || i < 0 || i+1 >= len(cmd) {
		t.Fatalf("walhook command %v: want run -c FILE", cmd)
	}
	src, ok := composeMounts(t, wh.Volumes)[cmd[i+1]]
	if !ok {
		t.Fatalf("walhook reads %s, which no volume mounts", cmd[i+1])
	}
	if _, err := os.Stat(filepath.Join(composeRepoRoot, src)); err != nil {
		t.Fatalf("mounted config: %v", err)
	}
	composeCheckConfig(t, filepath.Join(composeRepoRoot, src))
}

// composeCheckConfig loads the mounted config the way `walhook run` does
// (expansion with compose's environment left unset, so the defaults apply;
// strict decoding; validation), so a renamed or misspelt key fails here,
// and checks it uses the compose hostnames.
func composeCheckConfig(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unset := func(string) (string, bool) { return "", false }
	cfg, err := walhookconfig.Parse(path, data, unset)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !slices.Contains(cfg.Server.APITokens, "dev-token") {
		t.Errorf("%s: api_tokens %q: want the ${WALHOOK_API_TOKEN:-dev-token} default", path, cfg.Server.APITokens)
	}
	if u, err := url.Parse(cfg.Database.URL); err != nil || u.Hostname() != "postgres" {
		t.Errorf("%s: database.url %q must point at the compose service postgres", path, cfg.Database.URL)
	}
	if !strings.HasPrefix(cfg.Server.Listen, "0.0.0.0:7376") && !strings.HasPrefix(cfg.Server.Listen, ":7376") {
		t.Errorf("%s: server.listen %q is not reachable through the published port", path, cfg.Server.Listen)
	}
	endpoints := map[string]string{}
	for _, e := range cfg.HTTPEndpoints {
		endpoints[e.Name] = e.URL
	}
	var orders bool
	for _, s := range cfg.Sinks {
		u, err := url.Parse(endpoints[s.Endpoint])
		if err != nil || u.Hostname() != "receiver" {
			t.Errorf("%s: sink %s: endpoint %q must point at the compose service receiver", path, s.Name, endpoints[s.Endpoint])
		}
		orders = orders || slices.Contains(s.Tables, "public.orders")
	}
	if !orders {
		t.Errorf("%s: no sink on public.orders", path)
	}
}
