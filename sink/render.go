package sink

import (
	"strconv"
	"time"
)

// commitTimeLayout is RFC 3339 with microseconds, as Postgres keeps them.
const commitTimeLayout = "2006-01-02T15:04:05.000000Z07:00"

// Render appends the message this sink receives for a change: the
// `change` shape ({record, changes, action, metadata}) or the `row` shape
// ({record, metadata}).
func (r *Route) Render(dst []byte, c *Change) []byte {
	if r.Sink.Config.Message == "row" {
		dst = append(dst, `{"record":`...)
		dst = appendRecord(dst, c.Rel, c.Record())
		dst = append(dst, `,"metadata":`...)
		dst = r.appendMetadata(dst, c, c.Action == Delete)
		return append(dst, '}')
	}
	dst = append(dst, `{"record":`...)
	dst = appendRecord(dst, c.Rel, c.Record())
	dst = append(dst, `,"changes":`...)
	dst = appendChanges(dst, c)
	dst = append(dst, `,"action":"`...)
	dst = append(dst, c.Action...)
	dst = append(dst, `","metadata":`...)
	dst = r.appendMetadata(dst, c, false)
	return append(dst, '}')
}

func appendRecord(dst []byte, rel *Relation, vals [][]byte) []byte {
	dst = append(dst, '{')
	first := true
	for i, v := range vals {
		if v == nil || i >= len(rel.Columns) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = AppendJSONString(dst, rel.Columns[i].Name)
		dst = append(dst, ':')
		dst = append(dst, v...)
	}
	return append(dst, '}')
}

// appendChanges writes the previous values of the columns an update
// changed: {} when the old row is not known whole (REPLICA IDENTITY other
// than FULL), null for other actions.
func appendChanges(dst []byte, c *Change) []byte {
	if c.Action != Update {
		return append(dst, "null"...)
	}
	if !c.Rel.FullIdentity {
		return append(dst, "{}"...)
	}
	dst = append(dst, '{')
	first := true
	for i := range c.Old {
		if !c.Changed(i) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = AppendJSONString(dst, c.Rel.Columns[i].Name)
		dst = append(dst, ':')
		dst = append(dst, c.Old[i]...)
	}
	return append(dst, '}')
}

func (r *Route) appendMetadata(dst []byte, c *Change, deleted bool) []byte {
	dst = append(dst, `{"table_schema":`...)
	dst = AppendJSONString(dst, c.Rel.Schema)
	dst = append(dst, `,"table_name":`...)
	dst = AppendJSONString(dst, c.Rel.Table)
	dst = append(dst, `,"commit_timestamp":"`...)
	dst = c.CommitTime.UTC().AppendFormat(dst, commitTimeLayout)
	dst = append(dst, `","commit_lsn":`...)
	dst = strconv.AppendUint(dst, c.CommitLSN, 10)
	dst = append(dst, `,"commit_idx":`...)
	dst = strconv.AppendInt(dst, int64(c.CommitIdx), 10)
	dst = append(dst, `,"idempotency_key":"`...)
	dst = append(dst, c.IdempotencyKey()...)
	dst = append(dst, '"')
	if deleted {
		dst = append(dst, `,"deleted":true`...)
	}
	dst = r.appendConsumer(dst)
	return append(dst, '}')
}

func (r *Route) appendConsumer(dst []byte) []byte {
	dst = append(dst, `,"consumer":{"id":`...)
	dst = AppendJSONString(dst, r.Sink.UUID)
	dst = append(dst, `,"name":`...)
	dst = AppendJSONString(dst, r.Sink.Name)
	return append(dst, `}`...)
}

// Webhook is one inbound webhook, as received.
type Webhook struct {
	Source     string
	Key        string // "{source}.{SHA256 of the body, upper-case hex}"
	Body       []byte // valid JSON
	ReceivedAt time.Time
}

// RenderWebhook appends the message a sink receives for an inbound
// webhook. Its idempotency key is the webhook key: a duplicate body is the
// same message.
func (r *Route) RenderWebhook(dst []byte, w *Webhook) []byte {
	dst = append(dst, `{"record":`...)
	dst = append(dst, w.Body...)
	dst = append(dst, `,"action":"insert","metadata":{"webhook":`...)
	dst = AppendJSONString(dst, w.Source)
	dst = append(dst, `,"key":`...)
	dst = AppendJSONString(dst, w.Key)
	dst = append(dst, `,"received_at":"`...)
	dst = w.ReceivedAt.UTC().AppendFormat(dst, commitTimeLayout)
	dst = append(dst, `","idempotency_key":`...)
	dst = AppendJSONString(dst, w.Key)
	dst = r.appendConsumer(dst)
	return append(dst, `}}`...)
}
