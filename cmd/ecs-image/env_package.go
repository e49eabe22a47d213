//go:build !ecsfront

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/envpack"
)

func init() {
	var (
		outDir     string
		recipients string
		metaData   string
	)
	cmd := &cobra.Command{
		Use:   "package FILE",
		Short: "Package an env.yml: printable PDF with QR codes, seed ISO, encrypted archive",
		Long: `Package a (valid) env.yml for safe keeping and delivery, like the original
appliance's env-package.sh, without external tools:

  env.yml.pdf     the env as text (numbered lines), the gzip'd env as QR codes
                  (level M, base32, numbered "i/n") and a page with the exact
                  commands to restore it (pdftoppm, zbarimg, base32, gunzip)
  env-cidata.iso  the NoCloud seed ISO (volume cidata, user-data = the env)
  DOMAIN.env.YYYY-MM-DD_HH.MM.tar.gz.gpg
                  with --recipients only: a tar.gz of env.yml, env.yml.pdf and
                  env-cidata.iso, OpenPGP-encrypted to every key in the file

Outputs go to the env file's directory unless -o is given (created, mode
0700, if missing), mode 0600; an
existing env.yml.pdf or env-cidata.iso there is replaced. Nothing is written
unless every output could be made. The paths written are printed on stdout.`,
		Example: `  ecs-image env package ecs.example.org/env.yml
  ecs-image env package /app/env.yml -o /root/env-package --recipients gpgkeys.asc
  ecs-image env package env.yml --meta-data meta-data.custom`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := envpack.Options{
				EnvFile:  args[0],
				OutDir:   outDir,
				Progress: func(msg string) { logrus.Info(msg) },
				Warn:     func(msg string) { logrus.Warn(msg) },
			}
			if _, err := os.Stat(args[0]); err != nil {
				return badInput(err)
			}
			if outDir != "" {
				// A missing directory is created (0700) once the outputs are ready.
				if st, err := os.Stat(outDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return badInput(err)
				} else if err == nil && !st.IsDir() {
					return badInputf("%s: not a directory", outDir)
				}
			}
			if recipients != "" {
				data, err := readInput("recipients", recipients)
				if err != nil {
					return err
				}
				opts.Recipients, opts.RecipientsFile = data, recipients
			}
			if metaData != "" {
				data, err := readInput("meta-data", metaData)
				if err != nil {
					return err
				}
				opts.MetaData, opts.MetaDataFile = data, metaData
			}
			paths, err := envpack.Package(cmd.Context(), opts)
			if err != nil {
				if envpack.IsInputError(err) {
					return badInput(err)
				}
				return err
			}
			for _, p := range paths {
				fmt.Fprintln(cmd.OutOrStdout(), p)
			}
			logrus.Infof("env package written (%d files); print %s and keep it in a safe place", len(paths), envpack.PDFName)
			return nil
		},
	}
	cmd.Flags().StringVarP(&outDir, "output", "o", "", "output directory (default: the env file's directory)")
	cmd.Flags().StringVar(&recipients, "recipients", "", "file of armored OpenPGP public keys to encrypt the archive to")
	cmd.Flags().StringVar(&metaData, "meta-data", "", "custom NoCloud meta-data for the seed ISO (e.g. static network)")
	envCmd.AddCommand(cmd)
}
