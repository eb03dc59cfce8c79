// Package delivery moves the outbox to HTTP endpoints. Per sink, a
// dispatcher claims batches for every idle worker at once (runner.go),
// workers POST them and record the outcome: ack (group-committed), backoff
// or failed (request.go). The Manager keeps one runner per sink in line
// with the state schema and runs the housekeeping (manager.go). Wake-ups
// come from capture (in process), LISTEN/NOTIFY, acks and ending
// backoffs, with a poll as the fallback.
package delivery

import (
	"time"
)

// UserAgent is sent with every request.
const UserAgent = "walhook/1"

// claimMargin is added to request_timeout for a claim's lease: a worker
// that dies mid-request loses its claim after that.
const claimMargin = 15 * time.Second

// retryMargin is how long after its backoff a worker looks for a retry.
// The backoff runs on the server's clock from the nack and the timer
// from its return, so the retry is ready by then; the margin only covers
// timers that fire a little early.
const retryMargin = 200 * time.Microsecond

// errorSnippet bounds how much of a failing response body is kept.
const errorSnippet = 512
