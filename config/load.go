package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DefaultPath and EnvPath are where the config is looked for when no -c flag
// is given (docs/reference.md#11-service-commands).
const (
	DefaultPath = "walhook.yaml"
	EnvPath     = "WALHOOK_CONFIG"
)

// ResolvePath applies the documented lookup order
// (docs/reference.md#11-service-commands) so every command finds the same
// file: the -c flag, else $WALHOOK_CONFIG, else ./walhook.yaml.
func ResolvePath(flag string) string {
	if flag != "" {
		return flag
	}
	if p := os.Getenv(EnvPath); p != "" {
		return p
	}
	return DefaultPath
}

// Load reads, expands, decodes, defaults and validates the file at path with
// the process environment. The error, if any, lists every problem found, one
// per line.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: config file not found (use -c FILE or set %s)", path, EnvPath)
		}
		return nil, err
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse is Load without the file system and process environment, so tests,
// `walhook dev` and `config check` share one code path. path only labels
// errors and is stored in Config.Path.
func Parse(path string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	expanded, lineMap, errs := expandEnv(path, data, lookup)
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	origLine := func(l int) int {
		if lineMap != nil && l >= 1 && l <= len(lineMap) {
			return lineMap[l-1]
		}
		return l
	}

	// Pass 1: the node tree, for positions and for precise, secret-safe
	// messages about unknown keys and wrong types.
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	var doc yaml.Node
	err := dec.Decode(&doc)
	switch {
	case errors.Is(err, io.EOF):
		doc = yaml.Node{}
	case err != nil:
		return nil, yamlError(path, err, origLine)
	default:
		var extra yaml.Node
		if err := dec.Decode(&extra); err == nil {
			return nil, &Error{File: path, Line: origLine(extra.Line), Msg: "only one YAML document is allowed (remove the extra ---)"}
		} else if !errors.Is(err, io.EOF) {
			return nil, yamlError(path, err, origLine)
		}
	}
	w := &walker{file: path, origLine: origLine, lines: map[string]int{}, set: map[string]bool{}}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	if root.Kind != 0 && !(root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null") {
		if root.Kind != yaml.MappingNode {
			return nil, &Error{File: path, Line: origLine(root.Line), Msg: "the top level must be a mapping (database:, server:, sinks:, ...), not " + kindName(root)}
		}
		w.walk(root, typeOf[Config](), &keyPath{}, false)
	}
	if len(w.errs) > 0 {
		return nil, joinErrors(w.errs)
	}

	// Pass 2: the strict decode proper. The walker above should have caught
	// everything this can report; this is the backstop.
	cfg := &Config{}
	sdec := yaml.NewDecoder(bytes.NewReader(expanded))
	sdec.KnownFields(true)
	if err := sdec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(path, err, origLine)
	}
	cfg.Path = path
	for i := range cfg.Sinks {
		for j := range cfg.Sinks[i].Filters {
			key := (&keyPath{}).field("sinks").index(i, "").field("filters").index(j, "").field("value").key
			if n, ok := w.anyNodes[key]; ok {
				cfg.Sinks[i].Filters[j].Value = plainValue(n)
			}
		}
	}

	c := &checker{file: path, lines: w.lines}
	cfg.applyDefaults(func(key string) bool { return w.set[key] })
	cfg.validate(c)
	if len(c.errs) > 0 {
		return nil, joinErrors(c.errs)
	}
	return cfg, nil
}

var (
	yamlLineRe     = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	yamlSnippetRe  = regexp.MustCompile(" `[^`]*`")
	yamlTypeNameRe = regexp.MustCompile(`\bconfig\.`)
)

// yamlError turns go-yaml's errors into file:line lines. Quoted value
// snippets are dropped: they may be the first characters of a secret.
func yamlError(file string, err error, origLine func(int) int) error {
	var lines []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		lines = te.Errors
	} else {
		lines = []string{err.Error()}
	}
	var errs []*Error
	for _, l := range lines {
		l = strings.TrimPrefix(l, "yaml: ")
		l = yamlSnippetRe.ReplaceAllString(l, "")
		l = yamlTypeNameRe.ReplaceAllString(l, "")
		e := &Error{File: file, Msg: l}
		if m := yamlLineRe.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			e.Line, e.Msg = origLine(n), m[2]
		}
		errs = append(errs, e)
	}
	return joinErrors(errs)
}
