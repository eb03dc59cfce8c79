package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// receivedMessage is one message of a receive, printed as it came.
type receivedMessage struct {
	AckID   string          `json:"ack_id"`
	Message json.RawMessage `json:"message"`
}

// How long receive --follow waits before it tries again after a request
// got no answer or a server error: doubling from minRetry up to maxRetry.
const (
	minRetry = 200 * time.Millisecond
	maxRetry = 5 * time.Second
	// finalAckTimeout bounds the ack of what was printed, once
	// interrupted or stopped by an error.
	finalAckTimeout = 10 * time.Second
)

func receiveCmd() *cobra.Command {
	var ack, follow bool
	var batch int
	var wait, visibility time.Duration
	cmd := &cobra.Command{
		Use:   "receive SINK [--ack] [--follow]",
		Short: "Receive messages of a pull sink as JSON lines",
		Long: `Receive messages of a pull sink (kind: pull) and print each as a JSON
line {"ack_id": ..., "message": ...}: for scripts, and for local development
without a tunnel.

Without --ack the messages stay received but unacknowledged: they come back
after the visibility timeout (or ack them with POST /api/sinks/SINK/ack).
With --ack each batch is acknowledged once printed, by the receive of the
next batch (one request per batch). With --follow the
command keeps long-polling until interrupted (Ctrl-C); when walhook does
not answer or answers a server error, it says so on stderr and tries
again, from 200ms up to every 5s, so a restart of walhook loses nothing.`,
		Args: cobra.ExactArgs(1),
	}
	opts := addClientFlags(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, err := opts.client()
		if err != nil {
			return err
		}
		// A long poll answers after up to --wait: the client waits longer.
		c.http = &http.Client{Timeout: wait + 30*time.Second}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		context.AfterFunc(ctx, stop) // a second Ctrl-C ends it at once

		body := map[string]any{"wait": wait.String()}
		if batch != 0 {
			body["batch_size"] = batch
		}
		if visibility != 0 {
			body["visibility_timeout"] = visibility.String()
		}
		out := bufio.NewWriter(cmd.OutOrStdout())
		path, ackPath := pathOf("sinks", args[0], "receive"), pathOf("sinks", args[0], "ack")
		// With --ack a batch is acknowledged by the receive of the next
		// (ack_ids in its body: one request per batch); the last one, or
		// one whose receive was cut short, by an ack of its own.
		var pending []string
		// ackPending acks what was printed but not acknowledged. Printed
		// means handled: it acks even when interrupted, within
		// finalAckTimeout. cut: the receive that carried these ids may
		// have acked them already, so an answer that they are not held is
		// no news; any other failure is said.
		ackPending := func(cut bool) error {
			if len(pending) == 0 {
				return nil
			}
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalAckTimeout)
			defer cancel()
			err := c.post(actx, ackPath, map[string]any{"ack_ids": pending}, nil)
			var ae *apiError
			switch {
			case err != nil && cut && errors.As(err, &ae) && ae.Code == "not_held":
				return nil
			case err != nil:
				return fmt.Errorf("ack %d messages: %w", len(pending), err)
			}
			return nil
		}
		retry := minRetry
		retried := false // the acks pending went with a receive that failed
		for {
			req := body
			if len(pending) > 0 {
				req = maps.Clone(body)
				req["ack_ids"] = pending
			}
			var res struct {
				Data    []receivedMessage `json:"data"`
				NotHeld []string          `json:"not_held"`
			}
			if err := c.post(ctx, path, req, &res); err != nil {
				if follow && ctx.Err() == nil && retryable(err) {
					// walhook is restarting, or briefly unwell: look again
					// in a moment, with the acks still pending.
					fmt.Fprintf(cmd.ErrOrStderr(), "walhook: receive: %v; trying again in %s\n", err, retry)
					select {
					case <-ctx.Done():
					case <-time.After(retry):
					}
					retry, retried = min(2*retry, maxRetry), len(pending) > 0
					continue
				}
				if aerr := ackPending(true); aerr != nil {
					return aerr
				}
				if follow && errors.Is(err, context.Canceled) {
					return nil // interrupted: a clean stop
				}
				return err
			}
			retry = minRetry
			switch {
			case len(res.NotHeld) > 0 && retried:
				fmt.Fprintf(cmd.ErrOrStderr(), "walhook: ack: %d of %d ack ids were no longer held: the receive that failed acked them, or the visibility timeout passed and those messages will be received again\n",
					len(res.NotHeld), len(pending))
			case len(res.NotHeld) > 0:
				fmt.Fprintf(cmd.ErrOrStderr(), "walhook: ack: %d of %d ack ids were no longer held (the visibility timeout passed): those messages will be received again\n",
					len(res.NotHeld), len(pending))
			}
			retried = false
			pending = nil
			ids := make([]string, len(res.Data))
			for i, m := range res.Data {
				line, err := json.Marshal(m)
				if err != nil {
					return fmt.Errorf("encode message: %w", err)
				}
				out.Write(append(line, '\n'))
				ids[i] = m.AckID
			}
			if err := out.Flush(); err != nil {
				return fmt.Errorf("write messages: %w", err)
			}
			if ack {
				pending = ids
			}
			if !follow || ctx.Err() != nil {
				return ackPending(false)
			}
		}
	}
	f := cmd.Flags()
	f.BoolVar(&ack, "ack", false, "acknowledge each batch once it is printed")
	f.BoolVar(&follow, "follow", false, "keep long-polling for messages until interrupted")
	f.IntVar(&batch, "batch-size", 0, "at most this many messages per batch (default the sink's batch_size, at most 1000)")
	f.DurationVar(&wait, "wait", 5*time.Second, "how long a receive waits for messages when there are none (at most 30s)")
	f.DurationVar(&visibility, "visibility-timeout", 0, "how long received messages stay yours before they come back (default 30s)")
	return cmd
}
