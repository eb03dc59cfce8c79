package api

import (
	"slices"
	"testing"

	"github.com/walhook/walhook/outbox"
)

func TestHoles(t *testing.T) {
	t.Parallel()
	var g holes
	g.add(3, 3)
	g.add(5, 9)
	g.add(12, 11) // empty: ignored
	g.add(20, 25)
	for _, tt := range []struct {
		id   int64
		want bool
	}{{4, false}, {3, true}, {3, false}, {7, true}, {5, true}, {9, true}, {10, false}, {26, false}, {22, true}} {
		if got := g.remove(tt.id); got != tt.want {
			t.Errorf("remove(%d) = %v, want %v", tt.id, got, tt.want)
		}
	}
	want := []outbox.IDRange{{Lo: 6, Hi: 6}, {Lo: 8, Hi: 8}, {Lo: 20, Hi: 21}, {Lo: 23, Hi: 25}}
	if !slices.Equal(g.ranges, want) {
		t.Fatalf("holes %v, want %v", g.ranges, want)
	}
	g.forgetThrough(20)
	if want := []outbox.IDRange{{Lo: 21, Hi: 21}, {Lo: 23, Hi: 25}}; !slices.Equal(g.ranges, want) {
		t.Fatalf("after forgetThrough(20): %v, want %v", g.ranges, want)
	}
	g.bound(1)
	if want := []outbox.IDRange{{Lo: 23, Hi: 25}}; !slices.Equal(g.ranges, want) {
		t.Fatalf("after bound(1): %v, want %v", g.ranges, want)
	}
}
