package api

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestOpenAPIMatchesRouter holds docs/api.yaml against the router: every
// registered route is described, and every described operation exists, so
// a route added without docs (or docs left behind by a removed route)
// fails here.
func TestOpenAPIMatchesRouter(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../docs/api.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                          `yaml:"openapi"`
		Paths   map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docs/api.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("docs/api.yaml: openapi %q, want 3.1.x", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths {
		for key := range item {
			switch key {
			case "get", "put", "post", "delete", "options", "head", "patch", "trace":
				documented[strings.ToUpper(key)+" "+path] = true
			}
		}
	}

	s := newTestServer(t, "tok")
	registered := map[string]bool{}
	for _, p := range s.mux.patterns {
		registered[openAPIRoute(t, p)] = true
	}
	if len(registered) < 10 {
		t.Fatalf("only %d routes registered: is the router's pattern list still collected?", len(registered))
	}
	for _, r := range slices.Sorted(maps.Keys(registered)) {
		if !documented[r] {
			t.Errorf("route %s is registered but not described in docs/api.yaml", r)
		}
	}
	for _, r := range slices.Sorted(maps.Keys(documented)) {
		if !registered[r] {
			t.Errorf("docs/api.yaml describes %s, which the router does not register", r)
		}
	}
}

// openAPIRoute turns a ServeMux pattern ("GET /api/sinks/{name}") into
// the method and OpenAPI path it is documented under: "{$}" (exactly
// this path) is dropped, and a subtree pattern ending in "/" is
// documented with a {file} parameter for the rest.
func openAPIRoute(t *testing.T, pattern string) string {
	t.Helper()
	method, path, ok := strings.Cut(pattern, " ")
	if !ok || method == "" || !strings.HasPrefix(path, "/") {
		t.Fatalf("route %q has no method: every route names one", pattern)
	}
	path = strings.TrimSuffix(path, "{$}")
	if path == "" {
		path = "/"
	}
	if path != "/" && strings.HasSuffix(path, "/") {
		path += "{file}"
	}
	return method + " " + strings.ReplaceAll(path, "...}", "}")
}

// TestOpenAPIRefsResolve checks that every $ref in docs/api.yaml names a
// component that exists, so the file stays usable by OpenAPI tools.
func TestOpenAPIRefsResolve(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../docs/api.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		t.Fatalf("docs/api.yaml: %v", err)
	}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if k, v := n.Content[i], n.Content[i+1]; k.Value == "$ref" {
					if lookup(&root, v.Value) == nil {
						t.Errorf("docs/api.yaml line %d: $ref %q names nothing", v.Line, v.Value)
					}
				}
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&root)
}

// lookup resolves a local JSON pointer ("#/components/schemas/Sink").
func lookup(root *yaml.Node, ref string) *yaml.Node {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil
	}
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, part := range strings.Split(rest, "/") {
		var next *yaml.Node
		for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return n
}
