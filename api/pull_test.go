package api

import (
	"encoding/base64"
	"slices"
	"testing"
	"time"

	"github.com/walhook/walhook/outbox"
)

// Ack ids round-trip, and anything else is refused as not one.
func TestAckIDs(t *testing.T) {
	t.Parallel()
	id := encodeAckID(7, 123, 456789)
	sink, ref, ok := decodeAckID(id)
	if !ok || sink != 7 || ref != (outbox.PullRef{ClaimID: 123, MessageID: 456789}) {
		t.Fatalf("round trip of %q: %d %+v %v", id, sink, ref, ok)
	}
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, bad := range []string{"", "garbage!", enc("v2.7.1.2"), enc("v1.7.1"), enc("v1.7.1.2.3"), enc("v1.7.0.2"), enc("v1.7.-1.2"), enc("v1.x.1.2"), id + "=="} {
		if _, _, ok := decodeAckID(bad); ok {
			t.Errorf("%q decoded as an ack id", bad)
		}
	}
	refs, byRef, err := ackIDs([]string{id, id}, 7, "s")
	if err != nil || len(refs) != 1 || byRef[refs[0]] != id {
		t.Errorf("duplicate ids: %v %v %v", refs, byRef, err)
	}
	if _, _, err := ackIDs([]string{id}, 8, "other"); err == nil {
		t.Errorf("an id of sink 7 was accepted for sink 8")
	}
}

// What receives handed out is kept for their acks until an outcome names
// it, its visibility timeout passes, or newer batches need the room.
func TestHandedOut(t *testing.T) {
	t.Parallel()
	batch := func(claim int64, payload int) *outbox.Batch {
		return &outbox.Batch{SinkID: 1, ClaimID: claim, Messages: []outbox.Message{{ID: claim * 10, Group: "g", Payload: make([]byte, payload)}}}
	}
	claims := func(bs []*outbox.Batch) (ids []int64) {
		for _, b := range bs {
			ids = append(ids, b.ClaimID)
		}
		return ids
	}
	h := &handedOut{limit: 3000}
	h.add(batch(1, 1000), time.Minute)
	h.add(batch(2, 1000), time.Minute)
	h.add(batch(3, 10), time.Millisecond)
	if got := claims(h.take([]outbox.PullRef{{ClaimID: 2, MessageID: 20}, {ClaimID: 2, MessageID: 21}, {ClaimID: 9}})); !slices.Equal(got, []int64{2}) {
		t.Fatalf("take of claims 2 and 9: %v", got)
	}
	if got := h.take([]outbox.PullRef{{ClaimID: 2}}); got != nil {
		t.Fatalf("claim 2 was kept after it was taken: %v", claims(got))
	}
	time.Sleep(5 * time.Millisecond)
	h.add(batch(4, 2000), time.Minute) // over the bound: the oldest (1) goes, and 3, whose visibility timeout passed
	h.add(batch(5, 10), time.Minute)
	for claim, kept := range map[int64]bool{1: false, 3: false, 4: true, 5: true} {
		if got := h.take([]outbox.PullRef{{ClaimID: claim}}) != nil; got != kept {
			t.Errorf("claim %d kept: %v, want %v", claim, got, kept)
		}
	}
	if h.bytes != 0 || len(h.byClaim) != 0 {
		t.Errorf("after taking all: %d bytes in %d batches", h.bytes, len(h.byClaim))
	}
}
