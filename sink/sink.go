package sink

import (
	"strings"
	"sync"

	"github.com/walhook/walhook/config"
)

// Sink is a sink as stored in the state schema. Its Tables and
// WebhookSources (in Config) are the sink's subscriptions.
type Sink struct {
	ID     int64
	UUID   string
	Name   string
	Config config.Sink
	Paused bool
}

// Route is one sink compiled for the capture path: the per-change checks
// (action, filters) and the rendering, with column positions cached per
// relation so the hot path does no name lookups.
type Route struct {
	Sink    *Sink
	actions map[Action]bool
	filters []filter

	mu       sync.Mutex
	resolved map[*Relation]*resolved
}

type resolved struct {
	filterCols []int
	groupCols  []int
}

// NewRoute compiles a sink. Filters were validated with the config, so
// compiling cannot fail.
func NewRoute(s *Sink) *Route {
	r := &Route{Sink: s, actions: map[Action]bool{Read: true}, resolved: map[*Relation]*resolved{}}
	actions := s.Config.Actions
	if len(actions) == 0 {
		actions = config.Actions
	}
	for _, a := range actions {
		r.actions[Action(a)] = true
	}
	for _, f := range s.Config.Filters {
		r.filters = append(r.filters, compileFilter(f))
	}
	return r
}

func (r *Route) resolve(rel *Relation) *resolved {
	r.mu.Lock()
	defer r.mu.Unlock()
	if res, ok := r.resolved[rel]; ok {
		return res
	}
	res := &resolved{}
	for _, f := range r.filters {
		res.filterCols = append(res.filterCols, rel.ColumnIndex(f.column))
	}
	if cols, ok := r.Sink.Config.GroupBy[rel.QualifiedName()]; ok {
		for _, name := range cols {
			res.groupCols = append(res.groupCols, rel.ColumnIndex(name))
		}
	} else {
		for i, c := range rel.Columns {
			if c.Key {
				res.groupCols = append(res.groupCols, i)
			}
		}
	}
	if len(r.resolved) > 1000 { // relations are replaced on ALTER TABLE; forget old ones
		clear(r.resolved)
	}
	r.resolved[rel] = res
	return res
}

// Match reports whether the sink wants this change: its action is
// subscribed and every filter holds.
func (r *Route) Match(c *Change) bool {
	if !r.actions[c.Action] {
		return false
	}
	if len(r.filters) == 0 {
		return true
	}
	res := r.resolve(c.Rel)
	for i, f := range r.filters {
		if !f.holds(c, res.filterCols[i]) {
			return false
		}
	}
	return true
}

// GroupKey is the change's ordering group within the sink: the table and
// the values of its primary key (or the sink's group_by columns), e.g.
// `public.orders:1234`. A group_by column missing from the record (a delete
// without REPLICA IDENTITY FULL) falls back to the key columns.
func (r *Route) GroupKey(c *Change) string {
	res := r.resolve(c.Rel)
	rec := c.Record()
	cols := res.groupCols
	for _, i := range cols {
		if i < 0 || i >= len(rec) || rec[i] == nil {
			cols = nil
			break
		}
	}
	if cols == nil {
		for i, col := range c.Rel.Columns {
			if col.Key && i < len(rec) && rec[i] != nil {
				cols = append(cols, i)
			}
		}
	}
	var b strings.Builder
	b.WriteString(c.Rel.Schema)
	b.WriteByte('.')
	b.WriteString(c.Rel.Table)
	b.WriteByte(':')
	for n, i := range cols {
		if n > 0 {
			b.WriteByte(',')
		}
		b.Write(rec[i])
	}
	return b.String()
}

// Router finds the sinks of a table or webhook source. It is immutable:
// when sinks change, the owner builds a new one and swaps it in.
type Router struct {
	routes    []*Route
	byTable   map[string][]*Route
	bySchema  map[string][]*Route
	byWebhook map[string][]*Route
}

// NewRouter compiles sinks. Paused sinks keep capturing: pause stops
// delivery only.
func NewRouter(sinks []*Sink) *Router {
	r := &Router{byTable: map[string][]*Route{}, bySchema: map[string][]*Route{}, byWebhook: map[string][]*Route{}}
	for _, s := range sinks {
		rt := NewRoute(s)
		r.routes = append(r.routes, rt)
		for _, t := range s.Config.Tables {
			if schema, ok := strings.CutSuffix(t, ".*"); ok {
				r.bySchema[schema] = append(r.bySchema[schema], rt)
			} else {
				r.byTable[t] = append(r.byTable[t], rt)
			}
		}
		for _, w := range s.Config.WebhookSources {
			r.byWebhook[w] = append(r.byWebhook[w], rt)
		}
	}
	return r
}

// Routes are every sink's routes.
func (r *Router) Routes() []*Route { return r.routes }

// ForTable returns the routes subscribed to a table, directly or through
// "schema.*", each once.
func (r *Router) ForTable(schema, table string) []*Route {
	direct := r.byTable[schema+"."+table]
	wild := r.bySchema[schema]
	if len(wild) == 0 {
		return direct
	}
	if len(direct) == 0 {
		return wild
	}
	out := append([]*Route(nil), direct...)
	for _, w := range wild {
		dup := false
		for _, d := range direct {
			dup = dup || d == w
		}
		if !dup {
			out = append(out, w)
		}
	}
	return out
}

// ForWebhook returns the routes subscribed to a webhook source.
func (r *Router) ForWebhook(name string) []*Route { return r.byWebhook[name] }

// RouteOf returns a sink's route by sink id, or nil.
func (r *Router) RouteOf(sinkID int64) *Route {
	for _, rt := range r.routes {
		if rt.Sink.ID == sinkID {
			return rt
		}
	}
	return nil
}
