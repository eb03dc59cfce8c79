package outbox

import (
	"testing"
	"time"
)

// The history keeps every field the API shows, a pull ack (status 0)
// without a status, and drops the rows of a sink deleted meanwhile.
func TestRecordDeliveredHistory(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	at := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	rows := []Delivered{
		{SinkID: b.sinkID, Message: Message{ID: 7, Group: "g1", CommitLSN: 100, CommitIdx: 2, Payload: []byte(`{"a":"é"}`)}, DeliverCount: 3, Status: 204, At: at},
		{SinkID: b.sinkID + 1000, Message: Message{ID: 8, Group: "g2", CommitLSN: 101, Payload: []byte(`{}`)}, DeliverCount: 1, Status: 200, At: at},
		{SinkID: b.sinkID, Message: Message{ID: 9, Group: "g3", CommitLSN: 102, CommitIdx: 0, Payload: []byte(`[]`)}, DeliverCount: 1, At: at},
	}
	if err := b.store.RecordDelivered(ctx, rows); err != nil {
		t.Fatal(err)
	}
	got, err := b.store.ListMessages(ctx, MessageQuery{SinkID: b.sinkID, State: StateDelivered})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("history has %d rows of the sink, want 2", len(got))
	}
	m := got[1] // newest first
	if m.ID != 7 || m.Group != "g1" || m.CommitLSN != 100 || m.CommitIdx != 2 || string(m.Payload) != `{"a":"é"}` ||
		m.DeliverCount != 3 || m.LastStatus == nil || *m.LastStatus != 204 || m.DeliveredAt == nil || !m.DeliveredAt.Equal(at) || m.State != StateDelivered {
		t.Errorf("recorded %+v", m)
	}
	if m := got[0]; m.ID != 9 || m.LastStatus != nil || string(m.Payload) != `[]` {
		t.Errorf("pull ack recorded as %+v", m)
	}
	var orphans int
	if err := b.store.Pool.QueryRow(ctx, `SELECT count(*) FROM delivered WHERE sink_id <> $1`, b.sinkID).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Errorf("%d rows of a missing sink recorded", orphans)
	}
	if err := b.store.RecordDelivered(ctx, rows[1:2]); err != nil {
		t.Fatalf("only rows of missing sinks: %v", err)
	}
}
