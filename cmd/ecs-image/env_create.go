//go:build !ecsfront

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/envgen"
)

func init() {
	var (
		output string
		extra  string
		force  bool
	)
	cmd := &cobra.Command{
		Use:   "create DOMAIN",
		Short: "Create a new env.yml with fresh secrets for DOMAIN",
		Long: `Create a new env.yml for the appliance at DOMAIN, from the ECS administration
manual's template, with freshly generated secrets: the Django SECRET_KEY,
REGISTRATION_SECRET and PASSWORD_RESET_SECRET, an RSA-2048 DKIM key and three
unprotected OpenPGP RSA-3072 keys (ecs_backup, ecs_mediaserver, ecs_authority).
The DNS records to publish (A, MX, SPF, DKIM, PTR) are written as comments at
the top of the file.

The file is written with mode 0600 (default: DOMAIN/env.yml, the directory is
created with mode 0700). An existing file is never overwritten without --force.

--extra merges a YAML file of overrides (ssh keys, ssl, sentry, metric, git,
extra files/packages/states, update, storage, backup url/options/mount, ecs git,
migrate, userswitcher); see docs/env.md. Never reuse an env.yml for another
domain: create a new one.`,
		Example: `  ecs-image env create ecs.example.org
  ecs-image env create ecs.example.org -o /app/env.yml --extra site-overrides.yml
  ecs-image env create ecs.example.org -o env.yml --force`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			domain := args[0]
			if err := envgen.CheckDomain(domain); err != nil {
				return badInput(err)
			}
			output := output // flags keep their values between runs in tests
			if output == "" {
				output = filepath.Join(domain, "env.yml")
			}
			if !force {
				if _, err := os.Lstat(output); err == nil {
					return badInputf("%s: %v", output, envgen.ErrExists)
				}
			}
			opts := envgen.Options{
				Domain:   domain,
				Progress: func(msg string) { logrus.Info(msg) },
			}
			if extra != "" {
				data, err := readInput("extra", extra)
				if err != nil {
					return err
				}
				opts.Extra, opts.ExtraFile = data, extra
			}
			out, err := envgen.Generate(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if err := envgen.WriteFile(output, out, force); err != nil {
				if errors.Is(err, envgen.ErrExists) {
					return badInput(err)
				}
				return err
			}
			logrus.WithField("file", output).Info("env.yml created (mode 0600); publish the DNS records listed at its top")
			fmt.Fprintln(cmd.OutOrStdout(), output)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output file (default DOMAIN/env.yml)")
	cmd.Flags().StringVar(&extra, "extra", "", "YAML file of overrides merged into the new env.yml")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing output file")
	envCmd.AddCommand(cmd)

	badInputCheckers = append(badInputCheckers, func(err error) bool {
		var de *envgen.DomainError
		return errors.As(err, &de)
	})
}
