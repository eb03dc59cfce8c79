package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/service"
)

func configFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", "", "config file (default $WALHOOK_CONFIG, else ./walhook.yaml)")
}

func runCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the service: migrations, replication, delivery, HTTP server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(config.ResolvePath(path))
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return service.Main(ctx, cfg, service.NewLogger(cfg.Log, os.Stderr), nil)
		},
	}
	configFlag(cmd, &path)
	return cmd
}

func migrateCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the state-schema migrations and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(config.ResolvePath(path))
			if err != nil {
				return err
			}
			n, err := migrations.Up(cmd.Context(), cfg.State.URL, cfg.State.Schema)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "migrated schema %s: %d migration(s) applied\n", cfg.State.Schema, n)
			return nil
		},
	}
	configFlag(cmd, &path)
	return cmd
}

func configCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with the config file"}
	var path string
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the config (with ${VAR} expansion) without connecting",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := config.Load(config.ResolvePath(path)); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "ok")
			return nil
		},
	}
	configFlag(check, &path)
	cmd.AddCommand(check)
	return cmd
}
