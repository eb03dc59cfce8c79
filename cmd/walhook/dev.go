package main

import "github.com/spf13/cobra"

func devCmd() *cobra.Command {
	return &cobra.Command{Use: "dev", Short: "Zero-setup playground (private Postgres, demo table, built-in receiver)"}
}
