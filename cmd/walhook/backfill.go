package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/walhook/walhook/backfill"
)

// backfillPoll is how often `backfill --wait` asks for progress.
const backfillPoll = 500 * time.Millisecond

func backfillCmd() *cobra.Command {
	var tables []string
	var column, from string
	var wait bool
	cmd := &cobra.Command{
		Use:   "backfill SINK",
		Short: "Start a backfill: copy a sink's tables to it as read messages",
		Long: `Start a backfill: copy the rows of a sink's tables to it as "read" messages,
in primary-key order, consistent with the live changes around them.

All of the sink's tables by default; --table (repeatable) picks some.
--column and --from copy only the rows where column >= from (a partial
backfill). --wait shows a progress bar until the backfill ends, and fails
unless it is done.`,
		Example: `  walhook backfill orders_webhook
  walhook backfill orders_webhook --table public.orders --column created_at --from 2024-01-01 --wait`,
		Args: cobra.ExactArgs(1),
	}
	opts := addClientFlags(cmd)
	f := cmd.Flags()
	f.StringArrayVar(&tables, "table", nil, "a table to copy (schema.table; repeatable; default: all of the sink's)")
	f.StringVar(&column, "column", "", "copy only rows where this column >= --from")
	f.StringVar(&from, "from", "", "the lower bound for --column, cast to the column's type")
	f.BoolVar(&wait, "wait", false, "show progress until the backfill ends")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if (column == "") != (from == "") {
			return fmt.Errorf("--column and --from go together: a partial backfill copies the rows where column >= from")
		}
		c, err := opts.client()
		if err != nil {
			return err
		}
		req := backfill.Request{Tables: tables, Column: column}
		if from != "" {
			req.From, _ = json.Marshal(from) // a string always marshals
		}
		var b backfill.Backfill
		if err := c.post(cmd.Context(), pathOf("sinks", args[0], "backfills"), req, &b); err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if !wait {
			if opts.JSON {
				return printJSON(out, b)
			}
			_, err := fmt.Fprintf(out, "backfill %d of sink %s started (%s); its progress: GET /api/sinks/%s/backfills/%d\n",
				b.ID, b.Sink, tablesOf(&b), b.Sink, b.ID)
			return err
		}
		bar := newProgress(out, opts.JSON)
		if err := waitJob(cmd.Context(), c, bar, pathOf("sinks", args[0], "backfills", fmt.Sprint(b.ID)), &b, backfillStatus); err != nil {
			return err
		}
		if opts.JSON {
			if err := printJSON(out, b); err != nil {
				return err
			}
		}
		switch b.State {
		case backfill.Done:
			if !opts.JSON {
				_, err := fmt.Fprintf(out, "backfill %d done: %d rows\n", b.ID, b.RowsProcessed)
				return err
			}
			return nil
		case backfill.Failed:
			return fmt.Errorf("backfill %d failed: %s", b.ID, b.Error)
		default:
			return fmt.Errorf("backfill %d %s after %d rows", b.ID, b.State, b.RowsProcessed)
		}
	}
	return cmd
}

// waitJob polls a backfill or a replay at path until it ends, drawing
// its progress; job holds the last answer.
func waitJob[T any](ctx context.Context, c *apiClient, bar *progress, path string, job *T, status func(*T) jobStatus) error {
	defer bar.done()
	for st := status(job); st.state == backfill.Running; st = status(job) {
		bar.show(st)
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting; %s %d goes on (cancel it with DELETE %s)", st.kind, st.id, path)
		case <-time.After(backfillPoll):
		}
		if err := c.get(ctx, path, nil, job); err != nil {
			return err
		}
	}
	bar.show(status(job))
	return nil
}

func tablesOf(b *backfill.Backfill) string {
	if len(b.Tables) == 0 {
		return "all of its tables"
	}
	return strings.Join(b.Tables, ", ")
}

// progress draws a backfill's or a replay's progress: a bar redrawn in place on a
// terminal, a line every few seconds elsewhere (logs, pipes), nothing
// with --json.
type progress struct {
	w        io.Writer
	tty      bool
	quiet    bool
	drawn    bool
	lastLine time.Time
}

func newProgress(w io.Writer, quiet bool) *progress {
	tty := false
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		tty = true
	}
	return &progress{w: w, tty: tty, quiet: quiet}
}

// barWidth is the bar's width in characters.
const barWidth = 30

// jobStatus is what the bar shows of a backfill or a replay.
type jobStatus struct {
	kind         string // "backfill", "replay"
	id           int64
	state        string
	done, total  int64
	unit, detail string
}

func backfillStatus(b *backfill.Backfill) jobStatus {
	return jobStatus{kind: "backfill", id: b.ID, state: b.State, done: b.RowsProcessed, total: b.RowsTotal, unit: "rows", detail: b.Table}
}

func replayStatus(r *backfill.Replay) jobStatus {
	detail := fmt.Sprintf("%d messages", r.Messages)
	switch {
	case r.State != backfill.Running:
		detail += ", " + r.State
	case r.WaitingFor == backfill.WaitBacklog:
		detail += ", waiting for the sink's backlog to drain"
	case r.WaitingFor == backfill.WaitCapture:
		detail += ", waiting for capture to reach the window's end"
	}
	return jobStatus{kind: "replay", id: r.ID, state: r.State, done: r.ChangesProcessed, total: r.ChangesTotal, unit: "changes", detail: detail}
}

func (p *progress) show(j jobStatus) {
	if p.quiet {
		return
	}
	total := max(j.total, j.done)
	frac := 0.0
	if total > 0 {
		frac = float64(j.done) / float64(total)
	}
	if j.state == backfill.Done {
		frac = 1
	}
	where := j.detail
	if where == "" {
		where = j.state
	}
	if p.tty {
		n := int(frac * barWidth)
		fmt.Fprintf(p.w, "\r\x1b[K[%s%s] %3.0f%%  %d/~%d %s  %s", strings.Repeat("#", n), strings.Repeat(".", barWidth-n), frac*100, j.done, total, j.unit, where)
		p.drawn = true
		return
	}
	if time.Since(p.lastLine) >= 5*time.Second || j.state != backfill.Running {
		p.lastLine = time.Now()
		fmt.Fprintf(p.w, "%s %d: %3.0f%%  %d/~%d %s  %s\n", j.kind, j.id, frac*100, j.done, total, j.unit, where)
	}
}

// done ends the bar's line.
func (p *progress) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

func replayCmd() *cobra.Command {
	var from, to string
	var wait bool
	cmd := &cobra.Command{
		Use:   "replay SINK --from TIME [--to TIME]",
		Short: "Deliver retained changes of a time window again",
		Long: `Deliver again, to one sink, the retained changes (see retention in the config)
committed in [--from, --to): in their original commit order, with their
original idempotency keys. Without --to, up to now.

The replay runs as a job on the service; --wait shows its progress until
it ends, and fails unless it is done. Asking again for the window of a
replay still running answers that replay instead of queueing the window
twice.

TIME is RFC 3339 (2024-03-20T15:30:00Z) or a duration ago (90m, 2h).`,
		Example: `  walhook replay orders_webhook --from 2h --wait
  walhook replay orders_webhook --from 2024-03-20T15:00:00Z --to 2024-03-20T16:00:00Z`,
		Args: cobra.ExactArgs(1),
	}
	opts := addClientFlags(cmd)
	cmd.Flags().StringVar(&from, "from", "", "start of the window (required)")
	cmd.Flags().StringVar(&to, "to", "", "end of the window, excluded (default: now)")
	cmd.Flags().BoolVar(&wait, "wait", false, "show progress until the replay ends")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if from == "" {
			return fmt.Errorf("--from is required: the start of the window (RFC 3339, or a duration ago such as 2h)")
		}
		now := time.Now()
		var req backfill.ReplayRequest
		var err error
		if req.From, err = backfill.ParseTime(from, now); err != nil {
			return fmt.Errorf("--from %q: %w", from, err)
		}
		if to != "" {
			t, err := backfill.ParseTime(to, now)
			if err != nil {
				return fmt.Errorf("--to %q: %w", to, err)
			}
			req.To = &t
		}
		c, err := opts.client()
		if err != nil {
			return err
		}
		var rp backfill.Replay
		if err := c.post(cmd.Context(), pathOf("sinks", args[0], "replays"), req, &rp); err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if !wait {
			if opts.JSON {
				return printJSON(out, rp)
			}
			_, err := fmt.Fprintf(out, "replay %d of sink %s started (%s to %s); its progress: GET /api/sinks/%s/replays/%d\n",
				rp.ID, rp.Sink, rp.From.Format(time.RFC3339), rp.To.Format(time.RFC3339), rp.Sink, rp.ID)
			return err
		}
		bar := newProgress(out, opts.JSON)
		if err := waitJob(cmd.Context(), c, bar, pathOf("sinks", args[0], "replays", fmt.Sprint(rp.ID)), &rp, replayStatus); err != nil {
			return err
		}
		if opts.JSON {
			if err := printJSON(out, rp); err != nil {
				return err
			}
		}
		switch rp.State {
		case backfill.Done:
			if !opts.JSON {
				_, err := fmt.Fprintf(out, "replay %d done: %d messages to sink %s (%d retained changes in the window)\n", rp.ID, rp.Messages, rp.Sink, rp.ChangesProcessed)
				return err
			}
			return nil
		case backfill.Failed:
			return fmt.Errorf("replay %d failed: %s", rp.ID, rp.Error)
		default:
			return fmt.Errorf("replay %d %s after %d retained changes", rp.ID, rp.State, rp.ChangesProcessed)
		}
	}
	return cmd
}
