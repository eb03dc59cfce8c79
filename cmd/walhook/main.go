// Command walhook streams Postgres changes and inbound webhooks to HTTP
// endpoints. This file only parses the command line; the work is in the
// packages it calls.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func main() {
	root := newRoot()
	if err := root.Execute(); err != nil {
		msg := strings.TrimSpace(err.Error())
		fmt.Fprintln(os.Stderr, "walhook: "+msg)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "walhook",
		Short:         "Stream Postgres changes and inbound webhooks to HTTP endpoints, reliably",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCmd(), migrateCmd(), configCmd(), devCmd())
	addClientCommands(root)
	return root
}
