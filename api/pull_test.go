package api

import (
	"encoding/base64"
	"testing"

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
