package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/spf13/cobra"
)

var unsafeFileChars = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`[^A-Za-z0-9_.@-]+`) })

func init() {
	cmd := &cobra.Command{
		Use:   "client-cert",
		Short: "Issue, revoke and list client certificates",
		Long: `The appliance's client certificate authority lives in /data/ecs-ca
(ca.cert.pem, ca.key.pem 0600, crl.pem, index.json); prepare-appliance
creates it at the first activation and nginx verifies client certificates
against it and its CRL: optional by default (a certificate that fails is
refused), mandatory with appliance.ssl.client_certs_mandatory: true.`,
	}
	var (
		days int
		out  string
	)
	create := &cobra.Command{
		Use:   "create EMAIL NAME",
		Short: "Issue a client certificate as a PKCS#12 file with a transport password",
		Long: `Issues a client certificate (RSA 2048, CN NAME, e-mail EMAIL, valid --days,
default 7, as create-client-certificate.sh had it) and writes it with its
key and the CA certificate as a PKCS#12 file (0600; never overwritten),
protected by a new random transport password. Prints the file's path and
the password, once: the password is stored nowhere. Hand the file and the
password to the user over different channels.`,
		Example: `  ecs-agent client-cert create office@ek.example.org "Office 1"
  ecs-agent client-cert create office@ek.example.org "Office 1" --days 365 -o /root/office1.p12`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{fmt.Errorf("create takes EMAIL and NAME, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req := prepare.ClientCertRequest{Email: args[0], Name: args[1], Days: days}
			if err := req.Check(); err != nil {
				return usageError{err}
			}
			return withAgent(func(ctx context.Context, a *prepare.Agent) error {
				ca, unlock, err := a.LoadClientCA()
				if err != nil {
					return err
				}
				defer unlock()
				file := out
				if file == "" {
					file = unsafeFileChars().ReplaceAllString(args[1], "_") + ".p12"
				}
				if _, err := os.Lstat(file); err == nil {
					return usageError{fmt.Errorf("%s exists; choose another file with -o", file)}
				}
				p12, password, issued, err := ca.Create(req, time.Now())
				if err != nil {
					return err
				}
				if err := prepare.WriteClientP12(file, p12); err != nil {
					return fmt.Errorf("certificate %s issued but not written: %w (revoke it)", issued.Serial, err)
				}
				abs, _ := filepath.Abs(file)
				w := cmd.OutOrStdout()
				fmt.Fprintln(w, abs)
				fmt.Fprintf(w, "transport password: %s\n", password)
				fmt.Fprintf(cmd.ErrOrStderr(), "issued client certificate %s for %s <%s>, valid until %s\n",
					issued.Serial, issued.Name, issued.Email, issued.NotAfter.UTC().Format(time.RFC3339))
				return nil
			})(cmd, args)
		},
	}
	create.Flags().IntVar(&days, "days", prepare.DefaultClientCertDays, "validity in days")
	create.Flags().StringVarP(&out, "output", "o", "", "PKCS#12 file to write (default NAME.p12 in the current directory)")

	revoke := &cobra.Command{
		Use:   "revoke SERIAL|NAME|EMAIL",
		Short: "Revoke client certificates, update the CRL and reload nginx",
		Long: `Revokes every unrevoked certificate with that serial (hex, as in 'list'),
name or e-mail address, rewrites /data/ecs-ca/crl.pem and reloads nginx
(when it runs), which from then on refuses them.`,
		Example: `  ecs-agent client-cert revoke 5F3A9C…
  ecs-agent client-cert revoke office@ek.example.org`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{fmt.Errorf("revoke takes one SERIAL, NAME or EMAIL, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAgent(func(ctx context.Context, a *prepare.Agent) error {
				ca, unlock, err := a.LoadClientCA()
				if err != nil {
					return err
				}
				revoked, err := ca.Revoke(args[0], time.Now())
				unlock()
				if err != nil {
					return err
				}
				for _, c := range revoked {
					fmt.Fprintf(cmd.OutOrStdout(), "revoked %s %s <%s>\n", c.Serial, c.Name, c.Email)
				}
				if err := a.ReloadNginx(ctx); err != nil {
					return fmt.Errorf("CRL updated, but reloading nginx failed: %w", err)
				}
				return nil
			})(cmd, args)
		},
	}
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the issued client certificates",
		Example: `  ecs-agent client-cert list`,
		Args:    noArgs,
		RunE: withAgent(func(ctx context.Context, a *prepare.Agent) error {
			ca, unlock, err := a.LoadClientCA()
			if err != nil {
				return err
			}
			unlock()
			now := time.Now()
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SERIAL\tNAME\tEMAIL\tNOT AFTER\tSTATUS")
			for _, c := range ca.Issued() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Serial, strconv.Quote(c.Name), c.Email, c.NotAfter.UTC().Format(time.RFC3339), c.Status(now))
			}
			return w.Flush()
		}),
	}
	reload := &cobra.Command{
		Use:   "reload",
		Short: "Reload nginx so that it reads the client CA's CRL",
		Long: `Reloads nginx when it runs (systemctl try-reload-or-restart nginx.service).
ecs-ca-crl.path runs it (as ecs-ca-crl.service) whenever /data/ecs-ca/crl.pem
changes, also when the ecs application revokes a certificate of its own CA.`,
		Example: `  ecs-agent client-cert reload`,
		Args:    noArgs,
		RunE:    withAgent(func(ctx context.Context, a *prepare.Agent) error { return a.ReloadNginx(ctx) }),
	}
	cmd.AddCommand(create, revoke, list, reload)
	rootCmd.AddCommand(cmd)
}
