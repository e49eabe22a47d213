package main

import (
	"context"
	"time"

	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/spf13/cobra"
)

func init() {
	var opt prepare.ACMEOptions
	cmd := &cobra.Command{
		Use:   "acme",
		Short: "Obtain or renew the Let's Encrypt (ACME) host certificate",
		Long: `With appliance.ssl.letsencrypt.enabled: true (and no appliance.ssl.key/cert)
in the active env.yml, requests a certificate for appliance.domain and the
names of appliance.allowed_hosts from the ACME directory when the installed
one is self-signed, lacks a name or has less than 30 days left. HTTP-01
challenges are answered from /var/www/acme, which nginx serves on port 80
under /.well-known/acme-challenge/. The account key is kept in
/app/etc/acme/account.key (0600).

On success the certificate replaces /app/etc/server.{cert,key}.pem and
nginx, stunnel and the push-deploy API are reloaded if they run. On failure
the installed certificate stays, the reason is logged and shown as the
"tls" warning of 'ecs-agent status', and the command exits 1.

The directory is --directory, else appliance.ssl.letsencrypt.directory,
else Let's Encrypt production. A private ACME server's CA is trusted via
SSL_CERT_FILE. ecs-agent-acme.timer runs this twice a day; prepare-appliance
starts it at boot.`,
		Example: `  systemctl start ecs-agent-acme.service   # the normal way
  ecs-agent acme --directory https://acme-staging-v02.api.letsencrypt.org/directory --force`,
		Args: noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			return a.RenewCertificate(ctx, opt)
		}),
	}
	cmd.Flags().StringVar(&opt.Directory, "directory", "", "ACME directory URL (default: appliance.ssl.letsencrypt.directory, else "+prepare.LetsEncryptDirectory+")")
	cmd.Flags().BoolVar(&opt.Force, "force", false, "request a certificate even if the installed one is not due")
	cmd.Flags().DurationVar(&opt.Timeout, "timeout", 5*time.Minute, "time limit of the whole request")
	rootCmd.AddCommand(cmd)
}
