package api

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/outbox"
)

// Pull sinks (docs/reference.md#57-pull-sinks): consumers receive, ack and nack
// over HTTP on the outbox's claim protocol (outbox/pull.go). A receive is a
// claim whose lease is the visibility timeout; an ack id names one message of
// one claim.
//
// Ack ids are base64url (no padding) of "v1.SINK.CLAIM.MESSAGE", the
// sink's, the claim's and the message's ids. They are opaque to clients
// and need no secret: an ack or nack takes effect only while the claim it
// names is live, belongs to the sink of the route and still holds the
// message (rule F), so a forged id can name nothing it could harm. Ids
// that do not decode, or that name another sink, are refused with a 400
// (nothing is done); ids that decode but are no longer held (the
// visibility timeout passed, they were acked or nacked already, or never
// handed out) are answered with a 409 "not_held" that lists them, after
// the others took effect.

// Receive limits.
const (
	maxReceiveBatch = config.MaxBatchSize
	// maxReceiveWait stays well inside the server's ReadTimeout (60s),
	// whose deadline also ends a request still being answered.
	maxReceiveWait           = 30 * time.Second
	defaultVisibilityTimeout = 30 * time.Second
	minVisibilityTimeout     = time.Second
	maxVisibilityTimeout     = 12 * time.Hour
	maxAckIDs                = 10000
	// receivePoll bounds how long a waiting receive goes without looking:
	// a backoff ending or a claim lapsing sends no notification.
	receivePoll = time.Second
)

func (s *Server) pullRoutes() {
	s.handle("POST /api/sinks/{name}/receive", s.receive)
	s.handle("POST /api/sinks/{name}/ack", s.ackReceived)
	s.handle("POST /api/sinks/{name}/nack", s.nackReceived)
}

// pullSink finds the route's sink and refuses a webhook sink: walhook
// delivers those itself, and a consumer's claim would take their groups
// from delivery.
func (s *Server) pullSink(ctx context.Context, name string) (*outbox.SinkRow, error) {
	row, err := s.pullSinks.get(ctx, s.d.Store, name)
	if err != nil {
		return nil, err
	}
	if !row.Config.IsPull() {
		return nil, conflict("not_pull", "sink %q is a %s sink: walhook delivers its messages; only pull sinks (kind: pull) can be received from", name, row.Config.Kind)
	}
	return row, nil
}

// sinkCache keeps the sinks receives, acks and nacks look up for
// sinkCacheTTL: a consumer polls its sink many times a second, and the
// lookup would otherwise cost as much as the claim. A change to the sink
// reaches consumers within the TTL; nothing stale can break the protocol:
// a claim or an outcome on a deleted sink finds nothing to take or hold.
type sinkCache struct {
	mu   sync.Mutex
	rows map[string]cachedSink
}

type cachedSink struct {
	row *outbox.SinkRow
	at  time.Time
}

const sinkCacheTTL = time.Second

func (c *sinkCache) get(ctx context.Context, store *outbox.Store, name string) (*outbox.SinkRow, error) {
	c.mu.Lock()
	e, ok := c.rows[name]
	c.mu.Unlock()
	if ok && time.Since(e.at) < sinkCacheTTL {
		return e.row, nil
	}
	row, err := store.GetSink(ctx, name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.rows == nil || len(c.rows) > 1000 {
		c.rows = map[string]cachedSink{}
	}
	c.rows[name] = cachedSink{row: row, at: time.Now()}
	c.mu.Unlock()
	return row, nil
}

type receiveRequest struct {
	BatchSize         *int             `json:"batch_size"`
	Wait              *config.Duration `json:"wait"`
	VisibilityTimeout *config.Duration `json:"visibility_timeout"`
	// AckIDs are acknowledged before the receive, in its first claim's
	// transaction: a consumer acks a batch and asks for the next in one
	// round trip.
	AckIDs []string `json:"ack_ids"`
}

func (s *Server) receive(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	body, err := readBody(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req receiveRequest
	if strings.TrimSpace(string(body)) != "" { // every field is optional, the body too
		if err := decodeStrict(body, &req); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	row, err := s.pullSink(ctx, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	batch, wait, vis, err := receiveParams(req, row.Config)
	var refs []outbox.PullRef
	var byRef map[outbox.PullRef]string
	if err == nil && len(req.AckIDs) > 0 {
		refs, byRef, err = ackIDs(req.AckIDs, row.ID, row.Name)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}

	// Subscribe before the first look: a commit between a look that found
	// nothing and the subscription would otherwise be slept through.
	wake, unsubscribe := s.waker.subscribe(ctx, row.ID)
	defer unsubscribe()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	poll := time.NewTicker(receivePoll)
	defer poll.Stop()
	claim := outbox.ClaimRequest{
		SinkID: row.ID, BatchSize: batch, MaxAckPending: row.Config.MaxAckPending, Lease: vis,
		Worker: "receive " + r.RemoteAddr, Pull: true, MaxAge: row.Config.Retry.MaxAge.D(),
	}
	var acks *ackSummary
	// The first look takes the batch claimed ahead for the sink, if one
	// is (rule A), and goes with the acks, in their transaction.
	pre := s.prefetch.take(ctx, row.ID, batch)
	for {
		// Not cancelled half way when it acks or adopts: acks that
		// committed as the client went away are still recorded, and a
		// prefetch is adopted or released, not left to its lease.
		lctx := ctx
		if len(refs) > 0 || pre != nil {
			lctx = context.WithoutCancel(ctx)
		}
		res, b, err := s.d.Store.Receive(lctx, refs, s.handed.take(refs), claim, pre)
		if res != nil { // the acks took effect, even if the look after them failed
			acks = s.acked(row, res, byRef)
		}
		refs = nil
		if err != nil {
			if pre != nil {
				s.prefetch.release(pre) // unless adopted before the error: then nothing
			}
			s.fail(w, r, fmt.Errorf("receive from sink %s: %w", row.Name, err))
			return
		}
		pre = nil
		if b != nil {
			if len(b.Messages) == batch {
				// More may be waiting: claim the next batch while the
				// consumer handles this one.
				s.prefetch.start(claim)
			}
			s.handed.add(b, vis)
			writeReceived(w, row.ID, b, acks)
			return
		}
		select {
		case <-wake:
		case <-poll.C:
		case <-deadline.C:
			writeReceived(w, row.ID, nil, acks)
			return
		case <-s.stop:
			writeReceived(w, row.ID, nil, acks)
			return
		case <-ctx.Done():
			return // the client went away
		}
	}
}

// ackSummary is what the acks a receive carried did, for its answer.
type ackSummary struct {
	acked   int
	notHeld []string
}

// acked counts and records acknowledged messages (metrics, the delivered
// history) and sums up what an ack did.
func (s *Server) acked(row *outbox.SinkRow, res *outbox.PullAckResult, byRef map[outbox.PullRef]string) *ackSummary {
	now := time.Now()
	metrics.Delivered.WithLabelValues(row.Name).Add(float64(len(res.Acked)))
	latency := metrics.Latency.WithLabelValues(row.Name)
	for _, m := range res.Acked {
		latency.Observe(now.Sub(m.CreatedAt).Seconds())
	}
	s.recordDelivered(&outbox.Batch{SinkID: row.ID, Messages: res.Acked}, now)
	sum := &ackSummary{acked: len(res.Acked), notHeld: []string{}}
	for _, ref := range res.NotHeld {
		sum.notHeld = append(sum.notHeld, byRef[ref])
	}
	return sum
}

// writeReceived answers a receive: batch b (nil: nothing came), and what
// the acks it carried did (nil: it carried none). Payloads are stored as
// the JSON they are delivered as (rendered at capture), so they are
// written as they are, like push delivery's bodies, not decoded and
// encoded again.
func writeReceived(w http.ResponseWriter, sinkID int64, b *outbox.Batch, acks *ackSummary) {
	var msgs []outbox.Message
	var claimID int64
	if b != nil {
		msgs, claimID = b.Messages, b.ClaimID
	}
	n := 64
	for _, m := range msgs {
		n += len(m.Payload) + 64
	}
	if acks != nil {
		for _, id := range acks.notHeld {
			n += len(id) + 3
		}
	}
	buf := make([]byte, 0, n)
	buf = append(buf, `{"data":[`...)
	for i, m := range msgs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"ack_id":"`...)
		buf = appendAckID(buf, sinkID, claimID, m.ID) // base64url: nothing to escape
		buf = append(buf, `","message":`...)
		buf = append(buf, m.Payload...)
		buf = append(buf, '}')
	}
	buf = append(buf, ']')
	if acks != nil {
		buf = fmt.Appendf(buf, `,"acked":%d,"not_held":[`, acks.acked)
		for i, id := range acks.notHeld {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendQuote(buf, id)
		}
		buf = append(buf, ']')
	}
	buf = append(buf, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	// Its length, not chunks (net/http chunks what it cannot hold, 2 KB):
	// a client that stops reading at the end of the JSON value (as a
	// json.Decoder does) then still reads the body to its end, and its
	// connection is kept for the next receive instead of closed.
	w.Header().Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf)
}

// receiveParams applies the defaults (the sink's batch_size, no wait, a
// visibility timeout of 30s) and the bounds.
func receiveParams(req receiveRequest, sink config.Sink) (batch int, wait, vis time.Duration, err error) {
	var errs validationError
	batch = sink.BatchSize
	if req.BatchSize != nil {
		batch = *req.BatchSize
		if batch < 1 || batch > maxReceiveBatch {
			errs = append(errs, fieldError{Field: "batch_size", Message: fmt.Sprintf("%d is out of range 1..%d", batch, maxReceiveBatch)})
		}
	}
	if req.Wait != nil {
		wait = req.Wait.D()
		if wait < 0 || wait > maxReceiveWait {
			errs = append(errs, fieldError{Field: "wait", Message: fmt.Sprintf("%s is out of range 0s..%s", wait, maxReceiveWait)})
		}
	}
	vis = defaultVisibilityTimeout
	if req.VisibilityTimeout != nil {
		vis = req.VisibilityTimeout.D()
		if vis < minVisibilityTimeout || vis > maxVisibilityTimeout {
			errs = append(errs, fieldError{Field: "visibility_timeout", Message: fmt.Sprintf("%s is out of range %s..%s", vis, minVisibilityTimeout, maxVisibilityTimeout)})
		}
	}
	if len(errs) > 0 {
		return 0, 0, 0, errs
	}
	return batch, wait, vis, nil
}

func encodeAckID(sinkID, claimID, messageID int64) string {
	return string(appendAckID(nil, sinkID, claimID, messageID))
}

// appendAckID appends the ack id to dst: a receive writes one per
// message, without building each as a string of its own.
func appendAckID(dst []byte, sinkID, claimID, messageID int64) []byte {
	var raw [80]byte // "v1." and three int64s with their dots: 62 bytes for ids ≥ 0, 65 at most
	r := append(raw[:0], "v1."...)
	r = strconv.AppendInt(r, sinkID, 10)
	r = append(r, '.')
	r = strconv.AppendInt(r, claimID, 10)
	r = append(r, '.')
	r = strconv.AppendInt(r, messageID, 10)
	return base64.RawURLEncoding.AppendEncode(dst, r)
}

// decodeAckID reads an ack id; ok is false when it is not one walhook
// issued in this format.
func decodeAckID(id string) (sinkID int64, ref outbox.PullRef, ok bool) {
	raw, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil {
		return 0, ref, false
	}
	parts := strings.Split(string(raw), ".")
	if len(parts) != 4 || parts[0] != "v1" {
		return 0, ref, false
	}
	var n [3]int64
	for i, p := range parts[1:] {
		v, err := strconv.ParseInt(p, 10, 64)
		if err != nil || v < 1 {
			return 0, ref, false
		}
		n[i] = v
	}
	return n[0], outbox.PullRef{ClaimID: n[1], MessageID: n[2]}, true
}

// ackIDs checks the ack ids of an ack or nack for the sink: every id must
// decode and name this sink, else the whole request is refused.
func ackIDs(ids []string, sinkID int64, sinkName string) ([]outbox.PullRef, map[outbox.PullRef]string, error) {
	if len(ids) == 0 {
		return nil, nil, invalid("ack_ids", "is required: a list of ack_id values from a receive")
	}
	if len(ids) > maxAckIDs {
		return nil, nil, invalid("ack_ids", "lists %d ids; at most %d per request", len(ids), maxAckIDs)
	}
	var errs validationError
	refs := make([]outbox.PullRef, 0, len(ids))
	byRef := make(map[outbox.PullRef]string, len(ids))
	for i, id := range ids {
		sink, ref, ok := decodeAckID(id)
		switch {
		case !ok:
			errs = append(errs, fieldError{Field: fmt.Sprintf("ack_ids[%d]", i), Message: fmt.Sprintf("%q is not an ack id (use the ack_id of a received message as it was given)", id)})
		case sink != sinkID:
			errs = append(errs, fieldError{Field: fmt.Sprintf("ack_ids[%d]", i), Message: fmt.Sprintf("%q is an ack id of another sink, not of %s", id, sinkName)})
		default:
			if _, dup := byRef[ref]; !dup {
				refs = append(refs, ref)
				byRef[ref] = id
			}
		}
	}
	if len(errs) > 0 {
		return nil, nil, errs
	}
	return refs, byRef, nil
}

type ackRequest struct {
	AckIDs []string `json:"ack_ids"`
}

type nackRequest struct {
	AckIDs    []string         `json:"ack_ids"`
	NotBefore *time.Time       `json:"not_before"`
	Delay     *config.Duration `json:"delay"`
	// Reason is recorded as the messages' last_error.
	Reason string `json:"reason"`
}

// notHeldBody is the 409 of an ack or nack some of whose ids were no
// longer held: the error, and which ids.
type notHeldBody struct {
	Error struct {
		Code    string   `json:"code"`
		Message string   `json:"message"`
		AckIDs  []string `json:"ack_ids"`
	} `json:"error"`
}

func writeNotHeld(w http.ResponseWriter, verb string, done int, notHeld []outbox.PullRef, byRef map[outbox.PullRef]string) {
	var b notHeldBody
	b.Error.Code = "not_held"
	b.Error.Message = fmt.Sprintf("%d of %d ack ids are no longer held (the visibility timeout passed, they were acked or nacked already, or never received): nothing was done for them; the other %d were %s",
		len(notHeld), len(notHeld)+done, done, verb)
	for _, ref := range notHeld {
		b.Error.AckIDs = append(b.Error.AckIDs, byRef[ref])
	}
	writeJSON(w, http.StatusConflict, b)
}

// pullOutcome reads the body of an ack or a nack into req, finds the pull
// sink, runs check on the rest of the body (when set), and resolves the
// ack ids. On an error it has answered, and ok is false.
func (s *Server) pullOutcome(w http.ResponseWriter, r *http.Request, req any, ids *[]string, check func() error) (
	row *outbox.SinkRow, refs []outbox.PullRef, byRef map[outbox.PullRef]string, ok bool) {
	body, err := readBody(r)
	if err == nil {
		err = decodeStrict(body, req)
	}
	if err == nil {
		row, err = s.pullSink(r.Context(), r.PathValue("name"))
	}
	if err == nil && check != nil {
		err = check()
	}
	if err == nil {
		refs, byRef, err = ackIDs(*ids, row.ID, row.Name)
	}
	if err != nil {
		s.fail(w, r, err)
		return nil, nil, nil, false
	}
	return row, refs, byRef, true
}

func (s *Server) ackReceived(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var req ackRequest
	row, refs, byRef, ok := s.pullOutcome(w, r, &req, &req.AckIDs, nil)
	if !ok {
		return
	}
	res, err := s.d.Store.PullAckKnown(context.WithoutCancel(ctx), row.ID, refs, s.handed.take(refs))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.acked(row, res, byRef)
	if len(res.NotHeld) > 0 {
		writeNotHeld(w, "acked", len(res.Acked), res.NotHeld, byRef)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"acked": len(res.Acked)})
}

// recordDelivered puts acked messages in the recent-delivery history (a
// debugging aid, not part of the guarantee) off the ack's path: through
// delivery's batched history when the service wired it, else written in
// the background.
func (s *Server) recordDelivered(b *outbox.Batch, at time.Time) {
	if len(b.Messages) == 0 {
		return
	}
	if s.d.Delivered != nil {
		s.d.Delivered(b, 0, at)
		return
	}
	rows := make([]outbox.Delivered, len(b.Messages))
	for i, m := range b.Messages {
		rows[i] = outbox.Delivered{SinkID: b.SinkID, Message: m, DeliverCount: m.DeliverCount + 1, At: at}
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.d.Store.RecordDelivered(ctx, rows); err != nil {
			s.log.Warn().Err(err).Msg("record received messages in the delivered history")
		}
	}()
}

func (s *Server) nackReceived(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var req nackRequest
	var notBefore time.Time
	row, refs, byRef, ok := s.pullOutcome(w, r, &req, &req.AckIDs, func() error {
		switch {
		case req.NotBefore != nil && req.Delay != nil:
			return invalid("delay", "give not_before or delay, not both")
		case req.NotBefore != nil:
			notBefore = *req.NotBefore
		case req.Delay != nil:
			if req.Delay.D() < 0 {
				return invalid("delay", "%s must not be negative", req.Delay)
			}
			if req.Delay.D() > 0 {
				notBefore = time.Now().Add(req.Delay.D())
			}
		}
		return nil
	})
	if !ok {
		return
	}
	s.handed.take(refs) // their claims end or shrink: no ack will end them whole
	reason := req.Reason
	if reason == "" {
		reason = "nacked by a consumer"
	}
	res, err := s.d.Store.PullNack(context.WithoutCancel(ctx), row.ID, refs, notBefore, row.Config.Retry.MaxAge.D(), reason)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if res.Failed > 0 {
		metrics.Failed.WithLabelValues(row.Name).Add(float64(res.Failed))
		s.log.Warn().Str("sink", row.Name).Int("messages", res.Failed).Dur("max_age", row.Config.Retry.MaxAge.D()).
			Msg("nacked messages passed retry.max_age: they are failed now (redeliver revives them)")
	}
	if len(res.NotHeld) > 0 {
		writeNotHeld(w, "nacked", res.Nacked, res.NotHeld, byRef)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"nacked": res.Nacked, "failed": res.Failed})
}
