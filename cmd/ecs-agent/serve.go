package main

import (
	"github.com/ecs-image/ecs-image/agent/deploy"
	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/spf13/cobra"
)

func init() {
	var config string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the push-deploy API (HTTPS, mutual TLS)",
		Long: `Serves the push-deploy API after ed-daemon. Clients need a certificate
signed by the configured client CA (TLS 1.2 or later); anything else is
refused during the handshake.

  POST /v1/deployments/{name}/load     body: docker-archive .tar or .tar.gz
  POST /v1/deployments/{name}/start|stop|restart
  GET  /v1/deployments  and  /v1/deployments/{name}

A load checks the archive (no absolute or ".." entries), runs docker load,
stops the old container, tags the image and starts the new container; if
anything fails before the new container runs, the old one keeps running.

Config (JSON; only deployments is required):
  {"listen": ":8866", "tls_cert": "/etc/ecs-agent/server.crt",
   "tls_key": "/etc/ecs-agent/server.key", "client_ca": "/etc/ecs-agent/ca.crt",
   "container_prefix": "ed_", "max_upload_bytes": 4294967296,
   "deployments": [{"name": "website", "args": ["-p", "80:8000"]}]}`,
		Example: `  ecs-agent serve --config /etc/ecs-agent/config.json
  ecs-image deploy appliance.example.org website website.tar --cert client.crt --key client.key --ca ca.crt`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := deploy.LoadConfig(config)
			if err != nil {
				return usageError{err}
			}
			srv := deploy.NewServer(cfg, deploy.Docker{Runner: host.ExecRunner{}}, nil)
			return srv.Serve(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&config, "config", deploy.DefaultConfig, "configuration file")
	rootCmd.AddCommand(cmd)
}
