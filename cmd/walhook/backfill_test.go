package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/walhook/walhook/backfill"
)

// On a terminal the bar is redrawn in place; elsewhere progress comes as
// lines, and not at all with --json.
func TestBackfillProgress(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	p := &progress{w: &buf, tty: true}
	p.show(backfillStatus(&backfill.Backfill{ID: 3, State: backfill.Running, Table: "public.t", RowsProcessed: 250, RowsTotal: 1000}))
	p.show(backfillStatus(&backfill.Backfill{ID: 3, State: backfill.Done, RowsProcessed: 1000, RowsTotal: 990}))
	p.done()
	want := "\r\x1b[K[#######.......................]  25%  250/~1000 rows  public.t" +
		"\r\x1b[K[##############################] 100%  1000/~1000 rows  done\n"
	if buf.String() != want {
		t.Errorf("terminal:\n%q\nwant\n%q", buf.String(), want)
	}

	buf.Reset()
	p = &progress{w: &buf}
	p.show(backfillStatus(&backfill.Backfill{ID: 3, State: backfill.Running, Table: "public.t", RowsProcessed: 0, RowsTotal: 0}))
	p.show(backfillStatus(&backfill.Backfill{ID: 3, State: backfill.Running, Table: "public.t", RowsProcessed: 10, RowsTotal: 100})) // within 5 s: skipped
	p.show(backfillStatus(&backfill.Backfill{ID: 3, State: backfill.Failed, RowsProcessed: 10, RowsTotal: 100}))
	p.done()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "backfill 3:   0%") || !strings.Contains(lines[1], "10/~100 rows  failed") {
		t.Errorf("lines: %q", buf.String())
	}

	buf.Reset()
	p = &progress{w: &buf, quiet: true}
	p.show(backfillStatus(&backfill.Backfill{ID: 3, State: backfill.Done}))
	p.done()
	if buf.Len() != 0 {
		t.Errorf("--json printed progress: %q", buf.String())
	}

	// A replay counts retained changes and shows its messages.
	buf.Reset()
	p = &progress{w: &buf}
	p.show(replayStatus(&backfill.Replay{ID: 4, State: backfill.Running, ChangesProcessed: 5000, ChangesTotal: 20000, Messages: 4000}))
	p.show(replayStatus(&backfill.Replay{ID: 4, State: backfill.Done, ChangesProcessed: 20000, ChangesTotal: 20000, Messages: 16000}))
	if want := "replay 4:  25%  5000/~20000 changes  4000 messages\nreplay 4: 100%  20000/~20000 changes  16000 messages, done\n"; buf.String() != want {
		t.Errorf("replay lines:\n%q\nwant\n%q", buf.String(), want)
	}
}
