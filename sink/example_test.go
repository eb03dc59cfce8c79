package sink_test

import (
	"fmt"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/sink"
)

// orders is the table of the examples, with REPLICA IDENTITY FULL, so
// updates carry the previous values and deletes the whole old row.
var orders = &sink.Relation{Schema: "public", Table: "orders", FullIdentity: true, Columns: []sink.Column{
	{Name: "id", Key: true}, {Name: "customer_id"}, {Name: "status"},
}}

// route is a sink as capture sees it. Its UUID and name are the
// consumer in every message's metadata.
func route(message string) *sink.Route {
	cfg := config.Sink{Name: "orders_webhook", Endpoint: "orders_api", Tables: []string{"public.orders"}, Message: message}
	cfg.ApplyDefaults()
	return sink.NewRoute(&sink.Sink{ID: 1, UUID: "f47ac10b-58cc-4372-a567-0e02b2c3d479", Name: "orders_webhook", Config: cfg})
}

// row turns column values, already JSON as the decoder renders them,
// into a record.
func row(vals ...string) [][]byte {
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(v)
	}
	return out
}

var committed = time.Date(2024, 3, 20, 15, 30, 0, 123456000, time.UTC)

// The change message (message: change) of an UPDATE: the row after the
// change, the previous values of the columns that changed, the action,
// and where the change comes from. The idempotency key is base64 of
// "commit_lsn:commit_idx", the same on every attempt and replay.
func ExampleRoute_Render_change() {
	update := &sink.Change{
		Rel: orders, Action: sink.Update,
		New:       row(`1234`, `789`, `"shipped"`),
		Old:       row(`1234`, `789`, `"pending"`),
		CommitLSN: 24023128, CommitIdx: 0, CommitTime: committed,
	}
	fmt.Println(string(route("change").Render(nil, update)))
	// Output:
	// {"record":{"id":1234,"customer_id":789,"status":"shipped"},"changes":{"status":"pending"},"action":"update","metadata":{"table_schema":"public","table_name":"orders","commit_timestamp":"2024-03-20T15:30:00.123456Z","commit_lsn":24023128,"commit_idx":0,"idempotency_key":"MjQwMjMxMjg6MA==","consumer":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","name":"orders_webhook"}}}
}

// A backfill copies a row as a `read` message. Its commit_lsn is the
// position of the backfill page's high watermark in the WAL (no commit
// has that position, so idempotency keys stay unique), commit_idx the
// row's place in the page, and commit_timestamp the watermark's time.
// `changes` is null. For a sink with message: row the same row is
// {record, metadata}; a deleted row there carries its key and
// "deleted": true.
func ExampleRoute_Render_read() {
	read := &sink.Change{
		Rel: orders, Action: sink.Read,
		New:       row(`1234`, `789`, `"shipped"`),
		CommitLSN: 24100000, CommitIdx: 5, CommitTime: committed,
	}
	fmt.Println(string(route("change").Render(nil, read)))
	fmt.Println(string(route("row").Render(nil, read)))

	noFull := *orders
	noFull.FullIdentity = false
	deleted := &sink.Change{
		Rel: &noFull, Action: sink.Delete,
		Old:       [][]byte{[]byte(`1234`), nil, nil}, // without REPLICA IDENTITY FULL: the key only
		CommitLSN: 24200000, CommitIdx: 0, CommitTime: committed,
	}
	fmt.Println(string(route("row").Render(nil, deleted)))
	// Output:
	// {"record":{"id":1234,"customer_id":789,"status":"shipped"},"changes":null,"action":"read","metadata":{"table_schema":"public","table_name":"orders","commit_timestamp":"2024-03-20T15:30:00.123456Z","commit_lsn":24100000,"commit_idx":5,"idempotency_key":"MjQxMDAwMDA6NQ==","consumer":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","name":"orders_webhook"}}}
	// {"record":{"id":1234,"customer_id":789,"status":"shipped"},"metadata":{"table_schema":"public","table_name":"orders","commit_timestamp":"2024-03-20T15:30:00.123456Z","commit_lsn":24100000,"commit_idx":5,"idempotency_key":"MjQxMDAwMDA6NQ==","consumer":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","name":"orders_webhook"}}}
	// {"record":{"id":1234},"metadata":{"table_schema":"public","table_name":"orders","commit_timestamp":"2024-03-20T15:30:00.123456Z","commit_lsn":24200000,"commit_idx":0,"idempotency_key":"MjQyMDAwMDA6MA==","deleted":true,"consumer":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","name":"orders_webhook"}}}
}

// A webhook-source message: the body as received, action insert, and the
// webhook's key ("{source}.{SHA-256 of the body, upper-case hex}") as its
// idempotency key and its group.
func ExampleRoute_RenderWebhook() {
	wh := &sink.Webhook{
		Source:     "my_webhook",
		Key:        "my_webhook.405B584947924D6F04BDD11064D12F66C6E56278B3B69E1E990A75D0D35236CA",
		Body:       []byte(`{"event":"payment.succeeded","amount":1250}`),
		ReceivedAt: committed,
	}
	fmt.Println(string(route("change").RenderWebhook(nil, wh)))
	// Output:
	// {"record":{"event":"payment.succeeded","amount":1250},"action":"insert","metadata":{"webhook":"my_webhook","key":"my_webhook.405B584947924D6F04BDD11064D12F66C6E56278B3B69E1E990A75D0D35236CA","received_at":"2024-03-20T15:30:00.123456Z","idempotency_key":"my_webhook.405B584947924D6F04BDD11064D12F66C6E56278B3B69E1E990A75D0D35236CA","consumer":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","name":"orders_webhook"}}}
}
