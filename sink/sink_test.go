package sink

import (
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
)

func testRel() *Relation {
	return &Relation{Schema: "public", Table: "orders", FullIdentity: true, Columns: []Column{
		{Name: "id", Key: true}, {Name: "status"}, {Name: "total"}, {Name: "note"},
	}}
}

func change(action Action, newV, oldV []string) *Change {
	conv := func(vs []string) [][]byte {
		if vs == nil {
			return nil
		}
		out := make([][]byte, len(vs))
		for i, v := range vs {
			if v != "" {
				out[i] = []byte(v)
			}
		}
		return out
	}
	return &Change{Rel: testRel(), Action: action, New: conv(newV), Old: conv(oldV),
		CommitLSN: 24023128, CommitIdx: 0, CommitTime: time.Date(2024, 3, 20, 15, 30, 0, 123456000, time.UTC)}
}

func TestFilters(t *testing.T) {
	t.Parallel()
	row := []string{`1`, `"shipped"`, `12.50`, `null`}
	cases := []struct {
		f    config.Filter
		c    *Change
		want bool
	}{
		{config.Filter{Column: "status", Op: "=", Value: "shipped"}, change(Insert, row, nil), true},
		{config.Filter{Column: "status", Op: "!=", Value: "shipped"}, change(Insert, row, nil), false},
		{config.Filter{Column: "total", Op: ">", Value: 12}, change(Insert, row, nil), true},
		{config.Filter{Column: "total", Op: "<=", Value: 12.5}, change(Insert, row, nil), true},
		{config.Filter{Column: "total", Op: "<", Value: 3}, change(Insert, row, nil), false},
		{config.Filter{Column: "id", Op: ">=", Value: "1"}, change(Insert, row, nil), true},
		{config.Filter{Column: "status", Op: "in", Value: []any{"new", "shipped"}}, change(Insert, row, nil), true},
		{config.Filter{Column: "status", Op: "not_in", Value: []any{"new", "shipped"}}, change(Insert, row, nil), false},
		{config.Filter{Column: "note", Op: "is_null"}, change(Insert, row, nil), true},
		{config.Filter{Column: "note", Op: "is_not_null"}, change(Insert, row, nil), false},
		{config.Filter{Column: "status", Op: "is_null"}, change(Insert, row, nil), false},
		{config.Filter{Column: "note", Op: "=", Value: "x"}, change(Insert, row, nil), false},
		{config.Filter{Column: "missing", Op: "=", Value: "x"}, change(Insert, row, nil), false},
		{config.Filter{Column: "status", Op: "changed"}, change(Update, row, []string{`1`, `"new"`, `12.50`, `null`}), true},
		{config.Filter{Column: "total", Op: "changed"}, change(Update, row, []string{`1`, `"new"`, `12.50`, `null`}), false},
		{config.Filter{Column: "status", Op: "changed"}, change(Insert, row, nil), true},
		{config.Filter{Column: "status", Op: "changed"}, change(Delete, nil, row), false},
		// A delete without the whole old row: a filter on a missing column does not hold.
		{config.Filter{Column: "status", Op: "=", Value: "shipped"}, change(Delete, nil, []string{`1`, "", "", ""}), false},
	}
	for _, tc := range cases {
		r := NewRoute(&Sink{Name: "s", Config: config.Sink{Filters: []config.Filter{tc.f}}})
		if got := r.Match(tc.c); got != tc.want {
			t.Errorf("%s %s %v on %s: got %v, want %v", tc.f.Column, tc.f.Op, tc.f.Value, tc.c.Action, got, tc.want)
		}
	}
}

func TestActionsAndGroupKey(t *testing.T) {
	t.Parallel()
	r := NewRoute(&Sink{Name: "s", Config: config.Sink{Actions: []string{"insert"}, GroupBy: map[string][]string{"public.orders": {"status", "id"}}}})
	row := []string{`1`, `"shipped"`, `12.50`, `null`}
	if !r.Match(change(Insert, row, nil)) || r.Match(change(Update, row, row)) || !r.Match(change(Read, row, nil)) {
		t.Error("actions: insert and read should pass, update not")
	}
	if g := r.GroupKey(change(Insert, row, nil)); g != `public.orders:"shipped",1` {
		t.Errorf("group_by key = %s", g)
	}
	// group_by columns missing from a delete's record fall back to the key.
	if g := r.GroupKey(change(Delete, nil, []string{`7`, "", "", ""})); g != `public.orders:7` {
		t.Errorf("fallback key = %s", g)
	}
	pk := NewRoute(&Sink{Name: "s"})
	if g := pk.GroupKey(change(Insert, row, nil)); g != `public.orders:1` {
		t.Errorf("primary key group = %s", g)
	}
}

func TestRenderShapes(t *testing.T) {
	t.Parallel()
	s := &Sink{Name: "orders_webhook", UUID: "f47ac10b-58cc-4372-a567-0e02b2c3d479"}
	r := NewRoute(s)
	upd := change(Update, []string{`1234`, `"shipped"`, `1`, `null`}, []string{`1234`, `"pending"`, `1`, `null`})
	got := string(r.Render(nil, upd))
	want := `{"record":{"id":1234,"status":"shipped","total":1,"note":null},"changes":{"status":"pending"},"action":"update",` +
		`"metadata":{"table_schema":"public","table_name":"orders","commit_timestamp":"2024-03-20T15:30:00.123456Z","commit_lsn":24023128,` +
		`"commit_idx":0,"idempotency_key":"MjQwMjMxMjg6MA==","consumer":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","name":"orders_webhook"}}}`
	if got != want {
		t.Errorf("change shape:\n got %s\nwant %s", got, want)
	}
	s.Config.Message = "row"
	del := change(Delete, nil, []string{`1234`, "", "", ""})
	got = string(NewRoute(s).Render(nil, del))
	if !strings.HasPrefix(got, `{"record":{"id":1234},"metadata":{`) || !strings.Contains(got, `"deleted":true`) || strings.Contains(got, `"action"`) {
		t.Errorf("row shape of a delete: %s", got)
	}
	w := &Webhook{Source: "hook", Key: "hook.ABC", Body: []byte(`{"a":1}`), ReceivedAt: time.Unix(0, 0)}
	got = string(r.RenderWebhook(nil, w))
	if !strings.HasPrefix(got, `{"record":{"a":1},"action":"insert","metadata":{"webhook":"hook","key":"hook.ABC"`) {
		t.Errorf("webhook shape: %s", got)
	}
}

func TestAppendJSONString(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain":     `"plain"`,
		"q\"b\\":    `"q\"b\\"`,
		"nl\n\x01":  `"nl\n\u0001"`,
		"é\u2028":   `"é\u2028"`,
		"bad\xffok": `"bad\ufffdok"`,
	} {
		if got := string(AppendJSONString(nil, in)); got != want {
			t.Errorf("%q: got %s, want %s", in, got, want)
		}
	}
}

func TestRouterForTable(t *testing.T) {
	t.Parallel()
	a := &Sink{ID: 1, Name: "a", Config: config.Sink{Tables: []string{"public.orders"}}}
	b := &Sink{ID: 2, Name: "b", Config: config.Sink{Tables: []string{"public.*", "public.orders"}}}
	c := &Sink{ID: 3, Name: "c", Config: config.Sink{Tables: []string{"other.*"}, WebhookSources: []string{"w"}}}
	r := NewRouter([]*Sink{a, b, c})
	if got := r.ForTable("public", "orders"); len(got) != 2 {
		t.Errorf("public.orders routes: %d, want 2 (each sink once)", len(got))
	}
	if got := r.ForTable("public", "users"); len(got) != 1 || got[0].Sink != b {
		t.Errorf("public.users routes: %v", got)
	}
	if got := r.ForWebhook("w"); len(got) != 1 || got[0].Sink != c {
		t.Errorf("webhook routes: %v", got)
	}
}
