//go:build !ecsfront

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/agent/deploy"
	"github.com/ecs-image/ecs-image/progress"
)

func init() {
	var (
		o      deploy.ClientOptions
		action string
	)
	cmd := &cobra.Command{
		Use:   "deploy HOST NAME [IMAGE.tar]",
		Short: "Push a container image to a running appliance (mutual TLS)",
		Long: `Talks to the push-deploy API of an appliance's agent (ecs-agent serve,
port 8866 unless HOST names one). With IMAGE.tar (a docker-archive, e.g.
from 'docker save', .tar or .tar.gz) it uploads the image to deployment
NAME: the agent loads it, stops the old container and starts a new one.
Without IMAGE.tar, --action start, stop, restart or status acts on NAME;
NAME "-" with --action status lists every deployment.

The client certificate (--cert/--key) must be signed by the CA the
appliance trusts (appliance.deploy.client_ca); --ca is the CA that signed
the appliance's server certificate (for a self-signed appliance: its
certificate, /app/etc/server.cert.pem).`,
		Example: `  docker save website:latest > website.tar
  ecs-image deploy ecs.example.org website website.tar --cert client.crt --key client.key --ca server-ca.crt
  ecs-image deploy 127.0.0.1:8866 website --action restart --server-name ecs.example.org --cert client.crt --key client.key --ca server.crt
  ecs-image deploy ecs.example.org - --action status --cert client.crt --key client.key --ca ca.crt`,
		Args: rangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.CertFile == "" || o.KeyFile == "" || o.CAFile == "" {
				return badInputf("--cert, --key and --ca are required")
			}
			hostArg, name := args[0], args[1]
			if len(args) == 3 && action != "load" && action != "" {
				return badInputf("IMAGE.tar given: --action must be load (or unset)")
			}
			if len(args) == 2 && (action == "" || action == "load") {
				return badInputf("no IMAGE.tar: give --action start, stop, restart or status")
			}
			c, err := deploy.NewClient(hostArg, o)
			if err != nil {
				return badInput(err)
			}
			ctx := cmd.Context()
			var out any
			switch {
			case len(args) == 3:
				f, err := os.Open(args[2])
				if err != nil {
					return badInput(err)
				}
				defer f.Close()
				fi, err := f.Stat()
				if err != nil {
					return err
				}
				t := progress.New("upload "+fi.Name(), fi.Size())
				st, err := c.Load(ctx, name, t.Reader(f), fi.Size())
				t.Done()
				if err != nil {
					return apiErr(err)
				}
				out = st
			case action == "status" && name == "-":
				list, err := c.List(ctx)
				if err != nil {
					return apiErr(err)
				}
				out = list
			case action == "status":
				st, err := c.Get(ctx, name)
				if err != nil {
					return apiErr(err)
				}
				out = st
			case action == "start" || action == "stop" || action == "restart":
				st, err := c.Action(ctx, name, action)
				if err != nil {
					return apiErr(err)
				}
				out = st
			default:
				return badInputf("--action: want load, start, stop, restart or status, got %q", action)
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
	cmd.Flags().StringVar(&o.CertFile, "cert", "", "client certificate (PEM)")
	cmd.Flags().StringVar(&o.KeyFile, "key", "", "client private key (PEM)")
	cmd.Flags().StringVar(&o.CAFile, "ca", "", "CA certificate that signed the appliance's server certificate (PEM)")
	cmd.Flags().StringVar(&o.ServerName, "server-name", "", "server name to verify, when HOST is an address or tunnel")
	cmd.Flags().StringVar(&action, "action", "", "load (with IMAGE.tar), start, stop, restart or status")
	rootCmd.AddCommand(cmd)
}

// apiErr classifies API answers: 4xx other than 409/422 are bad input.
func apiErr(err error) error {
	var ae *deploy.APIError
	if errors.As(err, &ae) && ae.Code >= 400 && ae.Code < 500 &&
		ae.Code != http.StatusConflict && ae.Code != http.StatusUnprocessableEntity {
		return badInput(fmt.Errorf("deploy: %w", err))
	}
	return fmt.Errorf("deploy: %w", err)
}
