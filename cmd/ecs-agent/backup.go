package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/spf13/cobra"
)

func init() {
	var full bool
	runCmd := &cobra.Command{
		Use:   "run",
		Short: "Dump the database and back up the storage vault and the dump (duplicity)",
		Long: `Refuses (exit 1) when database ecs does not exist or /data/ecs-storage-vault
holds no file. Otherwise dumps database ecs (pg_dump --format=custom) to
/data/ecs-pgdump/ecs.pgdump (temp file, then rename) and runs duplicity on
/data/ecs-storage-vault and /data/ecs-pgdump to appliance.backup.url
(default file:///volatile/ecs-backup-test/), encrypted to the
appliance.backup.encrypt key before anything leaves the machine:
'cleanup' first, then a full backup when there is none or the last full is
older than 2 months, else an incremental one, then 'remove-older-than 4M'.

The outcome goes to /var/lib/ecs-agent/backup/status.json ('ecs-agent
backup status'), the state and status page (a failure is the "backup"
warning) and /var/lib/prometheus/node-exporter/appliance_backup.prom.
appliance-backup.timer runs it daily around 00:30.`,
		Example: `  systemctl start appliance-backup   # the normal way
  ecs-agent backup run --full`,
		Args: noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			return a.Backup(ctx, prepare.BackupOptions{Full: full})
		}),
	}
	runCmd.Flags().BoolVar(&full, "full", false, "make a full backup now instead of an incremental one")

	var asJSON bool
	statusCmd := &cobra.Command{
		Use:   "status",
		Short: "Show the last backup run and the next one",
		Args:  noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			st, err := a.BackupStatus(ctx)
			if err != nil {
				return err
			}
			out := rootCmd.OutOrStdout()
			if asJSON {
				data, _ := json.MarshalIndent(st, "", "  ")
				fmt.Fprintln(out, string(data))
				return nil
			}
			ts := func(t time.Time) string {
				if t.IsZero() {
					return "never"
				}
				return t.Local().Format("2006-01-02 15:04:05 MST")
			}
			fmt.Fprintf(out, "last run:     %s", ts(st.Start))
			if !st.Start.IsZero() {
				fmt.Fprintf(out, " (%s, %s, %.0fs)", st.Result, st.Type, st.Duration)
			}
			fmt.Fprintln(out)
			if st.Error != "" {
				fmt.Fprintf(out, "error:        %s\n", st.Error)
			}
			fmt.Fprintf(out, "last success: %s", ts(st.LastSuccess))
			if !st.LastSuccess.IsZero() {
				fmt.Fprintf(out, " (%d bytes of data)", st.LastSuccessBytes)
			}
			fmt.Fprintln(out)
			if st.Target != "" {
				fmt.Fprintf(out, "target:       %s\n", st.Target)
			}
			next := st.NextRun
			if next == "" {
				next = "unknown (timer " + st.Timer + ")"
			}
			fmt.Fprintf(out, "next run:     %s\n", next)
			if st.Result == "failed" {
				return errors.New("the last backup failed")
			}
			return nil
		}),
	}
	statusCmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	backupCmd := &cobra.Command{
		Use:   "backup",
		Short: "Back up the database and the storage vault (run, status)",
	}
	backupCmd.AddCommand(runCmd, statusCmd)
	rootCmd.AddCommand(backupCmd)

	var (
		sure bool
		opt  prepare.RecoverOptions
	)
	recoverCmd := &cobra.Command{
		Use:   "recover --yes-i-am-sure",
		Short: "Disaster recovery: restore the database and the storage vault from the backup",
		Long: `Restores the latest backup (or --time) from appliance.backup.url of the
active env.yml (manual §4.4): stops the appliance, fetches and decrypts the
backup with the appliance.backup.encrypt key into /data/.ecs-restore,
puts /data/ecs-storage-vault and /data/ecs-pgdump in place, loads the dump
into a new database ecs (owned by role ecs) and starts the appliance.

A database with tables or a storage vault with files is refused unless
--force is given (the message says what would be overwritten); with --force
the old vault and dumps are kept as /data/*.before-recover-<time>. An
interrupted recover can be run again.`,
		Example: `  ecs-agent recover --yes-i-am-sure
  ecs-agent recover --yes-i-am-sure --time 3D --force`,
		Args: noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			if !sure {
				return usageError{errors.New("recover overwrites the database and the storage vault with the backup: confirm with --yes-i-am-sure")}
			}
			return a.Recover(ctx, opt)
		}),
	}
	recoverCmd.Flags().BoolVar(&sure, "yes-i-am-sure", false, "confirm the restore")
	recoverCmd.Flags().BoolVar(&opt.Force, "force", false, "overwrite a non-empty database and storage vault")
	recoverCmd.Flags().StringVar(&opt.Time, "time", "", "restore the backup as of this time (duplicity time format: 3D, 2026-11-30, …)")
	recoverCmd.Flags().BoolVar(&opt.NoStart, "no-start", false, "leave the appliance stopped after the restore")
	rootCmd.AddCommand(recoverCmd)
}

func init() {
	rootCmd.AddCommand(&cobra.Command{
		Use:   "update",
		Short: "Update in place: system packages, certificate, container images, migrations",
		Long: `What appliance-update.service runs (manual §4.2, §4.5): apt-get update; the
upgradable packages decide the precautions: docker or PostgreSQL packages
stop the appliance first (PostgreSQL after a dump of the database to
/data/ecs-pgdump/ecs-update.pgdump); unattended-upgrade upgrades the
system; the Let's Encrypt certificate is renewed when due; container
images baked from a registry tag (their ref in /app/images/manifest.json,
not pinned by digest) are pulled again when the registry has a newer image
(an unreachable registry is a warning: the loaded image stays); then the machine
reboots when a package asks for it (/run/reboot-required, e.g. a kernel),
or the appliance restarts when docker, PostgreSQL or a container image
changed (prepare-ecs loads the new images and migrates after a dump).

Flags (manual §4.3), each removed by the run that used it:
/app/etc/flags/force.update.{appliance,ecs,system,docker,postgres,letsencrypt}.
A failure marks the appliance failed (/run/appliance-failed) with the
reason. Metrics: /var/lib/prometheus/node-exporter/appliance_update.prom.`,
		Example: `  systemctl start appliance-update   # the normal way
  touch /app/etc/flags/force.update.ecs && systemctl start appliance-update`,
		Args: noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			return a.Update(ctx)
		}),
	})
}
