package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/walhook/walhook/playground"
)

func devCmd() *cobra.Command {
	var opts playground.Options
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Zero-setup playground: private Postgres, demo table, a receiver that prints deliveries",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			opts.Out, opts.Log = cmd.OutOrStdout(), os.Stderr
			return playground.Run(ctx, opts)
		},
	}
	cmd.Flags().StringVar(&opts.DataDir, "data", ".walhook-dev", "folder that keeps the playground's Postgres between runs")
	cmd.Flags().IntVar(&opts.PGPort, "pg-port", 0, "Postgres port (default: a free one)")
	cmd.Flags().StringVar(&opts.Listen, "listen", "127.0.0.1:7376", "walhook's HTTP address")
	cmd.Flags().StringVar(&opts.Token, "token", "dev", "API token for the playground")
	return cmd
}
