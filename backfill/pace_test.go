package backfill

import (
	"context"
	"testing"
	"time"
)

// A backfill yields to live changes when the stream was slow to reach its
// last page: the next page is half as large (never under MinPage), and
// pages grow again only while the stream keeps well under PaceLag.
func TestBackfillPacesAgainstStreamLag(t *testing.T) {
	t.Parallel()
	r := NewRunner(Config{PaceLag: 20 * time.Millisecond, MinPage: 100, MaxPage: 5000, PageBudget: time.Second})
	j := &job{r: r, pageSize: 4000, maxPage: 5000}
	ctx := context.Background()

	j.reach = 15 * time.Millisecond // under PaceLag: no pause, no change
	if err := j.pace(ctx); err != nil || j.pageSize != 4000 || j.paced != 0 {
		t.Fatalf("under PaceLag: size %d, paced %d, err %v", j.pageSize, j.paced, err)
	}
	j.adapt(time.Millisecond) // a fast query, but the stream is past half of PaceLag
	if j.pageSize != 4000 {
		t.Fatalf("grew to %d while the stream was past half of PaceLag", j.pageSize)
	}

	j.reach = 30 * time.Millisecond
	if err := j.pace(ctx); err != nil || j.pageSize != 2000 || j.paced != 1 {
		t.Fatalf("over PaceLag: size %d, paced %d, err %v; want 2000, 1", j.pageSize, j.paced, err)
	}
	for range 10 {
		_ = j.pace(ctx)
	}
	if j.pageSize != 100 {
		t.Fatalf("size %d after repeated lag, want MinPage 100", j.pageSize)
	}
	// The pause ends with the run.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := j.pace(cancelled); err == nil {
		t.Fatal("pace ignored a cancelled run")
	}

	j.reach = 5 * time.Millisecond // the stream caught up: pages grow again
	j.adapt(time.Millisecond)
	if j.pageSize != 200 {
		t.Fatalf("size %d after the stream caught up, want 200", j.pageSize)
	}
}
