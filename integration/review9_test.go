package integration

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// Review 9: a consumer whose receive lapsed (visibility timeout) and
// who received the same message again acks both receives' ids in one
// request. The first receive's ids are no longer held (docs: a 409
// not_held naming them, or not_held in a receive's answer), and the
// message is acked once. The service kept both batches (handedOut: the
// lapsed one stays while an older batch with a longer visibility timeout
// is ahead of it), so the ack takes the whole-claim path for both.
func TestR9AckLapsedAndRedelivered(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)
	receive := func(body map[string]any) receivedAnswer {
		t.Helper()
		return decodeAs[receivedAnswer](t, e.must(t, 200, "POST", "/api/sinks/s/receive", body))
	}

	// An older batch with a long visibility timeout stays ahead of the
	// lapsed one in handedOut's order.
	b.exec(t, `INSERT INTO t VALUES (1)`)
	front := receive(map[string]any{"wait": "10s", "batch_size": 1, "visibility_timeout": "60s"})
	if len(front.Data) != 1 {
		t.Fatalf("front receive: %+v", front)
	}

	// Phase 1: /ack of the lapsed receive and its redelivery.
	b.exec(t, `INSERT INTO t VALUES (2)`)
	lapsed := receive(map[string]any{"wait": "10s", "batch_size": 1, "visibility_timeout": "1s"})
	if len(lapsed.Data) != 1 || lapsed.Data[0].Message.Record["id"] != float64(2) {
		t.Fatalf("receive: %+v", lapsed)
	}
	again := receive(map[string]any{"wait": "20s", "batch_size": 1, "visibility_timeout": "60s"})
	if len(again.Data) != 1 || again.Data[0].Message.Record["id"] != float64(2) {
		t.Fatalf("receive after the visibility timeout: %+v", again)
	}
	before := deliveredMetric(t, e)
	status, out := e.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": append(ackIDsOf(lapsed.Data), ackIDsOf(again.Data)...)}, apiToken)
	if nh := decodeAs[notHeld](t, out); status != 409 || !slices.Equal(nh.Error.AckIDs, ackIDsOf(lapsed.Data)) {
		t.Errorf("ack of a lapsed receive and of its redelivery: %d %s; want 409 not_held naming the lapsed receive's id", status, out)
	}
	if got := deliveredMetric(t, e); got != before+1 {
		t.Errorf("walhook_messages_delivered_total rose by %v for one message acked", got-before)
	}

	// Phase 2: the same, carried by a receive.
	b.exec(t, `INSERT INTO t VALUES (3)`)
	lapsed = receive(map[string]any{"wait": "10s", "batch_size": 1, "visibility_timeout": "1s"})
	if len(lapsed.Data) != 1 || lapsed.Data[0].Message.Record["id"] != float64(3) {
		t.Fatalf("receive: %+v", lapsed)
	}
	again = receive(map[string]any{"wait": "20s", "batch_size": 1, "visibility_timeout": "60s"})
	if len(again.Data) != 1 || again.Data[0].Message.Record["id"] != float64(3) {
		t.Fatalf("receive after the visibility timeout: %+v", again)
	}
	carried := receive(map[string]any{"wait": "0s", "ack_ids": append(ackIDsOf(lapsed.Data), ackIDsOf(again.Data)...)})
	if carried.Acked == nil || *carried.Acked != 1 || !slices.Equal(carried.NotHeld, ackIDsOf(lapsed.Data)) {
		t.Errorf("receive carrying the acks of a lapsed receive and of its redelivery: acked %v, not_held %v; want 1 and the lapsed receive's id", deref(carried.Acked), carried.NotHeld)
	}
	waitFor(t, 10*time.Second, "the history", func() bool { return len(e.messages(t, "s", "?state=delivered")) >= 2 })
	time.Sleep(500 * time.Millisecond)
	if got := e.messages(t, "s", "?state=delivered"); len(got) != 2 {
		t.Errorf("delivered history: %d entries for 2 messages acked: %+v", len(got), got)
	}
}

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

// Review 9: two service processes on one database. A receive at the first
// hands out m1 and m2; the consumer nacks m1 at the second (which never
// saw the batch), receives m1 again at the first, and acks both receives'
// ids there: m1's id of the first receive is not held (it was nacked),
// the rest are acked, m1 once. Then the plain cases: nack then ack at
// one process (409), ack at the process that did not hand the batch out.
func TestR9TwoProcessesNackThenAck(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e1 := startAPI(t, b)
	// The second process: another api.Server (what it handed out is its
	// own) on the same service and database.
	srv2 := httptest.NewServer(e1.svc.API())
	t.Cleanup(srv2.Close)
	e2 := *e1
	e2.base = srv2.URL

	b.exec(t, `INSERT INTO t VALUES (1), (2)`)
	first := e1.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10})
	if len(first) != 2 {
		t.Fatalf("receive: %+v", first)
	}
	m1 := first[0]
	e2.must(t, 200, "POST", "/api/sinks/s/nack", map[string]any{"ack_ids": []string{m1.AckID}})
	again := e1.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10})
	if len(again) != 1 || again[0].Message.Record["id"] != m1.Message.Record["id"] {
		t.Fatalf("receive after the nack: %+v", again)
	}
	before := deliveredMetric(t, e1)
	status, out := e1.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": append(ackIDsOf(first), ackIDsOf(again)...)}, apiToken)
	if nh := decodeAs[notHeld](t, out); status != 409 || !slices.Equal(nh.Error.AckIDs, []string{m1.AckID}) || !strings.Contains(nh.Error.Message, "the other 2 were acked") {
		t.Errorf("ack of a receive one of whose messages was nacked elsewhere and received again, with the second receive: %d %s; want 409 naming the nacked id, 2 acked", status, out)
	}
	if got := deliveredMetric(t, e1); got != before+2 {
		t.Errorf("walhook_messages_delivered_total rose by %v for two messages acked", got-before)
	}

	// Nack then ack at one process.
	b.exec(t, `INSERT INTO t VALUES (3)`)
	c := e1.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10})
	if len(c) != 1 {
		t.Fatalf("receive: %+v", c)
	}
	e1.must(t, 200, "POST", "/api/sinks/s/nack", map[string]any{"ack_ids": ackIDsOf(c), "delay": "1h"})
	status, out = e1.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(c)}, apiToken)
	if nh := decodeAs[notHeld](t, out); status != 409 || !slices.Equal(nh.Error.AckIDs, ackIDsOf(c)) {
		t.Errorf("ack after a nack: %d %s", status, out)
	}

	// Ack at the process that did not hand the batch out; then again at
	// the one that did (it still keeps the batch): 409.
	b.exec(t, `INSERT INTO t VALUES (4)`)
	d := e1.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10})
	if len(d) != 1 {
		t.Fatalf("receive: %+v", d)
	}
	e2.must(t, 200, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(d)})
	status, out = e1.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(d)}, apiToken)
	if nh := decodeAs[notHeld](t, out); status != 409 || !slices.Equal(nh.Error.AckIDs, ackIDsOf(d)) {
		t.Errorf("ack at the first process after the second acked: %d %s", status, out)
	}
}
