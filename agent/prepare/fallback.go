package prepare

import (
	"context"
	"fmt"
	"path"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
)

// The fallback status site, for a failure before prepare-appliance has
// configured nginx (no env.yml, an invalid one, or a failure in an early
// step): port 80 answers every request with the status page (HTTP 503,
// naming the reason) and /ecs-status.json with the state, so that a failed
// appliance is visible on the network and not a silent hang. The
// appliance's own site replaces it (stepNginx removes it).
const (
	FallbackSite    = "/etc/nginx/sites-available/ecs-status"
	FallbackEnabled = "/etc/nginx/sites-enabled/ecs-status"
	nginxBinary     = "/usr/sbin/nginx"
)

func fallbackSiteConf() string {
	return fmt.Sprintf(`# Written by ecs-agent: the appliance failed before nginx was configured.
# Removed by prepare-appliance when the appliance's own site is written.
server {
    listen 80;
    listen [::]:80;
    server_name _;
    access_log syslog:server=unix:%[4]s,nohostname,tag=nginx;
    error_log syslog:server=unix:%[4]s,nohostname,tag=nginx;
    root %[1]s;
    error_page 503 /%[2]s;
    location = /%[2]s {
        internal;
        add_header Cache-Control "no-store" always;
    }
    location = /ecs-status.json {
        default_type application/json;
        add_header Cache-Control "no-store" always;
        alias %[3]s;
    }
    location / {
        return 503;
    }
}
`, path.Dir(status.StatusPage), path.Base(status.StatusPage), status.StateFile, NginxSyslog)
}

// serveStatusPage starts nginx with the fallback status site when nginx
// is installed but the appliance's site is not configured yet.
func (a *Agent) serveStatusPage() error {
	if a.Host.Exists(NginxEnabled) || !a.Host.Exists(nginxBinary) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := a.Host.WriteFile(FallbackSite, []byte(fallbackSiteConf()), 0o644); err != nil {
		return err
	}
	if _, err := a.Host.Symlink(FallbackSite, FallbackEnabled); err != nil {
		return err
	}
	if err := a.Host.Remove("/etc/nginx/sites-enabled/default"); err != nil {
		return err
	}
	if _, err := a.Host.Run(ctx, "nginx", "-t", "-q"); err != nil {
		return fmt.Errorf("nginx configuration test: %w", err)
	}
	return a.systemctl(ctx, "reload-or-restart", "nginx.service")
}

// removeFallbackSite drops the fallback status site (before the
// appliance's own site is enabled).
func (a *Agent) removeFallbackSite() error {
	if err := a.Host.Remove(FallbackEnabled); err != nil {
		return err
	}
	return a.Host.Remove(FallbackSite)
}
