//go:build !ecsfront

package main

import "github.com/spf13/cobra"

// envCmd groups the env.yml toolkit; subcommands live in env_*.go.
var envCmd = &cobra.Command{
	Use:   "env",
	Short: "Create, validate, flatten and package env.yml files",
	Long: `The env.yml toolkit. env.yml configures one ECS appliance; it is also the
cloud-init user-data of the appliance's cidata seed ISO.`,
}

func init() { rootCmd.AddCommand(envCmd) }
