// Command ecs-image builds bootable appliance images for the ECS appliance.
//
// Built as is, this package is the complete program. Built with -tags
// ecsfront it is the small front program that make build and the .deb
// install as ecs-image (main_front.go): only this file, cidata.go and
// input.go are in it, every other command file starts with
// //go:build !ecsfront.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ecs-image/ecs-image/buildinfo"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/progress"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// Set at link time: -ldflags "-X main.version=... -X main.commit=...
// -X main.date=..." (the Makefile does); a go install or plain go build
// leaves them unset and buildinfo reads the Go build information instead.
var (
	version = "dev"
	commit  = "unknown"
	date    = ""
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError marks an error caused by bad input or bad usage (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// badInput wraps err so that the command exits with code 2.
func badInput(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// badInputf formats a bad-input error (exit code 2).
func badInputf(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// badInputCheckers let packages classify their own error types as bad input
// without this file knowing them; command files register them in init().
var badInputCheckers []func(error) bool

func isBadInput(err error) bool {
	var u usageError
	if errors.As(err, &u) || errors.Is(err, atomicfile.ErrNotRegular) {
		return true
	}
	for _, f := range badInputCheckers {
		if f(err) {
			return true
		}
	}
	return false
}

var rootCmd = &cobra.Command{
	Use:   "ecs-image",
	Short: "Build bootable ECS appliance images",
	Long: `ecs-image turns a base cloud image into ECS appliance artifacts
(qcow2, raw, vmdk/OVA, vhdx, vhd, AMI, Vagrant boxes), and makes the
env.yml and cidata seed ISOs that configure an appliance at first boot.`,
	SilenceUsage:  true,
	SilenceErrors: true,
	PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
		return setupLogging(logLevel, logFormat)
	},
}

var (
	logLevel  string
	logFormat string
)

// versionCmd is `ecs-image version`.
var versionCmd *cobra.Command

func init() {
	rootCmd.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	rootCmd.PersistentFlags().StringVar(&logFormat, "log-format", "text", "log format: text or json")
	rootCmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return badInput(fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath()))
	})
	info := buildinfo.Get(version, commit, date)
	rootCmd.Version = info.Version
	rootCmd.SetVersionTemplate(info.String("ecs-image"))
	versionCmd = &cobra.Command{
		Use:   "version",
		Short: "Print the ecs-image version",
		Long:  "Print the version, git commit (and whether the tree was modified), commit date, Go version and platform.",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprint(cmd.OutOrStdout(), info.String("ecs-image"))
		},
	}
	rootCmd.AddCommand(versionCmd)
}

func setupLogging(level, format string) error {
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return badInputf("--log-level: %v", err)
	}
	logrus.SetLevel(lvl)
	// Log lines go above the progress bars on a terminal.
	logrus.SetOutput(progress.LogOutput())
	switch format {
	case "text":
		logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	case "json":
		logrus.SetFormatter(&logrus.JSONFormatter{})
	default:
		return badInputf("--log-format: want text or json, got %q", format)
	}
	return nil
}

// exactArgs is cobra.ExactArgs returning a bad-input error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return badInput(fmt.Errorf("%s: %w (see '%s --help')", cmd.CommandPath(), err, cmd.CommandPath()))
		}
		return nil
	}
}

func run(args []string) int {
	ctx := context.Background()
	// version and cidata (seed writing) are done in milliseconds and have
	// nothing to clean up: they keep the default actions (Ctrl-C ends them
	// at once; cidata ignores it only while it writes and renames the seed)
	// and start no signal-handling goroutine, ≈0.4–0.8 ms of their start-up.
	if c, _, err := rootCmd.Find(args); err != nil || (c != versionCmd && c != cidataCmd) {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		// The first Ctrl-C (or SIGTERM) cancels the context and the
		// command cleans up; a second one ends the process at once (the
		// default action), even when the command is blocked (a fifo, a
		// hung read).
		go func() {
			<-ctx.Done()
			stop()
		}()
	}
	registerCompletions()
	rootCmd.SetArgs(args)
	resetContext(rootCmd, ctx)
	err := rootCmd.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(rootCmd.ErrOrStderr(), "ecs-image: %v\n", err)
	if isBadInput(err) {
		return exitUsage
	}
	// cobra reports unknown commands as plain errors.
	if len(args) > 0 && isCobraUsageError(err) {
		return exitUsage
	}
	return exitFailure
}

func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires at least", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// resetContext gives every command the context of this run; cobra keeps a
// subcommand's context from an earlier Execute otherwise (tests run the CLI
// in-process several times).
func resetContext(c *cobra.Command, ctx context.Context) {
	c.SetContext(ctx)
	for _, sub := range c.Commands() {
		resetContext(sub, ctx)
	}
}
