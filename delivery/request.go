package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/walhook/walhook/metrics"
	"github.com/walhook/walhook/outbox"
)

// deliver POSTs one batch and records the outcome. It finishes even when
// ctx is cancelled (shutdown): the request has its own timeout.
func (r *runner) deliver(ctx context.Context, b *outbox.Batch, c *cohort) {
	bg := context.WithoutCancel(ctx)
	msgs := b.Messages
	cfg := r.sink.Config
	start := time.Now()
	status, snippet, retryAfter, err := r.post(bg, msgs)
	c.posting.Add(-1)
	metrics.RequestDuration.WithLabelValues(r.sink.Name).Observe(time.Since(start).Seconds())
	metrics.Attempts.WithLabelValues(r.sink.Name, class(status, err)).Inc()
	if err == nil && status >= 200 && status < 300 {
		done := make(chan struct{})
		r.acks <- acked{b, c, status, done}
		<-done
		r.released.Add(-1)
		return
	}
	attempt := 1
	for _, m := range msgs {
		attempt = max(attempt, int(m.DeliverCount)+1)
	}
	wait := Backoff(attempt, cfg.Retry.InitialBackoff.D(), cfg.Retry.MaxBackoff.D())
	retryAfter = CapRetryAfter(retryAfter, cfg.Retry.MaxBackoff.D())
	if retryAfter > 0 {
		wait = max(wait, retryAfter)
		if err := r.m.cfg.Store.Hold(bg, r.sink.ID, time.Now().Add(retryAfter)); err != nil {
			r.log.Error().Err(err).Msg("hold sink for Retry-After")
		}
	}
	msg := snippet
	if err != nil {
		msg = redactError(err, r.url)
	}
	nackStart := time.Now()
	failed, nerr := r.m.cfg.Store.Nack(bg, b, outbox.Failure{
		AttemptStart: start, Status: status, Error: msg, Backoff: wait, MaxAge: cfg.Retry.MaxAge.D(),
	})
	metrics.AckDuration.WithLabelValues(r.sink.Name, "nack").Observe(time.Since(nackStart).Seconds())
	if outbox.IsClaimEnded(nerr) {
		r.log.Warn().Err(nerr).Msg("delivery failed, but the claim had ended: nothing recorded")
		return
	}
	if nerr != nil {
		r.log.Error().Err(nerr).Msg("record failed delivery")
		return
	}
	// The retry goes on time, not at the next poll (other processes'
	// backoffs are found by theirs). The backoff ran from the nack on the
	// server's clock, and this timer starts after it: it never fires
	// before the messages are ready (retryMargin covers the two clocks'
	// rates).
	time.AfterFunc(wait+retryMargin, r.wake.ring)
	ev := r.log.Warn()
	ev.Int("status", status).Str("error", msg).Int("messages", len(msgs)).Int("attempt", attempt).Dur("retry_in", wait).Msg("delivery failed")
	if failed > 0 {
		metrics.Failed.WithLabelValues(r.sink.Name).Add(float64(failed))
		r.log.Error().Int("messages", failed).Dur("max_age", cfg.Retry.MaxAge.D()).Msg("ALERT: messages exceeded retry.max_age and are now failed; redeliver them once the endpoint is fixed")
	}
}

// post sends the batch. It returns the status (0 without a response), a
// bounded snippet of a failing response, a Retry-After wait, or the
// transport error.
func (r *runner) post(ctx context.Context, msgs []outbox.Message) (int, string, time.Duration, error) {
	size := len(`{"data":[]}`)
	for _, m := range msgs {
		size += len(m.Payload) + 1
	}
	body := make([]byte, 0, size)
	body = append(body, `{"data":[`...)
	for i, m := range msgs {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, m.Payload...)
	}
	body = append(body, "]}"...)

	ctx, cancel := context.WithTimeout(ctx, r.sink.Config.RequestTimeout.D())
	defer cancel()
	req, err := r.request(ctx, body)
	if err != nil {
		return 0, "", 0, fmt.Errorf("build request: %w", err)
	}
	if r.signer != nil {
		ids := make([]int64, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		id := BatchID(r.sink.ID, ids)
		ts, sig := r.signer.Sign(id, time.Now(), body)
		req.Header.Set("webhook-id", id)
		req.Header.Set("webhook-timestamp", ts)
		req.Header.Set("webhook-signature", sig)
	}
	resp, err := r.m.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return 0, "", 0, fmt.Errorf("timed out after %s", r.sink.Config.RequestTimeout.D())
		}
		return 0, "", 0, err
	}
	defer resp.Body.Close()
	var snippet string
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, errorSnippet))
		snippet = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // drain for connection reuse
	return resp.StatusCode, snippet, RetryAfter(resp, time.Now()), nil
}

// request is a POST of body, as http.NewRequestWithContext makes it,
// with the sink's headers, from the runner's template: the URL is not
// parsed again for every request.
func (r *runner) request(ctx context.Context, body []byte) (*http.Request, error) {
	if r.tmpl == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header = r.headers.Clone()
		return req, nil
	}
	req := r.tmpl.WithContext(ctx)
	u := *r.tmpl.URL
	req.URL = &u
	req.Header = r.headers.Clone()
	req.ContentLength = int64(len(body))
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return req, nil
}

func class(status int, err error) string {
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || strings.Contains(err.Error(), "timed out") {
			return "timeout"
		}
		return "error"
	}
	return strconv.Itoa(status/100) + "xx"
}
