package prepare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/ecs-image/ecs-image/contract"
)

// ReadStack reads the declared stack (contract.StackFile, written by the
// builder's stack provisioner); nil when the image has none, and the agent
// renders a compose file from the image index instead.
func (a *Agent) ReadStack() (*contract.Stack, error) {
	data, err := a.Host.ReadFile(contract.StackFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st contract.Stack
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", contract.StackFile, err)
	}
	if st.Web.Port < 1 || st.Web.Port > 65535 || st.SMTPD < 0 || st.SMTPD > 65535 {
		return nil, fmt.Errorf("%s: bad port", contract.StackFile)
	}
	for _, p := range st.Proxies {
		if !strings.HasPrefix(p.Path, "/") || strings.ContainsAny(p.Path, " \t\n;{}\"'$") || p.Port < 1 || p.Port > 65535 {
			return nil, fmt.Errorf("%s: bad proxy %q → %d", contract.StackFile, p.Path, p.Port)
		}
	}
	if st.Project == "" {
		st.Project = ComposeProject
	}
	return &st, nil
}

// webPort is the loopback port nginx proxies / to and the ready probe asks.
func (a *Agent) webPort() int {
	if st, err := a.ReadStack(); err == nil && st != nil {
		return st.Web.Port
	}
	return WebPort
}

// smtpdPort is where stunnel hands incoming mail.
func (a *Agent) smtpdPort() int {
	if st, err := a.ReadStack(); err == nil && st != nil && st.SMTPD > 0 {
		return st.SMTPD
	}
	return SMTPDPort
}

// composeProject is the compose project the appliance runs.
func (a *Agent) composeProject() string {
	if st, err := a.ReadStack(); err == nil && st != nil {
		return st.Project
	}
	return ComposeProject
}

// PostfixContainerPort is postfix's smtpd for the containers (port 25 is
// stunnel's); they reach it over the bridge as host.docker.internal.
const PostfixContainerPort = 10025

// ServiceURLs are the service URLs of the declared stack's containers
// (service_urls.env): redis and memcached by their link names, mail to the
// host's postfix, and the public URL of the appliance.
func ServiceURLs(st *contract.Stack, domain string) []Var {
	has := map[string]bool{}
	for _, s := range st.Services {
		has[s] = true
	}
	var v []Var
	if has["redis"] {
		v = append(v, Var{"REDIS_URL", "redis://redis:6379/0"})
	}
	if has["memcached"] {
		v = append(v, Var{"MEMCACHED_URL", "memcached://memcached:11211"})
	}
	v = append(v, Var{"SMTP_URL", fmt.Sprintf("smtp://host.docker.internal:%d", PostfixContainerPort)})
	v = append(v, Var{"ECS_URL", "https://" + domain})
	return v
}

// stepStackEnv renders the environment of a declared stack: the compose
// file itself is the builder's and is not touched.
func (a *Agent) stepStackEnv(ctx context.Context, e *Env, st *contract.Stack) error {
	if !a.Host.Exists(ComposeFile) {
		return fmt.Errorf("%s declares a stack but %s is missing", contract.StackFile, ComposeFile)
	}
	tool := a.Compose()
	urls := ServiceURLs(st, e.Doc.Domain())
	if _, err := a.Host.WriteFile(contract.ServiceURLsEnv, []byte(tool.EnvFile(urls)), 0o644); err != nil {
		return err
	}
	if !a.Host.Exists(DatabaseEnv) {
		// PostgreSQL is not installed or failed: the containers still get
		// the file their compose file names.
		if _, err := a.Host.WriteFile(DatabaseEnv, nil, 0o600); err != nil {
			return err
		}
	}
	bridgeIP, _ := a.dockerBridge()
	dot := []Var{
		{"APPLIANCE_DOMAIN", e.Doc.Domain()},
		{"DOCKER_BRIDGE_IP", bridgeIP},
		{"ECS_SETTINGS", e.Vars["ECS_SETTINGS"]},
		{"COMPOSE_PROJECT_NAME", st.Project},
	}
	if _, err := a.Host.WriteFile(contract.ComposeDotEnv, []byte(tool.EnvFile(dot)), 0o600); err != nil {
		return err
	}
	names := append([]string(nil), st.Services...)
	sort.Strings(names)
	a.logf("prepare-ecs/compose: declared stack %s (%s), web %s:%d; environment rendered (%s, %s, %s)",
		ComposeFile, strings.Join(names, ", "), st.Web.Service, st.Web.Port, contract.ServiceURLsEnv, DatabaseEnv, contract.ComposeDotEnv)
	return nil
}

// stackProxies are the declared stack's further nginx locations.
func (a *Agent) stackProxies() []contract.Proxy {
	if st, err := a.ReadStack(); err == nil && st != nil {
		return st.Proxies
	}
	return nil
}
