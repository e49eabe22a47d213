// Command ecs-agent is the in-VM agent that brings an ECS appliance up from
// its env.yml: the boot chain prepare-env → prepare-appliance → prepare-ecs
// → appliance (one systemd unit each), plus status, cleanup, the failure
// handler and the push-deploy API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/ecs-image/ecs-image/buildinfo"
	"github.com/ecs-image/ecs-image/cmddoc"
	"github.com/spf13/cobra"
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
	exitBlocked = 3 // /run/appliance-failed blocks the (re)start
	exitStandby = 4 // appliance.standby: the appliance service does not run
)

type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

var (
	flagRoot   string
	flagRunner string
)

var rootCmd = &cobra.Command{
	Use:   "ecs-agent",
	Short: "In-VM agent of the ECS appliance",
	Long: `ecs-agent brings an ECS appliance up from its env.yml. systemd runs the
boot chain, one unit per step:

  prepare-env.service        find env.yml, validate, write /run/active-env.yml
  prepare-appliance.service  hostname, TLS, nginx status page, PostgreSQL, mail
  prepare-ecs.service        docker load the baked images, compose file, migrate
  appliance.service          docker-compose up in the foreground (enable this one)

--root DIR makes every path relative to DIR and, unless --runner=exec,
records external commands to DIR/var/log/ecs-agent/commands.log instead
of running them (for tests).`,
	Example: `  ecs-agent status
  ecs-agent --root /tmp/fakeroot prepare-env --device seed.iso
  ecs-agent serve --config /etc/ecs-agent/config.json`,
	SilenceUsage:  true,
	SilenceErrors: true,
}

func init() {
	rootCmd.PersistentFlags().StringVar(&flagRoot, "root", "/", "prefix for every path the agent reads or writes")
	rootCmd.PersistentFlags().StringVar(&flagRunner, "runner", "", `external commands: "exec" (run them) or "record" (log them); default exec when --root is /, else record`)
	rootCmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())}
	})
	info := buildinfo.Get(version, commit, date)
	rootCmd.Version = info.Version
	rootCmd.SetVersionTemplate(info.String("ecs-agent"))
	rootCmd.AddCommand(cmddoc.Command(rootCmd, "ecs-agent "+info.Version, info.Date))
	rootCmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the agent version",
		Long:  "Print the version, git commit (and whether the tree was modified), commit date, Go version and platform.",
		Args:  noArgs,
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprint(cmd.OutOrStdout(), info.String("ecs-agent"))
		},
	})
}

func noArgs(cmd *cobra.Command, args []string) error {
	if err := cobra.NoArgs(cmd, args); err != nil {
		return usageError{err}
	}
	return nil
}

// newHost builds the Host from the global flags.
func newHost() (*host.Host, io.Closer, error) {
	root := flagRoot
	if root == "" {
		root = "/"
	}
	if root != "/" {
		abs, err := filepath.Abs(root)
		if err != nil {
			return nil, nil, usageError{err}
		}
		root = abs
	}
	mode := flagRunner
	if mode == "" {
		mode = "exec"
		if root != "/" {
			mode = "record"
		}
	}
	switch mode {
	case "exec":
		// Grace lets docker-compose stop its containers on SIGTERM
		// (TimeoutStopSec=3min in appliance.service).
		return host.New(root, host.ExecRunner{Grace: 150 * time.Second}), io.NopCloser(nil), nil
	case "record":
		h := host.New(root, nil)
		lf := &lazyFile{path: h.Path("/var/log/ecs-agent/commands.log")}
		h.Runner = &host.Recorder{Log: lf}
		return h, lf, nil
	}
	return nil, nil, usageError{fmt.Errorf("--runner: want exec or record, got %q", mode)}
}

// lazyFile is an append-only log file created on the first write, so
// commands that run nothing leave nothing behind.
type lazyFile struct {
	path string
	f    *os.File
}

func (l *lazyFile) Write(p []byte) (int, error) {
	if l.f == nil {
		if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
			return 0, err
		}
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return 0, err
		}
		l.f = f
	}
	return l.f.Write(p)
}

func (l *lazyFile) Close() error {
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}

// withAgent runs fn with an Agent built from the global flags.
func withAgent(fn func(ctx context.Context, a *prepare.Agent) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		h, closer, err := newHost()
		if err != nil {
			return err
		}
		defer closer.Close()
		return fn(cmd.Context(), &prepare.Agent{Host: h})
	}
}

func exitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u):
		return exitUsage
	case errors.Is(err, prepare.ErrBlocked):
		return exitBlocked
	case errors.Is(err, prepare.ErrStandby):
		return exitStandby
	}
	return exitFailure
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rootCmd.SetArgs(args)
	err := rootCmd.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ecs-agent: %v\n", err)
		if code := exitCode(err); code != exitFailure {
			return code
		}
		if isCobraUsage(err) {
			return exitUsage
		}
	}
	return exitCode(err)
}

func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "accepts ", "requires at least", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func main() { os.Exit(run(os.Args[1:])) }
