package main

import (
	"fmt"
	"io"
	"net/http"

	"github.com/spf13/cobra"
)

// sinkInfo is the part of the API's sink object the tables show; --json
// prints the object as the API sent it.
type sinkInfo struct {
	ID             string   `json:"id"`
	Name           string   `json:"name"`
	Status         string   `json:"status"`
	Kind           string   `json:"kind"`
	Endpoint       string   `json:"endpoint"`
	Path           string   `json:"path"`
	Tables         []string `json:"tables"`
	WebhookSources []string `json:"webhook_sources"`
	Actions        []string `json:"actions"`
	Message        string   `json:"message"`
	BatchSize      int      `json:"batch_size"`
	Concurrency    int      `json:"concurrency"`
	RequestTimeout string   `json:"request_timeout"`
	MaxAckPending  int      `json:"max_ack_pending"`
	Retry          struct {
		InitialBackoff string `json:"initial_backoff"`
		MaxBackoff     string `json:"max_backoff"`
		MaxAge         string `json:"max_age"`
	} `json:"retry"`
	SigningSecret string   `json:"signing_secret"`
	Warnings      []string `json:"warnings"`
	Counts        struct {
		Pending    int64 `json:"pending"`
		InFlight   int64 `json:"in_flight"`
		BackingOff int64 `json:"backing_off"`
		Failed     int64 `json:"failed"`
		Delivered  int64 `json:"delivered"`
	} `json:"counts"`
}

var sinkHeader = []string{"NAME", "STATUS", "PENDING", "IN FLIGHT", "BACKING OFF", "FAILED", "DELIVERED"}

func (s *sinkInfo) row(t *table) {
	t.row(s.Name, s.Status, s.Counts.Pending, s.Counts.InFlight, s.Counts.BackingOff, s.Counts.Failed, s.Counts.Delivered)
}

func sinkCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sink", Short: "Show and control sinks"}
	opts := addClientFlags(cmd)
	cmd.AddCommand(sinkListCmd(opts), sinkInfoCmd(opts), sinkPauseCmd(opts, true), sinkPauseCmd(opts, false))
	return cmd
}

func sinkListCmd(opts *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List sinks with their state and message counts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			return showList(cmd, opts, c, pathOf("sinks"), nil, sinkHeader, func(t *table, s *sinkInfo) { s.row(t) })
		},
	}
}

func sinkInfoCmd(opts *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "info NAME",
		Short: "Show a sink: settings, state and message counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			return showObject(cmd, opts, c, http.MethodGet, pathOf("sinks", args[0]), nil, func(out io.Writer, s *sinkInfo) error {
				t := newTable(out)
				t.row("name:", s.Name)
				t.row("id:", s.ID)
				t.row("status:", s.Status)
				if s.Kind == "pull" {
					// Consumers receive: walhook POSTs nothing.
					t.row("kind:", "pull (walhook receive "+s.Name+")")
				} else {
					t.row("endpoint:", s.Endpoint)
					t.row("path:", s.Path)
				}
				t.row("tables:", s.Tables)
				t.row("webhook_sources:", s.WebhookSources)
				t.row("actions:", s.Actions)
				t.row("message:", s.Message)
				t.row("batch_size:", s.BatchSize)
				if s.Kind != "pull" {
					// Delivery workers and their requests: a pull sink has
					// neither, its consumers set their own pace.
					t.row("concurrency:", s.Concurrency)
					t.row("request_timeout:", s.RequestTimeout)
				}
				t.row("max_ack_pending:", s.MaxAckPending)
				t.row("retry:", fmt.Sprintf("initial_backoff %s, max_backoff %s, max_age %s", s.Retry.InitialBackoff, s.Retry.MaxBackoff, s.Retry.MaxAge))
				signed := "no"
				if s.SigningSecret != "" {
					signed = "yes"
				}
				t.row("signed:", signed)
				t.row("pending:", s.Counts.Pending)
				t.row("in flight:", s.Counts.InFlight)
				t.row("backing off:", s.Counts.BackingOff)
				t.row("failed:", s.Counts.Failed)
				t.row("delivered:", fmt.Sprintf("%d (recent history)", s.Counts.Delivered))
				for _, w := range s.Warnings {
					t.row("warning:", w)
				}
				return t.flush()
			})
		},
	}
}

func sinkPauseCmd(opts *clientOptions, pause bool) *cobra.Command {
	use, verb, short := "pause NAME", "pause", "Pause delivery of a sink (capture goes on; in-flight batches finish)"
	if !pause {
		use, verb, short = "resume NAME", "resume", "Resume delivery of a paused sink"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			return showObject(cmd, opts, c, http.MethodPost, pathOf("sinks", args[0], verb), nil, func(out io.Writer, s *sinkInfo) error {
				_, err := fmt.Fprintf(out, "sink %s is %s\n", s.Name, s.Status)
				return err
			})
		},
	}
}
