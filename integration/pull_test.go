package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/config"
)

// pullBundle is apiBundle's setup with sink "s" a pull sink.
func pullBundle(t *testing.T, ddl string, tables ...string) *testBundle {
	t.Helper()
	b := setup(t, ddl, tables...)
	b.cfg.Server.APITokens = []string{apiToken}
	b.cfg.Sinks[0].Kind = config.KindPull
	b.cfg.Sinks[0].Endpoint, b.cfg.Sinks[0].Path = "", ""
	return b
}

type pulled struct {
	AckID   string  `json:"ack_id"`
	Message message `json:"message"`
}

// receive posts a receive and returns the messages.
func (e *apiEnv) receive(t testing.TB, sink string, body any) []pulled {
	t.Helper()
	out := e.must(t, 200, "POST", "/api/sinks/"+sink+"/receive", body)
	return decodeAs[struct {
		Data []pulled `json:"data"`
	}](t, out).Data
}

func ackIDsOf(ms []pulled) []string {
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.AckID
	}
	return ids
}

type notHeld struct {
	Error struct {
		Code    string   `json:"code"`
		Message string   `json:"message"`
		AckIDs  []string `json:"ack_ids"`
	} `json:"error"`
}

// Receive, ack, nack: long polling wakes on a commit, an ack removes the
// messages and records them as delivered, a second ack of the same ids is
// answered 409 with them, a nack without a time makes the message
// available at once and one with a delay after it.
func TestPullReceiveAckNack(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)

	if got := e.receive(t, "s", map[string]any{"wait": "0s"}); len(got) != 0 {
		t.Fatalf("receive from an empty sink: %+v", got)
	}

	// Long polling: a receive waiting 10s returns as soon as a commit
	// reaches the outbox, woken by it: the commit comes 200 ms into the
	// wait, and a waiting receive that was not woken would only find it
	// when it looks again by itself (a second into its wait).
	ch := make(chan []pulled, 1)
	go func() { ch <- e.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10}) }()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	b.exec(t, `INSERT INTO t VALUES (1)`)
	got := <-ch
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("long poll returned %s after the commit; want it woken by the commit, not by its own look a second into the wait", took)
	} else {
		t.Logf("long poll returned %s after the commit", took)
	}
	if len(got) != 1 || got[0].Message.Record["id"] != float64(1) || got[0].Message.Metadata.Consumer.Name != "s" || got[0].AckID == "" {
		t.Fatalf("received: %+v", got)
	}
	if ms := e.messages(t, "s", "?state=in_flight"); len(ms) != 1 {
		t.Errorf("in flight while received: %+v", ms)
	}
	if s := decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)); s.RawCounts["in_flight"] != 1 {
		t.Errorf("counts while received: %v", s.RawCounts)
	}

	deliveredBefore := deliveredMetric(t, e) // the registry is the test binary's: other tests count too
	out := e.must(t, 200, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(got)})
	if r := decodeAs[map[string]int](t, out); r["acked"] != 1 {
		t.Errorf("ack: %s", out)
	}
	status, out := e.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(got)}, apiToken)
	if nh := decodeAs[notHeld](t, out); status != 409 || nh.Error.Code != "not_held" || len(nh.Error.AckIDs) != 1 || nh.Error.AckIDs[0] != got[0].AckID {
		t.Errorf("ack again: %d %s", status, out)
	}
	waitFor(t, 10*time.Second, "the acked message in the history", func() bool {
		return len(e.messages(t, "s", "?state=delivered")) == 1
	})
	if h := e.messages(t, "s", "?state=delivered"); h[0].DeliverCount != 1 || h[0].LastStatus != nil || !json.Valid(h[0].Message) {
		t.Errorf("history of an acked message: %+v", h[0])
	}
	if ms := e.messages(t, "s", "?state=in_flight"); len(ms) != 0 {
		t.Errorf("in flight after the ack: %+v", ms)
	}

	// Nack without a time: available again at once, attempted once.
	b.exec(t, `INSERT INTO t VALUES (2)`)
	got = e.receive(t, "s", map[string]any{"wait": "10s"})
	if len(got) != 1 {
		t.Fatalf("received: %+v", got)
	}
	e.must(t, 200, "POST", "/api/sinks/s/nack", map[string]any{"ack_ids": ackIDsOf(got), "reason": "not now"})
	again := e.receive(t, "s", map[string]any{"wait": "0s"})
	if len(again) != 1 || again[0].Message.Metadata.IdempotencyKey != got[0].Message.Metadata.IdempotencyKey || again[0].AckID == got[0].AckID {
		t.Fatalf("received after a nack: %+v", again)
	}
	if ms := e.messages(t, "s", "?state=in_flight"); len(ms) != 1 || ms[0].DeliverCount != 1 || ms[0].LastError == nil || *ms[0].LastError != "not now" {
		t.Errorf("nacked message: %+v", ms)
	}

	// Nack with a delay: not received before it, received after it.
	nacked := time.Now()
	e.must(t, 200, "POST", "/api/sinks/s/nack", map[string]any{"ack_ids": ackIDsOf(again), "delay": "1500ms"})
	if ms := e.messages(t, "s", "?state=backing_off"); len(ms) != 1 || ms[0].DeliverCount != 2 || ms[0].NotBefore == nil {
		t.Errorf("message after a nack with a delay: %+v", ms)
	}
	later := e.receive(t, "s", map[string]any{"wait": "20s"})
	if len(later) != 1 || later[0].Message.Metadata.IdempotencyKey != got[0].Message.Metadata.IdempotencyKey {
		t.Fatalf("received after the delay: %+v", later)
	}
	if d := time.Since(nacked); d < 1500*time.Millisecond {
		t.Errorf("received %s after a nack with a delay of 1.5s", d)
	}
	// not_before as a time works the same way.
	e.must(t, 200, "POST", "/api/sinks/s/nack", map[string]any{"ack_ids": ackIDsOf(later), "not_before": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
	if got := e.receive(t, "s", map[string]any{"wait": "0s"}); len(got) != 0 {
		t.Errorf("received a message nacked for an hour: %+v", got)
	}
	if ms := e.messages(t, "s", "?state=backing_off"); len(ms) != 1 || ms[0].NotBefore == nil || time.Until(*ms[0].NotBefore) < 50*time.Minute {
		t.Errorf("message nacked for an hour: %+v", ms)
	}
	if got := deliveredMetric(t, e); got != deliveredBefore+1 {
		t.Errorf("walhook_messages_delivered_total{sink=\"s\"}: %v, want %v (one acked message)", got, deliveredBefore+1)
	}
}

// A consumer that stops acknowledging (crashed) blocks only its own
// groups, and its messages come back after the visibility timeout,
// counted as an attempt; its old ack ids then change nothing; with
// retry.max_age the lapses end in failed.
func TestPullVisibilityTimeout(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(3 * time.Second)
	e := startAPI(t, b)

	b.exec(t, `INSERT INTO t VALUES (1), (2)`)
	received := time.Now() // before the lease starts
	first := e.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10, "visibility_timeout": "2s"})
	if len(first) != 2 {
		t.Fatalf("received: %+v", first)
	}
	// The "crashed" consumer holds its groups only: another group is
	// received at once.
	b.exec(t, `INSERT INTO t VALUES (3)`)
	other := e.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10})
	if len(other) != 1 || other[0].Message.Record["id"] != float64(3) {
		t.Fatalf("received while another consumer holds groups 1 and 2: %+v", other)
	}
	e.must(t, 200, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(other)})
	// The consumer "crashed": nothing is acked. Another receive gets both
	// back once the visibility timeout has passed.
	second := e.receive(t, "s", map[string]any{"wait": "20s", "batch_size": 10, "visibility_timeout": "2s"})
	if len(second) != 2 || time.Since(received) < 2*time.Second {
		t.Fatalf("received again after %s: %+v", time.Since(received), second)
	}
	for _, m := range e.messages(t, "s", "?state=in_flight") {
		if m.DeliverCount != 1 || m.LastError == nil || !strings.Contains(*m.LastError, "visibility timeout") {
			t.Errorf("message back after the visibility timeout: %+v", m)
		}
	}
	status, out := e.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(first)}, apiToken)
	if nh := decodeAs[notHeld](t, out); status != 409 || len(nh.Error.AckIDs) != 2 {
		t.Errorf("ack of a lapsed receive: %d %s", status, out)
	}
	// The second lease lapses past max_age (3s since the first attempt):
	// the messages fail instead of coming back, counted as push's are.
	failedBefore := sinkMetric(t, e, "walhook_messages_failed_total") // the registry is the test binary's
	waitFor(t, 20*time.Second, "the lapsed messages to fail", func() bool {
		return len(e.messages(t, "s", "?state=failed")) == 2
	})
	waitFor(t, 5*time.Second, "the failed metric to count the lapse", func() bool {
		return sinkMetric(t, e, "walhook_messages_failed_total") >= failedBefore+2
	})
	if got := e.receive(t, "s", map[string]any{"wait": "0s"}); len(got) != 0 {
		t.Errorf("received failed messages: %+v", got)
	}
}

// A nack past retry.max_age fails the messages instead of giving them
// back, and says so: the answer counts them, they show as failed, and
// the failed metric counts them as a push failure does.
func TestPullNackPastMaxAge(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.cfg.Sinks[0].Retry.MaxAge = config.Duration(time.Second)
	e := startAPI(t, b)

	b.exec(t, `INSERT INTO t VALUES (1)`)
	got := e.receive(t, "s", map[string]any{"wait": "10s"})
	if len(got) != 1 {
		t.Fatalf("received: %+v", got)
	}
	time.Sleep(1100 * time.Millisecond) // past max_age since this first attempt
	before := sinkMetric(t, e, "walhook_messages_failed_total")
	out := e.must(t, 200, "POST", "/api/sinks/s/nack", map[string]any{"ack_ids": ackIDsOf(got)})
	if r := decodeAs[map[string]int](t, out); r["nacked"] != 1 || r["failed"] != 1 {
		t.Errorf("nack past max_age: %s; want nacked 1, failed 1", out)
	}
	if ms := e.messages(t, "s", "?state=failed"); len(ms) != 1 {
		t.Errorf("failed messages after the nack: %+v", ms)
	}
	if after := sinkMetric(t, e, "walhook_messages_failed_total"); after < before+1 {
		t.Errorf("walhook_messages_failed_total went from %v to %v; want it to count the nack's failure", before, after)
	}
	if got := e.receive(t, "s", map[string]any{"wait": "0s"}); len(got) != 0 {
		t.Errorf("received a failed message: %+v", got)
	}
}

// max_ack_pending bounds what consumers hold, as it bounds what push has
// in flight: a receive asking for more gets that many, another gets
// nothing while they are held, and an ack makes room for as many again.
func TestPullMaxAckPending(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	b.cfg.Sinks[0].MaxAckPending = 3
	e := startAPI(t, b)

	b.exec(t, `INSERT INTO t SELECT generate_series(1, 10)`) // ten groups, one commit
	first := e.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10})
	if len(first) != 3 {
		t.Fatalf("first receive of 10 with max_ack_pending 3: %d messages", len(first))
	}
	if got := e.receive(t, "s", map[string]any{"wait": "300ms", "batch_size": 10}); len(got) != 0 {
		t.Fatalf("receive while 3 are held: %d messages", len(got))
	}
	e.must(t, 200, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(first[:2])})
	if got := e.receive(t, "s", map[string]any{"wait": "10s", "batch_size": 10}); len(got) != 2 {
		t.Fatalf("receive after 2 of 3 were acked: %d messages, want the 2 the ack made room for", len(got))
	}
}

// Bad bodies, forged or foreign ack ids and webhook sinks answer clear
// 4xx errors naming the problem.
func TestPullErrors(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	recv := newReceiver(t)
	b.cfg.HTTPEndpoints = []config.HTTPEndpoint{{Name: "recv", URL: recv.URL()}}
	other := b.cfg.Sinks[0]
	other.Name = "other"
	hook := b.cfg.Sinks[0]
	hook.Name, hook.Kind, hook.Endpoint = "hook", config.KindWebhook, "recv"
	b.cfg.Sinks = append(b.cfg.Sinks, other, hook)
	e := startAPI(t, b)

	b.exec(t, `INSERT INTO t VALUES (1)`)
	mine := e.receive(t, "s", map[string]any{"wait": "10s"})
	theirs := e.receive(t, "other", map[string]any{"wait": "10s"})
	if len(mine) != 1 || len(theirs) != 1 {
		t.Fatalf("received: %+v %+v", mine, theirs)
	}
	forged := strings.TrimRight(mine[0].AckID, "=")
	forged = forged[:len(forged)-2] + "zz"

	cases := []struct {
		path   string
		body   any
		status int
		code   string
		field  string
		text   string
	}{
		{"/api/sinks/s/receive", `{"batch_size": 0}`, 400, "invalid", "batch_size", "out of range"},
		{"/api/sinks/s/receive", `{"batch_size": "ten"}`, 400, "invalid", "batch_size", ""},
		{"/api/sinks/s/receive", `{"wait": "forever"}`, 400, "invalid", "wait", ""},
		{"/api/sinks/s/receive", `{"wait": "2m"}`, 400, "invalid", "wait", "out of range"},
		{"/api/sinks/s/receive", `{"visibility_timeout": "10ms"}`, 400, "invalid", "visibility_timeout", "out of range"},
		{"/api/sinks/s/receive", `{"batchsize": 1}`, 400, "invalid", "batchsize", "batch_size"},
		{"/api/sinks/s/receive", `[1]`, 400, "invalid", "", ""},
		{"/api/sinks/s/receive", `{`, 400, "invalid", "", "not valid JSON"},
		{"/api/sinks/s/receive", `{"ack_ids": ["garbage"]}`, 400, "invalid", "ack_ids[0]", "not an ack id"},
		{"/api/sinks/s/receive", map[string]any{"ack_ids": []string{theirs[0].AckID}}, 400, "invalid", "ack_ids[0]", "another sink"},
		{"/api/sinks/hook/receive", `{}`, 409, "not_pull", "", "webhook sink"},
		{"/api/sinks/nope/receive", `{}`, 404, "not_found", "", ""},
		{"/api/sinks/s/ack", ``, 400, "invalid", "", "empty"},
		{"/api/sinks/s/ack", `{}`, 400, "invalid", "ack_ids", "required"},
		{"/api/sinks/s/ack", `{"ack_ids": "x"}`, 400, "invalid", "ack_ids", ""},
		{"/api/sinks/s/ack", `{"ack_ids": ["garbage"]}`, 400, "invalid", "ack_ids[0]", "not an ack id"},
		{"/api/sinks/s/ack", map[string]any{"ack_ids": []string{mine[0].AckID, theirs[0].AckID}}, 400, "invalid", "ack_ids[1]", "another sink"},
		{"/api/sinks/s/ack", map[string]any{"ack_ids": []string{forged}}, 400, "invalid", "ack_ids[0]", ""},
		{"/api/sinks/s/ack", map[string]any{"ack_ids": []string{encodeAckIDForTest(t, mine[0].AckID, 1)}}, 409, "not_held", "", "no longer held"},
		{"/api/sinks/hook/ack", map[string]any{"ack_ids": []string{mine[0].AckID}}, 409, "not_pull", "", ""},
		{"/api/sinks/s/nack", map[string]any{"ack_ids": []string{mine[0].AckID}, "delay": "1s", "not_before": time.Now().Format(time.RFC3339)}, 400, "invalid", "delay", "not both"},
		{"/api/sinks/s/nack", map[string]any{"ack_ids": []string{mine[0].AckID}, "delay": "-1s"}, 400, "invalid", "delay", "negative"},
		{"/api/sinks/s/nack", map[string]any{"ack_ids": []string{mine[0].AckID}, "not_before": "tomorrow"}, 400, "invalid", "not_before", ""},
	}
	for _, c := range cases {
		status, out := e.call(t, "POST", c.path, c.body, apiToken)
		er := decodeAs[apiErr](t, out)
		if status != c.status || er.Error.Code != c.code || er.Error.Field != c.field || !strings.Contains(er.Error.Message, c.text) {
			t.Errorf("POST %s %v: %d %s; want %d %s field %q mentioning %q", c.path, c.body, status, out, c.status, c.code, c.field, c.text)
		}
	}
	// None of the refused requests changed anything: the message is
	// still held, and its ack works.
	e.must(t, 200, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(mine)})
	if status, _ := e.call(t, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": []string{mine[0].AckID}}, ""); status != 401 {
		t.Errorf("ack without a token: %d", status)
	}

	// Pull sinks made through the API.
	status, out := e.call(t, "POST", "/api/sinks", map[string]any{"name": "p3", "kind": "pull", "endpoint": "recv", "tables": []string{"public.t"}}, apiToken)
	if er := decodeAs[apiErr](t, out); status != 400 || er.Error.Field != "endpoint" || !strings.Contains(er.Error.Message, "pull sink") {
		t.Errorf("create a pull sink with an endpoint: %d %s", status, out)
	}
	out = e.must(t, 201, "POST", "/api/sinks", map[string]any{"name": "p3", "kind": "pull", "tables": []string{"public.t"}})
	if k := decodeAs[map[string]any](t, out)["kind"]; k != "pull" {
		t.Errorf("created pull sink: %s", out)
	}
	if k := decodeAs[map[string]any](t, e.must(t, 200, "GET", "/api/sinks/hook", nil))["kind"]; k != "webhook" {
		t.Errorf("a webhook sink's kind: %v", k)
	}
}

// encodeAckIDForTest takes a real ack id and names another message of
// the same claim: well formed, of the right sink, but not held.
func encodeAckIDForTest(t *testing.T, id string, message int64) string {
	t.Helper()
	raw, err := decodeB64(id)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(raw, ".")
	parts[3] = fmt.Sprint(message + 1_000_000)
	return encodeB64(strings.Join(parts, "."))
}

// receivedAnswer is a receive's answer with the acks it carried.
type receivedAnswer struct {
	Data    []pulled `json:"data"`
	Acked   *int     `json:"acked"`
	NotHeld []string `json:"not_held"`
}

// A receive may carry the ack ids of the batch before: they are acked in
// the transaction of its first claim, which then hands out the groups
// they left (a group's next message comes in the same answer); ids no
// longer held are listed in not_held next to the new messages, never in
// an error that would lose them.
func TestPullReceiveCarriesAcks(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`, "public.t")
	e := startAPI(t, b)
	b.exec(t, `INSERT INTO t VALUES (1, 0)`)
	b.exec(t, `UPDATE t SET v = 1 WHERE id = 1`)
	b.exec(t, `UPDATE t SET v = 2 WHERE id = 1`)

	receive := func(body map[string]any) receivedAnswer {
		t.Helper()
		return decodeAs[receivedAnswer](t, e.must(t, 200, "POST", "/api/sinks/s/receive", body))
	}
	first := receive(map[string]any{"wait": "10s", "batch_size": 1})
	if len(first.Data) != 1 || first.Data[0].Message.Action != "insert" || first.Acked != nil || first.NotHeld != nil {
		t.Fatalf("first receive: %+v", first)
	}
	// One group: nothing more can be received while its first is held.
	if got := e.receive(t, "s", map[string]any{"wait": "0s"}); len(got) != 0 {
		t.Fatalf("received a held group's next message: %+v", got)
	}
	second := receive(map[string]any{"wait": "10s", "batch_size": 1, "ack_ids": ackIDsOf(first.Data)})
	if second.Acked == nil || *second.Acked != 1 || len(second.NotHeld) != 0 || len(second.Data) != 1 || second.Data[0].Message.Record["v"] != float64(1) {
		t.Fatalf("receive carrying the first ack: %+v", second)
	}
	// Acking the first again and the second: one not held, one acked,
	// and the group's last message comes with the answer.
	third := receive(map[string]any{"wait": "10s", "batch_size": 5, "ack_ids": append(ackIDsOf(first.Data), ackIDsOf(second.Data)...)})
	if third.Acked == nil || *third.Acked != 1 || !slices.Equal(third.NotHeld, ackIDsOf(first.Data)) || len(third.Data) != 1 || third.Data[0].Message.Record["v"] != float64(2) {
		t.Fatalf("receive carrying a stale and a live ack: %+v", third)
	}
	// Nothing left to receive: the acks still count, after the wait.
	last := receive(map[string]any{"wait": "200ms", "ack_ids": ackIDsOf(third.Data)})
	if last.Acked == nil || *last.Acked != 1 || len(last.Data) != 0 {
		t.Fatalf("receive carrying the last ack: %+v", last)
	}
	if ms := e.messages(t, "s", ""); len(ms) != 0 {
		t.Errorf("messages left after every ack: %+v", ms)
	}
	waitFor(t, 10*time.Second, "the three acked messages in the history", func() bool {
		return len(e.messages(t, "s", "?state=delivered")) == 3
	})
}

// Two consumers share one sink with hot groups: each group's messages are
// acknowledged in commit order, no group is ever held by both at once,
// every message arrives, and partial acks and nacks of a batch (a prefix
// acked, the rest nacked) keep all of that.
func TestPullTwoConsumersHotGroups(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY, g int NOT NULL)`, "public.t")
	b.cfg.Sinks[0].GroupBy = map[string][]string{"public.t": {"g"}}
	e := startAPI(t, b)

	const groups, perTx, txs = 4, 10, 20
	total := perTx * txs
	var mu sync.Mutex
	holder := map[int]int{}  // group -> consumer holding it
	acked := map[int][]int{} // group -> ids in the order acked
	var overlaps []string
	count := 0
	per := map[int]int{} // consumer -> messages it acked
	finished := make(chan struct{})
	var finish sync.Once
	consumer := func(me int) {
		for round := 0; ; round++ {
			select {
			case <-finished:
				return
			default:
			}
			got := e.receive(t, "s", map[string]any{"wait": "2s", "batch_size": 7, "visibility_timeout": "60s"})
			if len(got) == 0 {
				continue
			}
			mu.Lock()
			for _, m := range got {
				g := int(m.Message.Record["g"].(float64))
				if h, ok := holder[g]; ok && h != me {
					overlaps = append(overlaps, fmt.Sprintf("group %d received by consumer %d while consumer %d holds it", g, me, h))
				}
				holder[g] = me
			}
			mu.Unlock()
			// Work on the batch a while, so that a group handed to the
			// other consumer meanwhile is seen held by both.
			time.Sleep(time.Duration(1+rand.IntN(10)) * time.Millisecond)
			// Ack a prefix; every third round nack the rest (it comes
			// back, in order, to either consumer), else ack it apart.
			cut := (len(got) + 1) / 2
			ack := func(part []pulled) {
				mu.Lock()
				for _, m := range part {
					g := int(m.Message.Record["g"].(float64))
					acked[g] = append(acked[g], int(m.Message.Record["id"].(float64)))
					count++
					per[me]++
				}
				if count == total {
					finish.Do(func() { close(finished) })
				}
				mu.Unlock()
			}
			// A group is released before the outcome that hands it on
			// commits, so an overlap seen is a real one.
			release := func(part, keep []pulled) {
				mu.Lock()
				for _, m := range part {
					g := int(m.Message.Record["g"].(float64))
					if !slices.ContainsFunc(keep, func(k pulled) bool { return int(k.Message.Record["g"].(float64)) == g }) {
						delete(holder, g)
					}
				}
				mu.Unlock()
			}
			rest := got[cut:]
			ack(got[:cut])
			release(got[:cut], rest)
			e.must(t, 200, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(got[:cut])})
			if len(rest) == 0 {
				continue
			}
			release(rest, nil)
			if round%3 == 2 {
				e.must(t, 200, "POST", "/api/sinks/s/nack", map[string]any{"ack_ids": ackIDsOf(rest)})
				continue
			}
			ack(rest)
			e.must(t, 200, "POST", "/api/sinks/s/ack", map[string]any{"ack_ids": ackIDsOf(rest)})
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { consumer(1) })
	wg.Go(func() { consumer(2) })
	id := 0
	for range txs {
		sql := "INSERT INTO t VALUES "
		for j := range perTx {
			id++
			if j > 0 {
				sql += ","
			}
			sql += fmt.Sprintf("(%d, %d)", id, id%groups)
		}
		b.exec(t, sql)
	}
	select {
	case <-finished:
	case <-time.After(90 * time.Second):
		mu.Lock()
		t.Errorf("only %d of %d messages acked", count, total)
		mu.Unlock()
		finish.Do(func() { close(finished) })
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for _, o := range overlaps {
		t.Error(o)
	}
	// They share the work, as workers do: 4 hot groups, so neither can
	// hold them all for long.
	if per[1] == 0 || per[2] == 0 {
		t.Errorf("acked per consumer: %v; want both to have worked", per)
	}
	for g, ids := range acked {
		for i := 1; i < len(ids); i++ {
			if ids[i] <= ids[i-1] {
				t.Errorf("group %d acked out of commit order: %v", g, ids)
				break
			}
		}
		if len(ids) != total/groups {
			t.Errorf("group %d: %d messages acked, want %d", g, len(ids), total/groups)
		}
	}
}

func decodeB64(s string) (string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	return string(raw), err
}

func encodeB64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// walhook receive prints JSON lines; without --ack the messages stay
// received, with --ack they are gone (a batch at a time too); --follow
// keeps polling until interrupted and then exits 0; an unknown sink
// fails in one line.
func TestPullCLI(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	c := &cliEnv{apiEnv: startAPI(t, b), bin: walhookBin(t)}
	b.exec(t, `INSERT INTO t VALUES (1), (2)`)

	lines := func(out string) []pulled {
		var ms []pulled
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if l != "" {
				ms = append(ms, decodeAs[pulled](t, []byte(l)))
			}
		}
		return ms
	}
	got := lines(c.ok(t, "receive", "s", "--wait", "10s", "--batch-size", "10", "--visibility-timeout", "1s"))
	if len(got) != 2 || got[0].AckID == "" || got[0].Message.Record["id"] != float64(1) {
		t.Fatalf("receive: %+v", got)
	}
	// Not acked: back after the visibility timeout; this time acked.
	got = lines(c.ok(t, "receive", "s", "--wait", "20s", "--batch-size", "10", "--ack"))
	if len(got) != 2 {
		t.Fatalf("receive --ack: %+v", got)
	}
	if ms := c.messages(t, "s", ""); len(ms) != 0 {
		t.Errorf("messages left after receive --ack: %+v", ms)
	}

	// --follow --ack, a batch at a time: each batch is acked by the
	// receive of the next, the last by the long poll after it.
	cmd := c.command("receive", "s", "--follow", "--ack", "--wait", "1s", "--batch-size", "1")
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.exec(t, `INSERT INTO t VALUES (3), (4), (5)`)
	waitFor(t, 20*time.Second, "the followed messages to be acked", func() bool {
		return len(c.messages(t, "s", "?state=delivered")) == 5
	})
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("receive --follow after Ctrl-C: %v (%s)", err, errOut.String())
	}
	got = lines(out.String())
	if len(got) != 3 || got[0].Message.Record["id"] != float64(3) || got[2].Message.Record["id"] != float64(5) || errOut.Len() != 0 {
		t.Errorf("receive --follow printed %q, stderr %q", out.String(), errOut.String())
	}
	c.fails(t, "not found", "receive", "nope")
}

// walhook receive --follow rides out an outage of the API (a restart, a
// proxy answering 503): it says so on stderr, tries again, and prints
// and acks every message in order once walhook answers again.
func TestPullCLIFollowRidesOutAnOutage(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	c := &cliEnv{apiEnv: startAPI(t, b), bin: walhookBin(t)}
	target, err := url.Parse(c.base)
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	forward := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, `{"error":{"code":"unavailable","message":"restarting"}}`, http.StatusServiceUnavailable)
			return
		}
		forward.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	cmd := exec.Command(c.bin, "receive", "s", "--follow", "--ack", "--wait", "1s", "--batch-size", "1")
	cmd.Env = append(os.Environ(), "WALHOOK_URL="+proxy.URL, "WALHOOK_TOKEN="+apiToken)
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	b.exec(t, `INSERT INTO t VALUES (1)`)
	waitFor(t, 20*time.Second, "the first message to be acked", func() bool {
		return len(c.messages(t, "s", "?state=delivered")) == 1
	})
	down.Store(true)
	b.exec(t, `INSERT INTO t VALUES (2)`)
	b.exec(t, `INSERT INTO t VALUES (3)`)
	waitFor(t, 10*time.Second, "receive to meet the outage", func() bool {
		return strings.Contains(errOut.String(), "trying again")
	})
	time.Sleep(500 * time.Millisecond)
	down.Store(false)
	waitFor(t, 20*time.Second, "every message to be acked after the outage", func() bool {
		return len(c.messages(t, "s", "?state=delivered")) == 3
	})
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("receive --follow after Ctrl-C: %v (%s)", err, errOut.String())
	}
	var ids []float64
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		ids = append(ids, decodeAs[pulled](t, []byte(l)).Message.Record["id"].(float64))
	}
	if !slices.Equal(ids, []float64{1, 2, 3}) {
		t.Errorf("printed ids %v, want 1, 2, 3 once each in order; stderr %q", ids, errOut.String())
	}
	if !strings.Contains(errOut.String(), "503") && !strings.Contains(errOut.String(), "restarting") {
		t.Errorf("stderr does not say what went wrong: %q", errOut.String())
	}
}

// deliveredMetric reads walhook_messages_delivered_total of sink s.
func deliveredMetric(t *testing.T, e *apiEnv) float64 {
	t.Helper()
	return sinkMetric(t, e, "walhook_messages_delivered_total")
}

// sinkMetric reads a counter of sink s.
func sinkMetric(t *testing.T, e *apiEnv, name string) float64 {
	t.Helper()
	for _, l := range strings.Split(string(e.must(t, 200, "GET", "/metrics", nil)), "\n") {
		if v, ok := strings.CutPrefix(l, name+`{sink="s"} `); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			return f
		}
	}
	return 0
}

// A receive's answer says its length (no chunks), so a consumer that
// stops reading at the end of the JSON value, as a json.Decoder does,
// keeps its connection for the next receive: with chunks it never read
// the last one, and every receive opened a connection of its own.
func TestPullReceiveKeepsConnection(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`, "public.t")
	e := startAPI(t, b)
	b.exec(t, `INSERT INTO t SELECT g, repeat('x', 3000) FROM generate_series(1, 2) g`)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	var reused []bool
	for range 2 {
		var got bool
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { got = info.Reused }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), "POST", e.base+"/api/sinks/s/receive",
			strings.NewReader(`{"wait": "10s", "batch_size": 1, "visibility_timeout": "1m"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+apiToken)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			Data []pulled `json:"data"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || len(out.Data) != 1 || resp.ContentLength < 3000 {
			t.Fatalf("receive: %d, %d messages, length %d, %v", resp.StatusCode, len(out.Data), resp.ContentLength, err)
		}
		reused = append(reused, got)
	}
	if !reused[1] {
		t.Errorf("the second receive opened a new connection: the first answer was not read to its end")
	}
}

// A consumer reading a backlog finds its next batch claimed ahead
// (prefetched) while it handles the last one: the receive after a full
// batch takes it, in order and counted once; one nobody takes goes back
// within moments, never attempted, and a smaller receive is not handed
// more than it asked for.
func TestPullPrefetch(t *testing.T) {
	b := pullBundle(t, `CREATE TABLE t (id int PRIMARY KEY)`, "public.t")
	e := startAPI(t, b)
	b.exec(t, `INSERT INTO t SELECT generate_series(1, 30)`)
	waitFor(t, 10*time.Second, "30 messages pending", func() bool {
		return decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)).RawCounts["pending"] == 30
	})
	inFlight := func() int64 {
		return decodeAs[apiSink](t, e.must(t, 200, "GET", "/api/sinks/s", nil)).RawCounts["in_flight"]
	}

	first := e.receive(t, "s", map[string]any{"batch_size": 10})
	if len(first) != 10 {
		t.Fatalf("first receive: %d messages, want 10", len(first))
	}
	// The next batches are claimed ahead, then released: nobody asked.
	waitFor(t, 5*time.Second, "a prefetch of the next batches (more than 10 in flight)", func() bool { return inFlight() > 10 })
	waitFor(t, 5*time.Second, "the prefetch released (10 in flight)", func() bool { return inFlight() == 10 })
	for _, m := range e.messages(t, "s", "?state=pending") {
		if m.DeliverCount != 0 {
			t.Fatalf("a released prefetch counted an attempt: %+v", m)
		}
	}

	// Read on: each receive carries the acks of the one before, and
	// every row arrives once, in commit order.
	seen := map[float64]bool{}
	var order []float64
	batch := first
	for len(batch) > 0 {
		for _, m := range batch {
			id := m.Message.Record["id"].(float64)
			if seen[id] {
				t.Fatalf("row %v received twice", id)
			}
			seen[id] = true
			order = append(order, id)
		}
		size := 10
		if len(order) == 20 {
			size = 4 // smaller than the prefetch: it must not be handed out
		}
		batch = e.receive(t, "s", map[string]any{"batch_size": size, "ack_ids": ackIDsOf(batch)})
		if len(batch) > size {
			t.Fatalf("receive of %d got %d messages", size, len(batch))
		}
	}
	if len(order) != 30 || !slices.IsSorted(order) {
		t.Fatalf("received %d rows in order %v; want 1..30 in commit order", len(order), order)
	}
	waitFor(t, 10*time.Second, "30 acked messages in the history", func() bool {
		return len(e.messages(t, "s", "?state=delivered&limit=100")) == 30
	})
	for _, m := range e.messages(t, "s", "?state=delivered&limit=100") {
		if m.DeliverCount != 1 {
			t.Fatalf("delivered message attempted %d times, want once: %+v", m.DeliverCount, m)
		}
	}
}
