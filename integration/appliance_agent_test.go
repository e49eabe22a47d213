//go:build integration

package integration

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/ecs-image/ecs-image/boottest"
)

// Subtests of TestAppliance's first boot for the agent's side of issue 15:
// client certificates, reported env keys, services on the loopback and the
// docker bridge only, the vault keys.

// httpsStatus fetches https://host/path through the forwarded port with an
// optional client certificate and returns the HTTP status.
func httpsStatus(port int, host, path string, cert *tls.Certificate) (int, error) {
	tr := boottest.Transport(boottest.Loopback(port), host)
	if cert != nil {
		tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get("https://" + host + path)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

// issueClientCert runs `ecs-agent client-cert create` in the guest and
// returns the certificate from its PKCS#12 file, opened with the printed
// transport password.
func issueClientCert(t *testing.T, run func(*testing.T, string) string, email, name string) tls.Certificate {
	t.Helper()
	file := "/root/" + strings.ReplaceAll(name, " ", "_") + ".p12"
	out := run(t, fmt.Sprintf("ecs-agent client-cert create %s '%s' -o %s 2>/dev/null", email, name, file))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || lines[0] != file || !strings.HasPrefix(lines[1], "transport password: ") {
		t.Fatalf("client-cert create printed %q", out)
	}
	if mode := strings.TrimSpace(run(t, "stat -c %a "+file)); mode != "600" {
		t.Errorf("%s mode %s", file, mode)
	}
	p12, err := base64.StdEncoding.DecodeString(strings.TrimSpace(run(t, "base64 -w0 "+file)))
	if err != nil {
		t.Fatal(err)
	}
	key, cert, _, err := pkcs12.DecodeChain(p12, strings.TrimPrefix(lines[1], "transport password: "))
	if err != nil {
		t.Fatalf("the PKCS#12 file does not open with the printed password: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// expectStatus polls until path answers want (nginx reloads asynchronously).
func expectStatus(t *testing.T, port int, host string, cert *tls.Certificate, want int, what string) {
	t.Helper()
	var got int
	var err error
	for i := 0; i < 30; i++ {
		if got, err = httpsStatus(port, host, "/ecs-status.json", cert); err == nil && got == want {
			return
		}
		time.Sleep(time.Second)
	}
	t.Errorf("%s: HTTP %d (%v), want %d", what, got, err, want)
}

// checkClientCertificates: the CA is in /data/ecs-ca (key 0600); a
// certificate issued by the agent is admitted by nginx, no certificate too
// (optional), a revoked one is refused.
func checkClientCertificates(t *testing.T, vm *applianceVM, run func(*testing.T, string) string, domain string) {
	st := strings.Fields(run(t, "stat -c '%a %U' /data/ecs-ca/ca.key.pem; stat -c %a /data/ecs-ca/crl.pem"))
	if !slices.Equal(st, []string{"600", "root", "644"}) {
		t.Errorf("CA key and CRL modes/owner %v", st)
	}
	port := vm.m.HostPort(443)
	good := issueClientCert(t, run, "office@"+domain, "Office One")
	expectStatus(t, port, domain, &good, 200, "issued certificate")
	expectStatus(t, port, domain, nil, 200, "no certificate (optional)")
	out := run(t, "ecs-agent client-cert revoke office@"+domain)
	if !strings.HasPrefix(out, "revoked ") {
		t.Errorf("revoke: %q", out)
	}
	expectStatus(t, port, domain, &good, 400, "revoked certificate")
	if list := run(t, "ecs-agent client-cert list"); !strings.Contains(list, "revoked") {
		t.Errorf("list:\n%s", list)
	}
}

// withEnvChange writes envFile changed by edit to /app/env.yml (which
// prepare-env prefers to the seed), restarts the appliance and waits for
// it; the returned function removes it and restarts again.
func withEnvChange(t *testing.T, run func(*testing.T, string) string, envFile string, edit func(root *yaml.Node)) (restore func()) {
	t.Helper()
	data, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	edit(doc.Content[0])
	out, err := yaml.Marshal(&doc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "#cloud-config\n") {
		out = append([]byte("#cloud-config\n"), out...)
	}
	p := filepath.Join(t.TempDir(), "env.yml")
	os.WriteFile(p, out, 0o600)
	ecsImage(t, "env", "validate", p)
	restart := func() {
		if out, err := runErr(run, t, "timeout 900 systemctl restart appliance"); err != nil {
			t.Fatalf("systemctl restart appliance: %v\n%s\n%s", err, out, run(t, "journalctl -b --no-pager -q -u prepare-env -u prepare-appliance -u prepare-ecs -u appliance | tail -40"))
		}
		var st struct{ State string }
		json.Unmarshal([]byte(run(t, "ecs-agent status")), &st)
		if st.State != "ready" {
			t.Fatalf("state after the restart: %q", st.State)
		}
	}
	run(t, "echo "+base64.StdEncoding.EncodeToString(out)+" | base64 -d > /app/env.yml && chmod 600 /app/env.yml")
	restart()
	return func() {
		run(t, "rm -f /app/env.yml")
		restart()
	}
}

// runErr is run without failing the test.
func runErr(run func(*testing.T, string) string, t *testing.T, cmd string) (string, error) {
	out := run(t, cmd+" 2>&1; echo \"exit=$?\"")
	i := strings.LastIndex(out, "exit=")
	if i < 0 {
		return out, fmt.Errorf("no exit status")
	}
	if code := strings.TrimSpace(out[i+len("exit="):]); code != "0" {
		return out[:i], fmt.Errorf("exit %s", code)
	}
	return out[:i], nil
}

// setPath sets the scalar at a dotted path of a mapping node, creating
// mappings on the way.
func setPath(m *yaml.Node, path string, value *yaml.Node) {
	keys := strings.Split(path, ".")
	for i, k := range keys {
		var next *yaml.Node
		for j := 0; j+1 < len(m.Content); j += 2 {
			if m.Content[j].Value == k {
				next = m.Content[j+1]
			}
		}
		if i == len(keys)-1 {
			if next != nil {
				*next = *value
			} else {
				m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, value)
			}
			return
		}
		if next == nil || next.Kind != yaml.MappingNode {
			n := &yaml.Node{Kind: yaml.MappingNode}
			if next != nil {
				*next = *n
				n = next
			} else {
				m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, n)
			}
			next = n
		}
		m = next
	}
}

// checkMandatoryCertsAndKeyReport restarts the appliance with
// appliance.ssl.client_certs_mandatory: true and an unsupported key set:
// nginx then refuses a request without a certificate and admits one with a
// new certificate; the unsupported key is reported in the journal and on
// the state (/ecs-status.json on port 80). The original env is restored
// (and the appliance restarted) at the end.
func checkMandatoryCertsAndKeyReport(t *testing.T, vm *applianceVM, run func(*testing.T, string) string, envFile, domain string) {
	restore := withEnvChange(t, run, envFile, func(root *yaml.Node) {
		setPath(root, "appliance.ssl.client_certs_mandatory", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "true"})
		setPath(root, "appliance.extra.states", &yaml.Node{Kind: yaml.ScalarNode, Value: "testing: {}\n", Style: yaml.LiteralStyle})
	})
	port := vm.m.HostPort(443)
	t.Run("client-certs-mandatory", func(t *testing.T) {
		expectStatus(t, port, domain, nil, 400, "no certificate (mandatory)")
		c := issueClientCert(t, run, "exec@"+domain, "Exec One")
		expectStatus(t, port, domain, &c, 200, "issued certificate (mandatory)")
	})
	t.Run("unsupported-keys-reported", func(t *testing.T) {
		const want = "appliance.extra.states: not supported by this image"
		if j := run(t, "journalctl -b --no-pager -q -u prepare-env"); !strings.Contains(j, want) {
			t.Errorf("journal of prepare-env lacks %q", want)
		}
		var st struct {
			Warnings map[string]string `json:"warnings"`
		}
		body := run(t, "curl -s http://127.0.0.1/ecs-status.json")
		if err := json.Unmarshal([]byte(body), &st); err != nil || !strings.Contains(st.Warnings[prepare.KeysWarning], want) {
			t.Errorf("/ecs-status.json warnings %v (%v):\n%s", st.Warnings, err, body)
		}
		if keys := run(t, "ecs-agent keys"); !strings.Contains(keys, "UNSUPPORTED") || !strings.Contains(keys, "appliance.ssl.client_certs_mandatory") {
			t.Errorf("ecs-agent keys:\n%s", keys)
		}
	})
	restore()
	expectStatus(t, port, domain, nil, 200, "no certificate after the restore (optional)")
}

// checkLoopbackAndBridgeOnly: PostgreSQL listens on the loopback and the
// docker bridge address only and admits TCP clients from the bridge only;
// postfix's 10025 and relay networks are the loopback and the bridge.
func checkLoopbackAndBridgeOnly(t *testing.T, run func(*testing.T, string) string) {
	socks := strings.Fields(run(t, "ss -ltnH | awk '{print $4}'"))
	var pg, smtp []string
	for _, s := range socks {
		switch {
		case strings.HasSuffix(s, ":5432"):
			pg = append(pg, s)
		case strings.HasSuffix(s, ":10025"):
			smtp = append(smtp, s)
		}
	}
	slices.Sort(pg)
	slices.Sort(smtp)
	if !slices.Contains(pg, "127.0.0.1:5432") || !slices.Contains(pg, "172.17.0.1:5432") ||
		slices.ContainsFunc(pg, func(s string) bool { return s != "127.0.0.1:5432" && s != "172.17.0.1:5432" && s != "[::1]:5432" }) {
		t.Errorf("PostgreSQL listens on %v, want the loopback and 172.17.0.1 only", pg)
	}
	if !slices.Equal(smtp, []string{"127.0.0.1:10025", "172.17.0.1:10025"}) {
		t.Errorf("postfix listens on %v, want 127.0.0.1:10025 and 172.17.0.1:10025", smtp)
	}
	hosts := strings.TrimSpace(run(t, "cat /etc/postgresql/*/main/pg_hba.conf | grep -E '^[[:space:]]*host' | tr -s ' \\t' ' '; true"))
	if hosts != "host ecs ecs 172.17.0.0/16 scram-sha-256" {
		t.Errorf("pg_hba TCP rules %q", hosts)
	}
	if out := run(t, "PGCONNECT_TIMEOUT=10 psql -w -h 127.0.0.1 -U ecs -d ecs -c 'select 1' 2>&1; true"); !strings.Contains(out, "no pg_hba.conf entry") {
		t.Errorf("TCP from 127.0.0.1: %q, want refused by pg_hba", out)
	}
	// The database URL over the bridge address: PostgreSQL listens there;
	// the guest's own connection comes from the bridge address (admitted)
	// or, with docker0 down, from its primary address (refused by pg_hba).
	out := strings.TrimSpace(run(t, `url=$(sed -n 's/^DATABASE_URL=//p' /app/etc/database_url.env | sed 's/@host.docker.internal:/@172.17.0.1:/'); PGCONNECT_TIMEOUT=10 psql -w "$url" -tAc 'select 42' 2>&1; true`))
	if m := regexp.MustCompile(`no pg_hba.conf entry for host "([0-9.]+)"`).FindStringSubmatch(out); out != "42" && (m == nil || strings.HasPrefix(m[1], "172.17.")) {
		t.Errorf("TCP to 172.17.0.1:5432 with the database URL: %q", out)
	}
	if n := strings.TrimSpace(run(t, "postconf -h mynetworks")); n != "127.0.0.0/8 [::1]/128 172.17.0.0/16" {
		t.Errorf("mynetworks %q", n)
	}
	if v := strings.TrimSpace(run(t, "sysctl -n net.ipv4.ip_nonlocal_bind")); v != "1" {
		t.Errorf("ip_nonlocal_bind %q", v)
	}
}

// checkVaultKeys: both vault keys are in /data/ecs-gpg (0700, the
// containers' uid 1000).
func checkVaultKeys(t *testing.T, run func(*testing.T, string) string) {
	if st := strings.TrimSpace(run(t, "stat -c '%a %u' /data/ecs-gpg")); st != "700 1000" {
		t.Errorf("/data/ecs-gpg: %s", st)
	}
	if n := strings.TrimSpace(run(t, "gpg --homedir /data/ecs-gpg --batch --with-colons --list-keys 2>/dev/null | grep -c '^pub'; true")); n != "2" {
		t.Errorf("%s public keys in /data/ecs-gpg, want 2", n)
	}
}
