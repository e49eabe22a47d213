// Package deploy is the agent's push-deploy API, after ed-daemon: an HTTPS
// server with mutual TLS that loads docker-archive tarballs pushed by
// `ecs-image deploy` and (re)starts the named deployments' containers,
// without a registry.
package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
)

// Defaults.
const (
	DefaultConfig    = "/etc/ecs-agent/config.json"
	DefaultListen    = ":8866"
	DefaultCert      = "/etc/ecs-agent/server.crt"
	DefaultKey       = "/etc/ecs-agent/server.key"
	DefaultClientCA  = "/etc/ecs-agent/ca.crt"
	DefaultPrefix    = "ed_"
	DefaultMaxUpload = 4 << 30
	DefaultSpoolDir  = "/var/lib/ecs-agent/spool"
)

// Config is /etc/ecs-agent/config.json. Only deployments is required.
type Config struct {
	Listen          string       `json:"listen,omitempty"`
	TLSCert         string       `json:"tls_cert,omitempty"`
	TLSKey          string       `json:"tls_key,omitempty"`
	ClientCA        string       `json:"client_ca,omitempty"`
	ContainerPrefix string       `json:"container_prefix,omitempty"`
	MaxUploadBytes  int64        `json:"max_upload_bytes,omitempty"`
	SpoolDir        string       `json:"spool_dir,omitempty"`
	Deployments     []Deployment `json:"deployments"`
}

// Deployment is one named container: its `docker run` arguments (without
// -d and --name, which the agent sets). With Image it is an image of the
// declared stack instead: a load tags the uploaded image as Image (e.g.
// ecs/ecs:latest, what the stack's compose file runs) and restarts the
// stack (appliance.service), whose `up` recreates the services that run
// it; no container of its own is run.
type Deployment struct {
	Name  string   `json:"name"`
	Args  []string `json:"args,omitempty"`
	Image string   `json:"image,omitempty"`
}

var imageRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$`)
})

var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`) })

// LoadConfig reads and checks a config file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// ParseConfig checks a config and fills in defaults; file names it in errors.
func ParseConfig(file string, data []byte) (*Config, error) {
	var c Config
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.TLSCert == "" {
		c.TLSCert = DefaultCert
	}
	if c.TLSKey == "" {
		c.TLSKey = DefaultKey
	}
	if c.ClientCA == "" {
		c.ClientCA = DefaultClientCA
	}
	if c.ContainerPrefix == "" {
		c.ContainerPrefix = DefaultPrefix
	}
	if c.MaxUploadBytes <= 0 {
		c.MaxUploadBytes = DefaultMaxUpload
	}
	if c.SpoolDir == "" {
		c.SpoolDir = DefaultSpoolDir
	}
	if len(c.Deployments) == 0 {
		return nil, fmt.Errorf("%s: deployments: at least one deployment is required", file)
	}
	seen := map[string]bool{}
	for i, d := range c.Deployments {
		if !nameRE().MatchString(d.Name) {
			return nil, fmt.Errorf("%s: deployments[%d].name: %q must match %s", file, i, d.Name, nameRE())
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("%s: deployments[%d].name: %q is not unique", file, i, d.Name)
		}
		seen[d.Name] = true
		if d.Image != "" {
			if !imageRE().MatchString(d.Image) {
				return nil, fmt.Errorf("%s: deployments[%d].image: %q is not an image name (NAME[:TAG])", file, i, d.Image)
			}
			if len(d.Args) > 0 {
				return nil, fmt.Errorf("%s: deployments[%d]: a stack image (image) runs no container of its own: no args", file, i)
			}
		}
		for _, a := range d.Args {
			switch {
			case a == "--name" || strings.HasPrefix(a, "--name="):
				return nil, fmt.Errorf("%s: deployments[%d].args: --name is set by the agent", file, i)
			case a == "-d" || a == "--detach" || a == "--rm":
				return nil, fmt.Errorf("%s: deployments[%d].args: %s is not allowed (the agent runs containers detached)", file, i, a)
			}
		}
	}
	return &c, nil
}
