package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/agent/prepare"
)

func init() {
	cmd := &cobra.Command{
		Use:   "metrics",
		Short: "Metrics of the appliance (appliance.metric)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "collect",
		Short: "Write container, redis, memcached and appliance-state metrics for node-exporter",
		Long: `Writes what Debian's exporters do not cover into node-exporter's textfile
collector directory (` + prepare.MetricsDir + `): appliance_failed, each
container of the stack from the Docker engine's API (running, CPU, memory,
network), and redis (INFO) and memcached (stats) found through the engine.
ecs-agent-metrics.timer runs it every 30 s when appliance.metric.exporter is set.`,
		Args: noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			return a.CollectMetrics(ctx)
		}),
	})
	rootCmd.AddCommand(cmd)
}
