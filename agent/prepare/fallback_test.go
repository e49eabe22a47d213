package prepare

import (
	"context"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/status"
)

// A failure before nginx is configured (here: an invalid env.yml) starts
// nginx with the fallback status site; prepare-appliance replaces it.
func TestFailedServesStatusPage(t *testing.T) {
	a, rec := testAgent(t)
	put(t, a, nginxBinary, []byte("fake"), 0o755)
	put(t, a, "/etc/nginx/sites-enabled/default", []byte("default site"), 0o644)
	put(t, a, "/app/env.yml", []byte("#cloud-config\nappliance:\n  standby: false\n"), 0o600)
	if err := a.PrepareEnv(context.Background()); err == nil {
		t.Fatal("invalid env accepted")
	}
	if err := a.Failed("prepare-env.service"); err != nil {
		t.Fatal(err)
	}
	conf := read(t, a, FallbackSite)
	for _, want := range []string{"listen 80;", "return 503;", "error_page 503 /503.html;", "alias " + status.StateFile + ";", "root /var/www/html;",
		"access_log syslog:server=unix:/dev/log,nohostname,tag=nginx;", "error_log syslog:server=unix:/dev/log,nohostname,tag=nginx;"} {
		if !strings.Contains(conf, want) {
			t.Errorf("fallback site lacks %q:\n%s", want, conf)
		}
	}
	if !a.Host.Exists(FallbackEnabled) || a.Host.Exists("/etc/nginx/sites-enabled/default") {
		t.Error("fallback site not enabled, or the default site still enabled")
	}
	cmds := strings.Join(rec.Recorded(), "\n")
	if !strings.Contains(cmds, "nginx -t -q") || !strings.Contains(cmds, "systemctl reload-or-restart nginx.service") {
		t.Errorf("commands:\n%s", cmds)
	}
	if page := read(t, a, status.StatusPage); !strings.Contains(page, "appliance.domain") {
		t.Errorf("status page lacks the reason:\n%s", page)
	}

	// Once the appliance's own site exists, a failure leaves nginx alone.
	a2, rec2 := testAgent(t)
	put(t, a2, nginxBinary, []byte("fake"), 0o755)
	put(t, a2, NginxEnabled, []byte("site"), 0o644)
	if err := a2.Failed("appliance.service"); err != nil {
		t.Fatal(err)
	}
	if a2.Host.Exists(FallbackSite) || len(rec2.Recorded()) != 0 {
		t.Errorf("fallback written for a configured nginx: %v", rec2.Recorded())
	}

	// prepare-appliance's nginx step removes the fallback site.
	if err := a.removeFallbackSite(); err != nil {
		t.Fatal(err)
	}
	if a.Host.Exists(FallbackSite) || a.Host.Exists(FallbackEnabled) {
		t.Error("fallback site not removed")
	}
}
