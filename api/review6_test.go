package api

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/walhook/walhook/outbox"
)

// Review 6: appendAckID is the id fmt and EncodeToString built, for any
// ids (the largest too, past its 64-byte scratch), appended after what
// dst holds; and a receive's Content-Length is its body's.
func TestR6AppendAckIDAsBefore(t *testing.T) {
	vals := []int64{1, 9, 10, 99, 12345, math.MaxInt32, math.MaxInt32 + 1, math.MaxInt64 - 1, math.MaxInt64, -1, math.MinInt64}
	for _, s := range vals {
		for _, c := range vals {
			for _, m := range vals {
				old := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "v1.%d.%d.%d", s, c, m))
				if got := encodeAckID(s, c, m); got != old {
					t.Fatalf("encodeAckID(%d, %d, %d) = %q, was %q", s, c, m, got, old)
				}
				pre := []byte("prefix")
				if got := string(appendAckID(pre[:3:3], s, c, m)); got != "pre"+old {
					t.Fatalf("appendAckID after %q = %q", "pre", got)
				}
				if s > 0 && c > 0 && m > 0 {
					sink, ref, ok := decodeAckID(old)
					if !ok || sink != s || ref != (outbox.PullRef{ClaimID: c, MessageID: m}) {
						t.Fatalf("decode %d %d %d: %d %+v %v", s, c, m, sink, ref, ok)
					}
				}
			}
		}
	}
}

func TestR6ReceiveContentLength(t *testing.T) {
	for _, n := range []int{0, 1, 3, 200} {
		b := &outbox.Batch{ClaimID: math.MaxInt64}
		for i := range n {
			b.Messages = append(b.Messages, outbox.Message{ID: int64(math.MaxInt64 - i), Payload: []byte(`{"x":"` + strconv.Itoa(i) + `"}`)})
		}
		for _, acks := range []*ackSummary{nil, {acked: 3, notHeld: []string{}}, {acked: 1, notHeld: []string{"a\"b", "ünï"}}} {
			w := httptest.NewRecorder()
			writeReceived(w, math.MaxInt64, b, acks)
			body := w.Body.Bytes()
			if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(len(body)) {
				t.Fatalf("%d messages: Content-Length %s, body %d", n, cl, len(body))
			}
			var v struct {
				Data []struct {
					AckID   string          `json:"ack_id"`
					Message json.RawMessage `json:"message"`
				} `json:"data"`
				NotHeld []string `json:"not_held"`
			}
			if err := json.Unmarshal(body, &v); err != nil || len(v.Data) != n {
				t.Fatalf("%d messages: %v %d", n, err, len(v.Data))
			}
			for i, d := range v.Data {
				if d.AckID != encodeAckID(math.MaxInt64, math.MaxInt64, int64(math.MaxInt64-i)) {
					t.Fatalf("ack id %d: %q", i, d.AckID)
				}
			}
			if acks != nil && len(v.NotHeld) != len(acks.notHeld) {
				t.Fatalf("not_held %v", v.NotHeld)
			}
		}
	}
}
