package outbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
)

// puller is a pull consumer in the torture (outbox/pull.go): it receives
// (a pull claim), and records outcomes on parts of the batch: it acks a
// prefix, then acks, nacks (backoff, or past max_age into failed) or
// abandons the rest; an abandoning puller lets its short visibility
// timeout lapse (sometimes past max_age) and then acks late, which must
// change nothing. Some acks carry the next receive (Receive: one
// transaction). A group is marked out of flight only when none of its
// messages remains held, so a group handed on while a part of it is
// still held shows up as two in flight (I1).
//
// Pullers also claim ahead as api's prefetcher does (rule A): right after
// a receive, sometimes, a prefetch (a push-style claim, its groups in
// flight for the puller as any claim's), which the next receive adopts,
// alone or with acks, or which is released or abandoned to its lease.
// An ack naming a prefetch's messages before its adoption must change
// nothing. A prefetch with a short lease may lapse before its adoption is
// tried: it is out of flight at once (as a slow worker's batch), and the
// adoption must then hand out something else, or nothing.
func (tt *torture) puller(ctx context.Context, id int) {
	r := tt.rng(uint64(200 + id))
	name := "p" + strconv.Itoa(id)
	var next *Batch // received with the last ack
	var nextStart int64
	var pre *Batch // a prefetch not adopted yet
	var preMs []*tmsg
	var preStart int64
	for ctx.Err() == nil {
		chaos := tt.chaos.Load()
		abandon := chaos && r.IntN(25) == 0
		lease, maxAge := 10*time.Second, time.Duration(0)
		if abandon {
			lease = 200 * time.Millisecond
			if r.IntN(3) == 0 {
				maxAge = time.Microsecond // the lapse fails them
			}
		}
		req := ClaimRequest{SinkID: tt.b.sinkID, BatchSize: 1 + r.IntN(8), MaxAckPending: 60,
			Lease: lease, Worker: name, Pull: true, MaxAge: maxAge}
		batch, start := next, nextStart
		next = nil
		if batch == nil && pre != nil {
			p := pre
			pre = nil
			switch r.IntN(8) {
			case 0:
				tt.endPost(name, p)
				if err := tt.b.store.Release(ctx, p); err != nil && ctx.Err() == nil {
					tt.violate("error", "%s: release: %v", name, err)
				}
				tt.ops.Add(1)
				continue
			case 1: // abandoned: R ends it with its lease
				tt.endPost(name, p)
				continue
			case 2:
				tt.pullAck(ctx, name, preMs, refsOfBatch(p), true, knownOf(r, p))
			}
			tt.endPost(name, p) // out of flight until the adoption is known
			adoptStart := tt.tick()
			var err error
			_, batch, err = tt.b.store.Receive(ctx, nil, nil, req, p)
			tt.ops.Add(1)
			if err != nil {
				if ctx.Err() == nil {
					tt.violate("error", "%s: receive adopting: %v", name, err)
				}
				return
			}
			start = adoptStart
			if batch != nil && batch.ClaimID == p.ClaimID {
				start = preStart // claimed then: checked as of then
				tt.adopted.Add(1)
			}
			if batch == nil {
				continue
			}
		}
		if batch == nil {
			var err error
			start = tt.tick()
			batch, err = tt.b.store.Claim(ctx, req)
			tt.ops.Add(1)
			if err != nil {
				if ctx.Err() == nil {
					tt.violate("error", "%s: receive: %v", name, err)
				}
				return
			}
		} else {
			abandon = false // its lease is the last request's
		}
		if batch == nil {
			time.Sleep(time.Duration(1+r.IntN(5)) * time.Millisecond)
			continue
		}
		ms := tt.checkClaim(name, batch, start, tt.tick())
		if len(ms) != len(batch.Messages) {
			continue // reported by checkClaim
		}
		refs := refsOfBatch(batch)
		if pre == nil && !abandon && r.IntN(3) == 0 {
			// Claim ahead, as api's prefetcher does after a receive.
			preq := req
			preq.Pull, preq.MaxAge, preq.Lease, preq.Worker = false, 0, 10*time.Second, name+" prefetch"
			short := tt.chaos.Load() && r.IntN(4) == 0
			if short {
				preq.Lease = 100 * time.Millisecond
			}
			preStart = tt.tick()
			p, err := tt.b.store.Claim(ctx, preq)
			tt.ops.Add(1)
			if err != nil {
				if ctx.Err() == nil {
					tt.violate("error", "%s: prefetch: %v", name, err)
				}
				return
			}
			if p != nil {
				preMs = tt.checkClaim(name, p, preStart, tt.tick())
				if short {
					tt.endPost(name, p) // its lease may end at any time
				}
				if len(preMs) == len(p.Messages) {
					pre = p
				}
			}
		}
		if abandon {
			// Its lease may run out at any time: not counted in flight.
			tt.endPost(name, batch)
			tt.mu.Lock()
			for _, m := range ms {
				m.history = append(m.history, fmt.Sprintf("abandoned by %s at %d (lapse fails: %v)", name, tt.clock.Load(), maxAge > 0))
				if maxAge > 0 {
					m.everFailed = true
				}
			}
			tt.mu.Unlock()
			claimed := time.Now()
			time.Sleep(lease + 50*time.Millisecond - time.Since(claimed))
			tt.pullAck(ctx, name, ms, refs, true, knownOf(r, batch))
			continue
		}
		time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
		cut := r.IntN(len(ms) + 1)
		rest := map[string]bool{}
		for _, m := range ms[cut:] {
			rest[m.group] = true
		}
		tt.endGroups(name, ms[:cut], rest)
		tt.pullAck(ctx, name, ms[:cut], refs[:cut], false, knownOf(r, batch))
		if cut == len(ms) {
			continue
		}
		tt.endGroups(name, ms[cut:], nil)
		switch {
		case chaos && r.IntN(4) == 0:
			tt.pullNack(ctx, name, ms[cut:], refs[cut:], r.IntN(3) == 0, time.Now().Add(time.Duration(r.IntN(40))*time.Millisecond))
		case r.IntN(2) == 0:
			// Ack and receive the next batch in one transaction.
			req.Lease, req.MaxAge = 10*time.Second, 0
			if pre != nil {
				tt.endPost(name, pre) // out of flight until the adoption is known
			}
			nextStart = tt.tick()
			next = tt.pullAckThen(ctx, name, ms[cut:], refs[cut:], false, knownOf(r, batch), &req, pre)
			if pre != nil && next != nil && next.ClaimID == pre.ClaimID {
				nextStart = preStart
				tt.adopted.Add(1)
			}
			pre = nil
		default:
			tt.pullAck(ctx, name, ms[cut:], refs[cut:], false, knownOf(r, batch))
		}
	}
}

// endGroups marks the groups of ms out of flight, except those in keep.
func (tt *torture) endGroups(who string, ms []*tmsg, keep map[string]bool) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	for _, m := range ms {
		if !keep[m.group] && tt.inflight[m.group] == who {
			delete(tt.inflight, m.group)
		}
	}
}

// pullAck acks ms (refs) and models the outcome: a timely ack must take
// effect for every message, a late one for none.
func (tt *torture) pullAck(ctx context.Context, who string, ms []*tmsg, refs []PullRef, late bool, known []*Batch) {
	if len(ms) > 0 {
		tt.pullAckThen(ctx, who, ms, refs, late, known, nil, nil)
	}
}

// knownOf is the batch as the consumer received it, for PullAckKnown, or
// nil (PullAck), at random: an ack of all of it then ends its claim
// whole, and one of a part, or one after a part, takes the general path.
func knownOf(r *rand.Rand, b *Batch) []*Batch {
	if r.IntN(2) == 0 {
		return nil
	}
	return []*Batch{b}
}

// pullAckThen is pullAck, and when then is set, a receive in the ack's
// transaction (Receive, adopting pre when set), whose batch it returns.
func (tt *torture) pullAckThen(ctx context.Context, who string, ms []*tmsg, refs []PullRef, late bool, known []*Batch, then *ClaimRequest, pre *Batch) *Batch {
	start := tt.tick()
	tt.mu.Lock()
	for _, m := range ms {
		m.outcomes++
	}
	tt.mu.Unlock()
	var res *PullAckResult
	var batch *Batch
	var err error
	if then != nil {
		res, batch, err = tt.b.store.Receive(ctx, refs, known, *then, pre)
	} else {
		res, err = tt.b.store.PullAckKnown(ctx, tt.b.sinkID, refs, known)
	}
	tt.ops.Add(1)
	tt.pullOps.Add(1)
	tt.mu.Lock()
	defer tt.mu.Unlock()
	for _, m := range ms {
		m.outcomes--
	}
	if err != nil {
		if ctx.Err() == nil {
			tt.violateLocked("error", "%s: pull ack: %v", who, err)
		}
		return nil
	}
	acked := map[int64]bool{}
	for _, m := range res.Acked {
		acked[m.ID] = true
	}
	for i, m := range ms {
		m.history = append(m.history, fmt.Sprintf("pull ack by %s (late %v) %d-%d: held %v", who, late, start, tt.clock.Load(), acked[refs[i].MessageID]))
		switch {
		case acked[refs[i].MessageID] && late:
			tt.violateLocked("late ack took effect", "%s: a pull ack after the visibility timeout took effect (message %d)", who, m.n)
		case acked[refs[i].MessageID]:
			m.acked = true
		default:
			if !late {
				tt.violateLocked("timely ack refused", "%s: a timely pull ack of message %d was not held", who, m.n)
			}
		}
	}
	return batch
}

// pullNack nacks ms (refs) until notBefore, or past max_age (fail).
func (tt *torture) pullNack(ctx context.Context, who string, ms []*tmsg, refs []PullRef, fail bool, notBefore time.Time) {
	maxAge := time.Duration(0)
	if fail {
		maxAge = time.Microsecond
	}
	start := tt.tick()
	tt.mu.Lock()
	for _, m := range ms {
		m.outcomes++
	}
	tt.mu.Unlock()
	res, err := tt.b.store.PullNack(ctx, tt.b.sinkID, refs, notBefore, maxAge, "boom")
	tt.ops.Add(1)
	tt.pullOps.Add(1)
	tt.mu.Lock()
	defer tt.mu.Unlock()
	for _, m := range ms {
		m.outcomes--
	}
	if err != nil {
		if ctx.Err() == nil {
			tt.violateLocked("error", "%s: pull nack: %v", who, err)
		}
		return
	}
	if len(res.NotHeld) > 0 {
		tt.violateLocked("timely nack refused", "%s: a timely pull nack found %d of %d messages not held", who, len(res.NotHeld), len(ms))
	}
	for _, m := range ms {
		m.history = append(m.history, fmt.Sprintf("pull nack by %s %d-%d: failed %d", who, start, tt.clock.Load(), res.Failed))
		if res.Failed > 0 {
			m.everFailed = true
		}
	}
}

func refsOfBatch(b *Batch) []PullRef {
	refs := make([]PullRef, len(b.Messages))
	for i, m := range b.Messages {
		refs[i] = PullRef{ClaimID: b.ClaimID, MessageID: m.ID}
	}
	return refs
}
