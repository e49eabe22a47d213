//go:build !ecsfront

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/ecs-image/ecs-image/buildinfo"
	"github.com/ecs-image/ecs-image/cmddoc"
)

// This file and every command file but main.go, cidata.go and input.go
// make the complete program. Built with -tags ecsfront the package is the
// small front program instead (main_front.go): see there.

func init() {
	info := buildinfo.Get(version, commit, date)
	rootCmd.AddCommand(cmddoc.Command(rootCmd, "ecs-image "+info.Version, info.Date))
}

func main() {
	// The offline helper VM starts this binary as its initramfs's init.
	if offlinehelper.IsHelper(os.Args) {
		os.Exit(offlinehelper.Main())
	}
	os.Exit(run(os.Args[1:]))
}

// rangeArgs is cobra.RangeArgs returning a bad-input error.
func rangeArgs(min, max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.RangeArgs(min, max)(cmd, args); err != nil {
			return badInput(fmt.Errorf("%s: %w (see '%s --help')", cmd.CommandPath(), err, cmd.CommandPath()))
		}
		return nil
	}
}
