package delivery

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Backoff is the wait after the attempt-th failure (attempt counts from 1):
// exponential from initial, capped at max, with "equal jitter" (half fixed,
// half random) so retries of many groups spread out yet never come sooner
// than half the nominal delay.
func Backoff(attempt int, initial, maxBackoff time.Duration) time.Duration {
	if initial <= 0 {
		initial = time.Second
	}
	if maxBackoff < initial {
		maxBackoff = initial
	}
	d := initial
	for i := 1; i < attempt && d < maxBackoff; i++ {
		d *= 2
	}
	d = min(d, maxBackoff)
	half := d / 2
	return half + rand.N(half+1)
}

// RetryAfter reads a Retry-After header (seconds or an HTTP date) on 429
// and 503 responses; zero when absent or unparseable.
func RetryAfter(resp *http.Response, now time.Time) time.Duration {
	if resp == nil || (resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable) {
		return 0
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// MinRetryAfterCap is the least a Retry-After may hold a sink for, however
// short max_backoff is: a receiver may ask for a long pause, but not hold
// a sink for years.
const MinRetryAfterCap = time.Hour

// CapRetryAfter bounds a Retry-After wait at max_backoff or
// MinRetryAfterCap, whichever is larger.
func CapRetryAfter(d, maxBackoff time.Duration) time.Duration {
	return min(d, max(maxBackoff, MinRetryAfterCap))
}
