//go:build integration

package integration

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/pebbletest"
)

// TestACMEInGuest obtains the appliance certificate from Pebble (Let's
// Encrypt's ACME test server, on the host) with the real units in the
// local Debian base: prepare-appliance serves the self-signed certificate,
// starts ecs-agent-acme.service without waiting for it, the service answers
// HTTP-01 through the guest's real nginx on port 80 (forwarded to the port
// Pebble validates), installs the chain and reloads nginx, whose port 443
// then presents it. Pebble's CA reaches the agent the documented way
// (SSL_CERT_FILE in a drop-in). About 10 min under TCG (nginx, postfix and
// stunnel4 are installed from the mirror), so only with ECS_IT_ACME=1.
func TestACMEInGuest(t *testing.T) {
	if os.Getenv("ECS_IT_ACME") != "1" {
		t.Skip("set ECS_IT_ACME=1 to run the agent's ACME client against Pebble in a guest")
	}
	// Fail (or skip) before the boot when Pebble is missing.
	pebbletest.Tool(t, "pebble")
	pebbletest.Tool(t, "pebble-challtestsrv")
	g := bootBase(t, bootOptions{Name: "acme-it", Forwards: []int{80, 443}, Timeout: 40 * time.Minute})
	ctx, c := g.Ctx, g.C
	root := func(cmd string) string { t.Helper(); return g.Root(t, cmd) }
	put := func(remote, content string, mode os.FileMode) { t.Helper(); g.Put(t, remote, content, mode) }

	// Pebble on the host: the guest reaches it as pebble.test (10.0.2.2,
	// QEMU's alias of the host's loopback); it validates every name at
	// 127.0.0.1:<host port of the guest's port 80>.
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: g.M.HostPort(80), Names: []string{"pebble.test"}})
	guestDirectory := fmt.Sprintf("https://pebble.test:%d/dir", pb.Port)

	root("DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && " +
		"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx postfix stunnel4 >/dev/null 2>&1")
	if err := c.Upload(ctx, ecsAgentPath(), "/usr/local/bin/ecs-agent", communicator.UploadOptions{Mode: 0o755, Sudo: true}); err != nil {
		t.Fatal(err)
	}
	root("ecs-agent install-units")
	put("/etc/ecs-it/pebble.pem", string(pb.CertPEM), 0o644)
	put("/etc/systemd/system/ecs-agent-acme.service.d/pebble.conf", "[Service]\nEnvironment=SSL_CERT_FILE=/etc/ecs-it/pebble.pem\n", 0o644)
	root("echo '10.0.2.2 pebble.test' >> /etc/hosts && systemctl daemon-reload")
	const domain = "acme-it.example.org"
	put("/app/env.yml", "#cloud-config\nappliance:\n  domain: "+domain+"\n  allowed_hosts: "+domain+" www."+domain+
		"\n  ssl:\n    letsencrypt:\n      enabled: true\n      directory: "+guestDirectory+"\necs:\n  settings: |\n    DEBUG = False\n", 0o600)

	// The chain does not wait for the ACME server.
	start := time.Now()
	root("systemctl start prepare-appliance.service")
	t.Logf("prepare-appliance took %s", time.Since(start).Round(time.Second))
	start = time.Now()
	if out := root("systemctl is-active ecs-agent-acme.timer"); strings.TrimSpace(out) != "active" {
		t.Errorf("timer: %q", out)
	}

	// The service issues the certificate; nginx presents it on 443.
	names := []string{domain, "www." + domain}
	deadline := time.Now().Add(5 * time.Minute)
	var leaf *x509.Certificate
	var issued string
	for {
		out, _ := c.Output(ctx, "cat /app/etc/server.cert.pem", true)
		if b, _ := pem.Decode([]byte(out)); b != nil {
			if cert, err := x509.ParseCertificate(b.Bytes); err == nil && !strings.Contains(cert.Issuer.String(), "self-signed") {
				leaf, issued = cert, out
				break
			}
		}
		if time.Now().After(deadline) {
			j, _ := c.Output(ctx, "journalctl --no-pager -u prepare-appliance -u ecs-agent-acme | tail -40", true)
			t.Fatalf("no certificate from Pebble within 5 min; journal:\n%s", j)
		}
		time.Sleep(3 * time.Second)
	}
	t.Logf("certificate from Pebble installed %s after prepare-appliance finished", time.Since(start).Round(time.Second))
	roots := x509.NewCertPool()
	roots.AddCert(pb.Root(t))
	// The handshake verifies the chain nginx presents against Pebble's root.
	var presented *x509.Certificate
	for i := 0; ; i++ {
		conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(g.M.HostPort(443)), &tls.Config{ServerName: domain, RootCAs: roots})
		if err == nil {
			presented = conn.ConnectionState().PeerCertificates[0]
			conn.Close()
			if presented.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				break
			}
		}
		if i > 30 {
			t.Fatalf("nginx does not present the issued certificate with a chain to Pebble's root: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	for _, n := range names {
		if err := presented.VerifyHostname(n); err != nil {
			t.Error(err)
		}
	}
	if out := root("stat -c %a /app/etc/acme/account.key /app/etc/server.key.pem"); out != "600\n600\n" {
		t.Errorf("key modes: %q", out)
	}
	if out := root("ecs-agent status"); strings.Contains(out, `"tls"`) {
		t.Errorf("warning after issuance:\n%s", out)
	}

	// Not due: the next run leaves it alone.
	root("systemctl start ecs-agent-acme.service")
	if j := root("journalctl --no-pager -u ecs-agent-acme"); !strings.Contains(j, "acme: not due") {
		t.Errorf("second run:\n%s", j)
	}
	// An unreachable CA: exit 1, certificate kept, warning shown.
	if out, err := c.Output(ctx, "SSL_CERT_FILE=/etc/ecs-it/pebble.pem ecs-agent acme --force --timeout 30s --directory https://pebble.test:1/dir 2>&1", true); err == nil || !strings.Contains(out, "pebble.test:1") {
		t.Errorf("acme with an unreachable directory: %v, want a failure naming it:\n%s", err, out)
	}
	if out := root("ecs-agent status"); !strings.Contains(out, "serving the installed certificate") {
		t.Errorf("status after a failed renewal:\n%s", out)
	}
	if root("cat /app/etc/server.cert.pem") != issued {
		t.Error("certificate replaced after a failed renewal")
	}
	t.Logf("journal of ecs-agent-acme:\n%s", root("journalctl --no-pager -o cat -u ecs-agent-acme | grep -e 'acme:' -e ecs-agent-acme"))
}
