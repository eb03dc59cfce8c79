package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// messageInfo is the part of the API's message object the table shows.
type messageInfo struct {
	ID           int64           `json:"id"`
	Group        string          `json:"group"`
	State        string          `json:"state"`
	DeliverCount int32           `json:"deliver_count"`
	LastError    *string         `json:"last_error"`
	LastStatus   *int32          `json:"last_status"`
	NotBefore    *time.Time      `json:"not_before"`
	CommitLSN    int64           `json:"commit_lsn"`
	Message      json.RawMessage `json:"message"`
}

func messagesCmd() *cobra.Command {
	var state string
	var limit int
	cmd := &cobra.Command{
		Use:   "messages SINK",
		Short: "List a sink's messages (pending, in_flight, backing_off, failed, delivered)",
		Long: `List a sink's messages: a table, or JSON lines with --json.

Without --state, every message still in the outbox is listed, oldest first;
--state delivered lists the recent delivery history, newest first.`,
		Args: cobra.ExactArgs(1),
	}
	opts := addClientFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := opts.client()
		if err != nil {
			return err
		}
		q := url.Values{}
		if state != "" {
			q.Set("state", state)
		}
		if limit != 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		header := []string{"ID", "STATE", "GROUP", "TRIES", "STATUS", "NOT BEFORE", "LAST ERROR"}
		return showList(cmd, opts, c, pathOf("sinks", args[0], "messages"), q, header, func(t *table, m *messageInfo) {
			lastErr := ""
			if m.LastError != nil {
				lastErr = truncate(*m.LastError, 60)
			}
			t.row(m.ID, m.State, truncate(m.Group, 40), m.DeliverCount, m.LastStatus, m.NotBefore, lastErr)
		})
	}
	cmd.Flags().StringVar(&state, "state", "", "only messages in this state: pending, in_flight, backing_off, failed or delivered")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many messages (default 100, at most 1000)")
	return cmd
}

func redeliverCmd() *cobra.Command {
	var ids []int64
	var failed bool
	cmd := &cobra.Command{
		Use:   "redeliver SINK (--id ID ... | --failed)",
		Short: "Make failed or backing-off messages deliverable now",
		Args:  cobra.ExactArgs(1),
	}
	opts := addClientFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if failed == (len(ids) > 0) {
			return errors.New("redeliver: give either --id (one or more) or --failed")
		}
		c, err := opts.client()
		if err != nil {
			return err
		}
		n := 0
		if failed {
			var res struct {
				Redelivered int `json:"redelivered"`
			}
			if err := c.post(cmd.Context(), pathOf("sinks", args[0], "redeliver"), nil, &res); err != nil {
				return err
			}
			n = res.Redelivered
		} else {
			for _, id := range ids {
				if err := c.post(cmd.Context(), pathOf("sinks", args[0], "messages", strconv.FormatInt(id, 10), "redeliver"), nil, nil); err != nil {
					return err // the server's message names the message
				}
				n++
			}
		}
		if opts.JSON {
			return printJSON(cmd.OutOrStdout(), map[string]int{"redelivered": n})
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%d message(s) of sink %s made deliverable now\n", n, args[0])
		return err
	}
	cmd.Flags().Int64SliceVar(&ids, "id", nil, "message id (repeat or comma-separate for several)")
	cmd.Flags().BoolVar(&failed, "failed", false, "every failed or backing-off message of the sink")
	return cmd
}

// observedInfo is one SSE event of GET /api/observe.
type observedInfo struct {
	ID      int64           `json:"id"`
	Sink    string          `json:"sink"`
	Group   string          `json:"group"`
	Message json.RawMessage `json:"message"`
}

func observeCmd() *cobra.Command {
	var sinkName string
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Live tail of messages as they enter the outbox (Ctrl-C to stop)",
		Args:  cobra.NoArgs,
	}
	opts := addClientFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := opts.client()
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		q := url.Values{}
		if sinkName != "" {
			q.Set("sink", sinkName)
		}
		resp, err := c.stream(ctx, "/api/observe", q)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		defer resp.Body.Close()
		out := cmd.OutOrStdout()
		width := 0
		if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			if w, _, err := term.GetSize(int(f.Fd())); err == nil {
				width = w
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "observing %s (Ctrl-C to stop)\n", c.base)
		}
		err = readEvents(resp.Body, func(event string, data []byte) error {
			switch event {
			case "message":
				if opts.JSON {
					_, err := fmt.Fprintf(out, "%s\n", data)
					return err
				}
				var ev observedInfo
				if err := json.Unmarshal(data, &ev); err != nil {
					return fmt.Errorf("unexpected event: %w", err)
				}
				line := fmt.Sprintf("%d  %s  %s  %s", ev.ID, ev.Sink, ev.Group, summary(ev.Message))
				if width > 0 {
					line = truncate(line, width)
				}
				_, err := fmt.Fprintln(out, line)
				return err
			case "end":
				return fmt.Errorf("walhook at %s is shutting down", c.base)
			case "error":
				var body struct {
					Error struct {
						Message string `json:"message"`
					} `json:"error"`
				}
				_ = json.Unmarshal(data, &body)
				return fmt.Errorf("observe: %s", body.Error.Message)
			}
			return nil
		})
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("lost the connection to walhook at %s", c.base)
		}
		return err
	}
	cmd.Flags().StringVar(&sinkName, "sink", "", "only messages of this sink")
	return cmd
}

// summary shows a message in one line: its action and record.
func summary(msg json.RawMessage) string {
	var m struct {
		Action string          `json:"action"`
		Record json.RawMessage `json:"record"`
	}
	if json.Unmarshal(msg, &m) != nil || len(m.Record) == 0 {
		return string(msg)
	}
	var b bytes.Buffer
	if json.Compact(&b, m.Record) != nil {
		return string(msg)
	}
	if m.Action == "" {
		m.Action = "row"
	}
	return m.Action + "  " + b.String()
}

// readEvents parses a Server-Sent Events stream, calling fn per event
// until the stream ends (nil) or fn fails.
func readEvents(r interface{ Read([]byte) (int, error) }, fn func(event string, data []byte) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	event, data := "", []byte(nil)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != nil {
				if event == "" {
					event = "message"
				}
				if err := fn(event, data); err != nil {
					return err
				}
			}
			event, data = "", nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			d := strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
			if data != nil {
				data = append(data, '\n')
			}
			data = append(data, d...)
		}
	}
	return sc.Err()
}
