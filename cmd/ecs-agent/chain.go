package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/discover"
	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/templates/systemd"
	"github.com/spf13/cobra"
)

func init() {
	var (
		devices        []string
		ec2URL, gceURL string
		timeout        time.Duration
		localFile      string
	)
	envCmd := &cobra.Command{
		Use:   "prepare-env",
		Short: "Find env.yml, validate it and activate it as /run/active-env.yml",
		Long: `Looks for env.yml in order: $ENV_YML, /app/env.yml, a drive labelled
cidata (ISO9660 or vfat, read without mounting), a drive labelled config-2
(openstack/latest/user_data), the EC2 metadata service (IMDSv2, v1
fallback) and the GCE metadata service. Absent sources, broken ones and
sources without user-data fall through to the next.

The env.yml found is validated like 'ecs-image env validate' and written
to /run/active-env.yml (0600); its origin to /run/active-env.source; the
flattened ecs,appliance trees to /run/active-env.env (shell and systemd
EnvironmentFile syntax) and /run/active-env.compose.env (docker-compose
env_file syntax). appliance.standby: true puts the appliance in standby.`,
		Example: `  ecs-agent prepare-env
  ENV_YML=/root/test-env.yml ecs-agent prepare-env
  ecs-agent --root /tmp/r prepare-env --device ./seed.iso --ec2-url - --gce-url -`,
		Args: noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			a.Discover = discover.Config{
				EnvYML: os.Getenv("ENV_YML"), LocalFile: localFile, Devices: devices,
				EC2URL: ec2URL, GCEURL: gceURL, Timeout: timeout,
			}
			return a.PrepareEnv(ctx)
		}),
	}
	envCmd.Flags().StringSliceVar(&devices, "device", nil, "probe these devices or image files for cidata/config-2 labels instead of scanning block devices")
	envCmd.Flags().StringVar(&ec2URL, "ec2-url", discover.DefaultEC2URL, `EC2 metadata base URL ("-" disables)`)
	envCmd.Flags().StringVar(&gceURL, "gce-url", discover.DefaultGCEURL, `GCE metadata base URL ("-" disables)`)
	envCmd.Flags().DurationVar(&timeout, "timeout", discover.DefaultTimeout, "time limit per source")
	envCmd.Flags().StringVar(&localFile, "local", discover.DefaultLocalFile, "local env.yml path")

	var (
		readyTimeout time.Duration
		maxFailures  int
	)
	appCmd := &cobra.Command{
		Use:   "appliance",
		Short: "Run the compose stack in the foreground and signal when it is up",
		Long: `Runs 'docker-compose -p ecs -f /app/docker-compose.yml up'. When the web
service answers on 127.0.0.1:18000 it removes the status page (nginx then
proxies to the application), prints ECS-APPLIANCE-READY on the console
and notifies systemd.

A failed run (docker-compose exits, or the web service does not answer
within --ready-timeout) exits 1 and systemd restarts the unit. Failed runs
in a row are counted in /run/ecs-agent/appliance-failures.json (reset when
the web service answers); the --max-failures'th writes
/run/appliance-failed with the reason, prints ECS-APPLIANCE-FAILED on the
console and exits 3, which stops the restarts until the flag is removed.
Exit code 3: blocked by /run/appliance-failed; 4: standby.`,
		Example: `  systemctl start appliance   # the normal way
  ecs-agent appliance --ready-timeout 5m`,
		Args: noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			if maxFailures < 1 {
				return usageError{fmt.Errorf("--max-failures: want at least 1, got %d", maxFailures)}
			}
			return a.Appliance(ctx, prepare.RunOptions{ReadyTimeout: readyTimeout, MaxFailures: maxFailures})
		}),
	}
	appCmd.Flags().DurationVar(&readyTimeout, "ready-timeout", 15*time.Minute, "how long to wait for the web service")
	appCmd.Flags().IntVar(&maxFailures, "max-failures", prepare.DefaultMaxFailures, "consecutive failed runs before the appliance is marked failed")

	rootCmd.AddCommand(envCmd, appCmd,
		&cobra.Command{
			Use:   "prepare-appliance",
			Short: "Configure host services from the active env.yml",
			Long: `Idempotent steps: storage volumes (the filesystems labelled ecs-data and
ecs-volatile mounted on /data and /volatile when appliance.storage.ignore
.data/.volatile is false), runtime layout (/app, /data, /volatile), hostname from
appliance.domain, TLS certificate (appliance.ssl.key/cert or self-signed),
the client certificate CA in /data/ecs-ca (created once), nginx with the
503 status page and client certificate verification,
appliance.extra.files and .packages, PostgreSQL tuning plus the ecs role
and database, postfix/opendkim, stunnel on ports 25 and 465, and the
vault keys in /data/ecs-gpg.`,
			Example: `  ecs-agent prepare-appliance
  ecs-agent --root /tmp/r prepare-appliance   # records commands instead of running them`,
			Args: noArgs,
			RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error { return standbyOK(a.PrepareAppliance(ctx)) }),
		},
		&cobra.Command{
			Use:   "prepare-ecs",
			Short: "Load the baked container images, render the compose file, migrate",
			Long: `Runs 'docker load' for every tarball listed in /app/images/manifest.json
(no registry), applies its tags, renders /app/docker-compose.yml and runs
/app/etc/hooks/migrate when present (unless ecs.migrate.auto is false).`,
			Example: `  ecs-agent prepare-ecs
  touch /app/etc/flags/force.load.images && systemctl restart appliance`,
			Args: noArgs,
			RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error { return standbyOK(a.PrepareECS(ctx)) }),
		},
		&cobra.Command{
			Use:     "cleanup",
			Short:   "Remove dangling images and stale uploads after a start",
			Example: `  ecs-agent cleanup`,
			Args:    noArgs,
			RunE:    withAgent(func(ctx context.Context, a *prepare.Agent) error { return a.Cleanup(ctx) }),
		},
		&cobra.Command{
			Use:   "failed [UNIT]",
			Short: "OnFailure handler: record that UNIT failed",
			Long: `Writes /run/appliance-failed (keeping a reason already recorded), the
failed state, the status page and ECS-APPLIANCE-FAILED on the console.
Run by appliance-failed@.service.`,
			Example: `  ecs-agent failed prepare-ecs.service`,
			Args: func(cmd *cobra.Command, args []string) error {
				if len(args) > 1 {
					return usageError{errors.New("failed takes at most one unit name")}
				}
				return nil
			},
			RunE: func(cmd *cobra.Command, args []string) error {
				unit := ""
				if len(args) == 1 {
					unit = args[0]
				}
				return withAgent(func(ctx context.Context, a *prepare.Agent) error { return a.Failed(unit) })(cmd, args)
			},
		},
		&cobra.Command{
			Use:   "status",
			Short: "Print the appliance state as JSON",
			Example: `  ecs-agent status
  ecs-agent status | jq -r .state`,
			Args: noArgs,
			RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
				st, err := status.Read(a.Host)
				if err != nil {
					return err
				}
				out := struct {
					status.State
					Standby   bool   `json:"standby"`
					ActiveEnv string `json:"active_env,omitempty"`
					Compose   string `json:"compose_file,omitempty"`
				}{State: st, Standby: a.Host.Exists(status.StandbyFlag)}
				if src, err := a.Host.ReadFile(prepare.ActiveEnvSource); err == nil {
					out.ActiveEnv = prepare.ActiveEnv
					if out.EnvSource == "" {
						out.EnvSource = strings.TrimSpace(string(src))
					}
				}
				if a.Host.Exists(prepare.ComposeFile) {
					out.Compose = prepare.ComposeFile
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}),
		},
		waitStorageCmd(),
		&cobra.Command{
			Use:   "install-units",
			Short: "Write the systemd units under --root and enable them",
			Long: `Writes the agent's units to ROOT/etc/systemd/system and creates the
multi-user.target.wants links for appliance.service and
ecs-agent-deploy.service, as 'systemctl enable' would (works on a mounted
image without systemd). The binary itself belongs at ` + systemd.AgentBinary + `.`,
			Example: `  ecs-agent install-units --root /mnt/image
  ecs-agent install-units && systemctl daemon-reload`,
			Args: noArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				written, err := systemd.Install(flagRoot)
				for _, w := range written {
					fmt.Fprintln(cmd.OutOrStdout(), w)
				}
				return err
			},
		},
	)
}

// standbyOK turns the standby skip of prepare-appliance/prepare-ecs into
// success, so a unit run without its ConditionPathExists does not fail.
func standbyOK(err error) error {
	if errors.Is(err, prepare.ErrStandby) {
		return nil
	}
	return err
}

func init() {
	rootCmd.AddCommand(&cobra.Command{
		Use:   "keys",
		Short: "Print how the image handles each env.yml key",
		Long: `Prints the agent's key table: for every key of the original env.yml, the
step that implements it, or UNSUPPORTED with the reason. prepare-env
reports every set key the image ignores (unsupported or unknown) in the
journal and as the "env.yml" warning of the status page.`,
		Example: `  ecs-agent keys
  ecs-agent keys | grep UNSUPPORTED`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), prepare.FormatKeyTable())
			return err
		},
	})
}

// waitStorageCmd is docker.service's ExecStartPre (prepare.WaitStorage).
func waitStorageCmd() *cobra.Command {
	timeout := 10 * time.Minute
	cmd := &cobra.Command{
		Use:   "wait-storage",
		Short: "Wait until the attached storage volumes are mounted (dockerd's start)",
		Long: `Returns once every attached storage volume (a filesystem labelled ecs-data
or ecs-volatile) is mounted on /data or /volatile, or the storage step of
this boot has run (` + prepare.StorageReady + `): the env decides whether an
attached volume is used. Returns at once where none is attached. After
--timeout it warns and returns successfully, and dockerd starts where it is.
The image's docker.service runs it before dockerd, so that neither dockerd's
data root nor the stack's bind mounts are taken from the root file system
below a volume mounted a moment later.`,
		Example: `  ecs-agent wait-storage --timeout 10m`,
		Args:    noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			err := a.WaitStorage(ctx, timeout, 250*time.Millisecond)
			if errors.Is(err, prepare.ErrStorageWait) {
				fmt.Fprintf(os.Stderr, "warning: %v; dockerd starts anyway\n", err)
				return nil
			}
			return err
		}),
	}
	cmd.Flags().DurationVar(&timeout, "timeout", timeout, "how long to wait before dockerd starts anyway")
	return cmd
}
