package prepare

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strconv"

	"github.com/ecs-image/ecs-image/agent/deploy"
)

// Push-deploy API files written from appliance.deploy.
const (
	DeployCA     = "/etc/ecs-agent/ca.crt"
	deployMarker = "/etc/ecs-agent/.from-env"
	DeployUnit   = "ecs-agent-deploy.service"
)

// DeployEnv is appliance.deploy in env.yml: it enables the push-deploy API
// with the appliance's TLS certificate as server certificate.
type DeployEnv struct {
	ClientCA    string              `yaml:"client_ca"`
	Port        int                 `yaml:"port"`
	MaxUpload   int64               `yaml:"max_upload_bytes"`
	Deployments []deploy.Deployment `yaml:"deployments"`
}

// stepDeployAPI writes /etc/ecs-agent/config.json and ca.crt from
// appliance.deploy and (re)starts the API. Without appliance.deploy a
// configuration written earlier from the env is removed; a baked one is
// left alone.
func (a *Agent) stepDeployAPI(ctx context.Context, e *Env) error {
	if e.Doc.Lookup("appliance.deploy") == nil {
		if a.Host.Exists(deployMarker) {
			for _, p := range []string{DeployConfig, DeployCA, deployMarker} {
				if err := a.Host.Remove(p); err != nil {
					return err
				}
			}
			return a.systemctl(ctx, "stop", DeployUnit)
		}
		return nil
	}
	var d DeployEnv
	if err := e.Decode("appliance.deploy", &d); err != nil {
		return err
	}
	if d.ClientCA == "" {
		return fmt.Errorf("appliance.deploy.client_ca: required (PEM CA certificate that signs client certificates)")
	}
	if err := checkCAPEM(d.ClientCA); err != nil {
		return fmt.Errorf("appliance.deploy.client_ca: %w", err)
	}
	if d.Port == 0 {
		d.Port = 8866
	}
	if d.Port < 1 || d.Port > 65535 {
		return fmt.Errorf("appliance.deploy.port: %d is not a port", d.Port)
	}
	cfg := deploy.Config{
		Listen:         ":" + strconv.Itoa(d.Port),
		TLSCert:        ServerCert,
		TLSKey:         ServerKey,
		ClientCA:       DeployCA,
		MaxUploadBytes: d.MaxUpload,
		Deployments:    d.Deployments,
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if _, err := deploy.ParseConfig("appliance.deploy", data); err != nil {
		return err
	}
	c1, err := a.Host.WriteFile(DeployCA, []byte(d.ClientCA+"\n"), 0o644)
	if err != nil {
		return err
	}
	c2, err := a.Host.WriteFile(DeployConfig, append(data, '\n'), 0o600)
	if err != nil {
		return err
	}
	if _, err := a.Host.WriteFile(deployMarker, []byte("written by ecs-agent prepare-appliance from appliance.deploy\n"), 0o644); err != nil {
		return err
	}
	if c1 || c2 || a.tlsChanged {
		return a.systemctl(ctx, "restart", DeployUnit)
	}
	return a.systemctl(ctx, "start", DeployUnit)
}

// checkCAPEM checks client_ca: one or more PEM certificates and no other
// PEM block (it is written world-readable to ca.crt, so a CA's private key
// pasted along must not get there). Text around the blocks is allowed.
func checkCAPEM(s string) error {
	rest := []byte(s)
	n := 0
	for i := 1; ; i++ {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("block %d is %s, not CERTIFICATE (only certificates belong here: the file is world-readable)", i, b.Type)
		}
		n++
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n, err)
		}
	}
	if n == 0 {
		return fmt.Errorf("no PEM certificate")
	}
	return nil
}
