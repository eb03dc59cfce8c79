package config

import (
	"fmt"
	"reflect"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// walker checks the YAML node tree against the Go types before decoding. It
// exists because go-yaml's own errors name neither the key path nor the
// sink, and quote up to seven characters of the offending value, which may
// be a secret. It also records the line of every key for later validation
// messages.
type walker struct {
	file     string
	origLine func(int) int
	lines    map[string]int
	errs     []*Error
	visits   int
	anyNodes map[string]*yaml.Node // nodes decoded into `any` (filter values)
	// set holds the keys given a non-null value: Parse rejects an explicit
	// "batch_size: 0" but defaults "batch_size:" (e.g. an unset ${VAR}).
	set map[string]bool
}

// maxVisits bounds the work on hostile input (alias fan-out, "billion
// laughs"); a real config has a few hundred nodes.
const maxVisits = 100_000

func typeOf[T any]() reflect.Type { return reflect.TypeFor[T]() }

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// secretKeys are fields whose values must never appear in messages.
var secretKeys = map[reflect.Type]map[string]bool{
	typeOf[Config]():       {"encryption_key": true},
	typeOf[Server]():       {"api_tokens": true},
	typeOf[HTTPEndpoint](): {"encrypted_headers": true},
	typeOf[Sink]():         {"signing_secret": true},
	typeOf[Database]():     {"url": true},
	typeOf[State]():        {"url": true},
}

type fieldInfo struct {
	byName map[string]reflect.StructField
	names  []string
}

var fieldCache sync.Map // reflect.Type -> *fieldInfo

func fieldsOf(t reflect.Type) *fieldInfo {
	if fi, ok := fieldCache.Load(t); ok {
		return fi.(*fieldInfo)
	}
	fi := &fieldInfo{byName: map[string]reflect.StructField{}}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fi.byName[name] = f
		fi.names = append(fi.names, name)
	}
	fieldCache.Store(t, fi)
	return fi
}

func (w *walker) errorf(n *yaml.Node, p *keyPath, format string, args ...any) {
	line := 0
	if n != nil {
		line = w.origLine(n.Line)
	}
	w.errs = append(w.errs, &Error{File: w.file, Line: line, Key: p.String(), Msg: fmt.Sprintf(format, args...)})
}

func (w *walker) record(p *keyPath, n *yaml.Node) {
	if _, ok := w.lines[p.key]; !ok && n != nil && n.Line > 0 {
		w.lines[p.key] = w.origLine(n.Line)
	}
}

// walk checks node n against type t at path p. secret hides values.
func (w *walker) walk(n *yaml.Node, t reflect.Type, p *keyPath, secret bool) {
	w.visits++
	if w.visits > maxVisits {
		if w.visits == maxVisits+1 {
			w.errorf(n, nil, "the document is too large or uses too many aliases")
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return
		}
		n = n.Alias
	}
	w.record(p, n)
	if t.Kind() == reflect.Interface {
		if w.anyNodes == nil {
			w.anyNodes = map[string]*yaml.Node{}
		}
		w.anyNodes[p.key] = n
	}
	if t.Kind() == reflect.Interface || reflect.PointerTo(t).Implements(unmarshalerType) {
		if n.ShortTag() != "!!null" {
			w.set[p.key] = true
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			msg := strings.TrimPrefix(err.Error(), "yaml: ")
			if secret {
				msg = "is not valid (value not shown)"
			}
			w.errorf(n, p, "%s", msg)
		}
		return
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // an empty value leaves the default
	}
	w.set[p.key] = true
	switch t.Kind() {
	case reflect.Struct:
		w.walkStruct(n, t, p, secret)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.errorf(n, p, "must be a list, not %s", kindName(n))
			return
		}
		et := t.Elem()
		for i, e := range n.Content {
			if e.Kind == yaml.ScalarNode && e.ShortTag() == "!!null" {
				// go-yaml drops null items silently; a "- " with nothing
				// after it is almost always a mistake.
				w.errorf(e, p.index(i, ""), "list item is empty")
				continue
			}
			label := ""
			if et.Kind() == reflect.Struct {
				if _, ok := fieldsOf(et).byName["name"]; ok {
					label = nameOf(e)
				}
			}
			w.walk(e, et, p.index(i, label), secret)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.errorf(n, p, "must be a mapping, not %s", kindName(n))
			return
		}
		seen := map[string]int{}
		w.pairs(n, p, func(k, v *yaml.Node, merged bool) {
			if k.ShortTag() == "!!null" {
				w.errorf(k, p, "has an empty key")
				return
			}
			if prev, dup := seen[k.Value]; dup {
				if !merged {
					w.errorf(k, p.entry(k.Value), "is given twice (first at line %d)", prev)
				}
				return
			}
			seen[k.Value] = w.origLine(k.Line)
			kp := p.entry(k.Value)
			w.record(kp, k)
			w.walk(v, t.Elem(), kp, secret)
		})
	default:
		w.walkScalar(n, t, p, secret)
	}
}

func (w *walker) walkStruct(n *yaml.Node, t reflect.Type, p *keyPath, secret bool) {
	if n.Kind != yaml.MappingNode {
		w.errorf(n, p, "must be a mapping of keys, not %s", kindName(n))
		return
	}
	fi := fieldsOf(t)
	seen := map[string]int{}
	w.pairs(n, p, func(k, v *yaml.Node, merged bool) {
		kp := p.field(k.Value)
		f, ok := fi.byName[k.Value]
		if !ok {
			w.errorf(k, kp, "unknown key%s", Suggest(k.Value, fi.names))
			return
		}
		if prev, dup := seen[k.Value]; dup {
			if !merged {
				w.errorf(k, kp, "is given twice (first at line %d)", prev)
			}
			return
		}
		seen[k.Value] = w.origLine(k.Line)
		w.record(kp, k)
		w.walk(v, f.Type, kp, secret || secretKeys[t][k.Value])
	})
}

// pairs calls fn for each key/value of a mapping, following YAML merge keys
// (<<). Merged pairs come with merged=true: they may be overridden.
func (w *walker) pairs(n *yaml.Node, p *keyPath, fn func(k, v *yaml.Node, merged bool)) {
	w.pairsDepth(n, p, fn, false, 0)
}

func (w *walker) pairsDepth(n *yaml.Node, p *keyPath, fn func(k, v *yaml.Node, merged bool), merged bool, depth int) {
	if depth > 8 {
		w.errorf(n, p, "merge keys (<<) nest too deeply")
		return
	}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			w.errorf(k, p, "keys must be plain text, not %s", kindName(k))
			continue
		}
		fn(k, v, merged)
	}
	for _, m := range merges {
		if m.Kind == yaml.AliasNode && m.Alias != nil {
			m = m.Alias
		}
		var list []*yaml.Node
		switch m.Kind {
		case yaml.MappingNode:
			list = []*yaml.Node{m}
		case yaml.SequenceNode:
			list = m.Content
		default:
			w.errorf(m, p, "a merge (<<) must refer to a mapping")
			continue
		}
		for _, e := range list {
			if e.Kind == yaml.AliasNode && e.Alias != nil {
				e = e.Alias
			}
			if e.Kind != yaml.MappingNode {
				w.errorf(e, p, "a merge (<<) must refer to a mapping")
				continue
			}
			w.visits += len(e.Content)
			if w.visits > maxVisits {
				return
			}
			w.pairsDepth(e, p, fn, true, depth+1)
		}
	}
}

func (w *walker) walkScalar(n *yaml.Node, t reflect.Type, p *keyPath, secret bool) {
	want := "a single value"
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		want = "a whole number"
	case reflect.Bool:
		want = "true or false"
	case reflect.String:
		want = "text"
	}
	if n.Kind != yaml.ScalarNode {
		w.errorf(n, p, "must be %s, not %s", want, kindName(n))
		return
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		if secret {
			w.errorf(n, p, "must be %s (value not shown)", want)
			return
		}
		w.errorf(n, p, "%s is not %s", quote(n.Value), want)
	}
}

// nameOf finds the scalar "name" key of a mapping node, so messages can say
// sinks[orders] instead of sinks[3].
func nameOf(n *yaml.Node) string {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k, v := n.Content[i], n.Content[i+1]; k.Kind == yaml.ScalarNode && k.Value == "name" && v.Kind == yaml.ScalarNode {
			return v.Value
		}
	}
	return ""
}

// plainValue decodes a filter value like go-yaml does, except that a plain
// scalar that looks like a timestamp stays the string the user wrote: change
// messages carry dates and times as strings (docs/reference.md#44-values), and
// values that come through the JSON API are strings too.
func plainValue(n *yaml.Node) any {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch {
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!timestamp" && n.Style&(yaml.TaggedStyle) == 0:
		return n.Value
	case n.Kind == yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			out = append(out, plainValue(c))
		}
		return out
	}
	var v any
	_ = n.Decode(&v) // the walker already decoded this node without error
	return v
}
