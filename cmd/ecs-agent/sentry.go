package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/agent/prepare"
)

func init() {
	rootCmd.AddCommand(&cobra.Command{
		Use:   "sentry-test [MESSAGE]",
		Short: "Send a test event to appliance.sentry.dsn of the active env.yml",
		Long: `Sends one event (level info) to the Sentry DSN of the active env.yml
(appliance.sentry.dsn), as the original appliance's sentry_entry "test" did.
The agent reports the appliance's own failures there too: a failed chain
step or unit, a failed backup.`,
		Example: `  ecs-agent sentry-test "Test Message $(hostname -f)"`,
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			msg := "Test Message"
			if h, err := os.Hostname(); err == nil {
				msg += " " + h
			}
			if len(args) > 0 {
				msg = strings.Join(args, " ")
			}
			return withAgent(func(ctx context.Context, a *prepare.Agent) error {
				a.Log = os.Stderr
				if err := a.SentryTest(msg); err != nil {
					return fmt.Errorf("sentry-test: %w", err)
				}
				return nil
			})(cmd, args)
		},
	})
	prepare.Release = "ecs-agent@" + version
}
