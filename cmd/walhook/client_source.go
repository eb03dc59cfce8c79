package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// stdinIsTerminal decides whether `source webhook add` may ask for a
// name; tests replace it.
var stdinIsTerminal = func() bool { return term.IsTerminal(int(os.Stdin.Fd())) }

type sourceInfo struct {
	ID           int64     `json:"id"`
	Name         string    `json:"name"`
	MaxBodyBytes int64     `json:"max_body_bytes"`
	URL          string    `json:"url"`
	Sinks        []string  `json:"sinks"`
	CreatedAt    time.Time `json:"created_at"`
	Counts       []struct {
		Sink           string     `json:"sink"`
		Queued         int64      `json:"queued"`
		Failed         int64      `json:"failed"`
		Delivered      int64      `json:"delivered"`
		LastReceivedAt *time.Time `json:"last_received_at"`
	} `json:"counts"`
}

func sourceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "source", Short: "Manage sources of messages other than tables"}
	webhook := &cobra.Command{Use: "webhook", Short: "Manage webhook sources (inbound webhooks at POST /api/webhook/NAME)"}
	opts := addClientFlags(webhook)
	webhook.AddCommand(sourceAddCmd(opts), sourceInfoCmd(opts), sourceListCmd(opts), sourceRmCmd(opts))
	cmd.AddCommand(webhook)
	return cmd
}

func sourceAddCmd(opts *clientOptions) *cobra.Command {
	var maxBody int64
	cmd := &cobra.Command{
		Use:   "add [NAME]",
		Short: "Create a webhook source and print its ingest URL (asks for NAME on a terminal)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			var name string
			if len(args) == 1 {
				name = args[0]
			} else {
				if !stdinIsTerminal() {
					return errors.New("source webhook add: NAME is required (no terminal to ask for it on)")
				}
				if name, err = prompt(cmd.InOrStdin(), cmd.ErrOrStderr(), "choose a name for the webhook source: "); err != nil {
					return err
				}
				if name == "" {
					return errors.New("source webhook add: no name given")
				}
			}
			body := map[string]any{"name": name}
			if maxBody != 0 {
				body["max_body_bytes"] = maxBody
			}
			return showObject(cmd, opts, c, http.MethodPost, pathOf("webhook_sources"), body, func(out io.Writer, src *sourceInfo) error {
				_, err := fmt.Fprintln(out, src.URL)
				return err
			})
		},
	}
	cmd.Flags().Int64Var(&maxBody, "max-body-bytes", 0, "largest body accepted (default 1048576)")
	return cmd
}

// prompt asks one question on a terminal and reads one line.
func prompt(in io.Reader, out io.Writer, question string) (string, error) {
	fmt.Fprint(out, question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read answer: %w", err)
	}
	return strings.TrimSpace(line), nil
}

func sourceInfoCmd(opts *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "info NAME",
		Short: "Show a webhook source: ingest URL, subscribed sinks and message counts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			return showObject(cmd, opts, c, http.MethodGet, pathOf("webhook_sources", args[0]), nil, func(out io.Writer, src *sourceInfo) error {
				kv := newTable(out)
				kv.row("name:", src.Name)
				kv.row("url:", src.URL)
				kv.row("max_body_bytes:", src.MaxBodyBytes)
				kv.row("sinks:", src.Sinks)
				kv.row("created:", src.CreatedAt)
				if err := kv.flush(); err != nil {
					return err
				}
				if len(src.Counts) == 0 {
					return nil
				}
				fmt.Fprintln(out)
				t := newTable(out, "SINK", "QUEUED", "FAILED", "DELIVERED", "LAST QUEUED")
				for _, n := range src.Counts {
					t.row(n.Sink, n.Queued, n.Failed, n.Delivered, n.LastReceivedAt)
				}
				return t.flush()
			})
		},
	}
}

func sourceListCmd(opts *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List webhook sources",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			header := []string{"NAME", "SINKS", "MAX BODY", "URL"}
			return showList(cmd, opts, c, pathOf("webhook_sources"), nil, header, func(t *table, src *sourceInfo) {
				t.row(src.Name, src.Sinks, src.MaxBodyBytes, src.URL)
			})
		},
	}
}

func sourceRmCmd(opts *clientOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"remove", "delete"},
		Short:   "Remove a webhook source (its sinks must unsubscribe first)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			if err := c.del(cmd.Context(), pathOf("webhook_sources", args[0])); err != nil {
				return err
			}
			if opts.JSON {
				return printJSON(cmd.OutOrStdout(), map[string]string{"removed": args[0]})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "removed webhook source %s\n", args[0])
			return err
		},
	}
}
