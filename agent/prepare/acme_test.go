package prepare

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/pebbletest"
	"github.com/ecs-image/ecs-image/testenv"
)

// challengeServer is the test's stand-in for nginx's port 80: a real HTTP
// server serving the agent's ACME webroot (as the rendered nginx site
// does), counting challenge requests; broken makes it answer 404.
type challengeServer struct {
	port   int
	hits   atomic.Int32
	broken atomic.Bool
}

func startChallengeServer(t *testing.T, a *Agent) *challengeServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cs := &challengeServer{port: l.Addr().(*net.TCPAddr).Port}
	files := http.FileServer(http.Dir(a.Host.Path(ACMEWebroot)))
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") || cs.broken.Load() {
			http.NotFound(w, r)
			return
		}
		cs.hits.Add(1)
		files.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return cs
}

func acmeEnv(directory string) string {
	return `#cloud-config
appliance:
  domain: ecs.example.org
  allowed_hosts: ecs.example.org www.example.org
  ssl:
    letsencrypt:
      enabled: true
      directory: ` + directory + `
ecs:
  settings: |
    DOMAIN = 'ecs.example.org'
`
}

var acmeNames = []string{"ecs.example.org", "www.example.org"}

// installed returns the installed chain.
func installed(t *testing.T, a *Agent) []*x509.Certificate {
	t.Helper()
	data := []byte(read(t, a, ServerCert))
	var chain []*x509.Certificate
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		t.Fatal("no certificate installed")
	}
	if _, err := tls.X509KeyPair([]byte(read(t, a, ServerCert)), []byte(read(t, a, ServerKey))); err != nil {
		t.Fatalf("installed key and certificate: %v", err)
	}
	return chain
}

func tlsWarningOf(t *testing.T, a *Agent) string {
	t.Helper()
	st, err := status.Read(a.Host)
	if err != nil {
		t.Fatal(err)
	}
	return st.Warnings[tlsWarning]
}

// noKeyMaterial fails if the agent's log shows a key.
func noKeyMaterial(t *testing.T, a *Agent) {
	t.Helper()
	log := a.Log.(*bytes.Buffer).String()
	for _, p := range []string{ServerKey, ACMEAccountKey} {
		data, err := a.Host.ReadFile(p)
		if err != nil {
			continue
		}
		b, _ := pem.Decode(data)
		body := strings.Join(strings.Split(strings.TrimSpace(string(data)), "\n")[1:2], "")
		if b == nil || strings.Contains(log, body) {
			t.Errorf("the log shows %s", p)
		}
	}
	if strings.Contains(log, "PRIVATE KEY") {
		t.Error("the log shows a private key")
	}
}

// The agent's ACME client against Pebble, end to end: the chain comes up
// with a self-signed certificate and starts the ACME unit; `ecs-agent acme`
// registers, orders, answers HTTP-01 from the webroot through a real HTTP
// server, finalizes and installs a chain that verifies against Pebble's
// root; it is kept while valid, renewed when less than 30 days remain, and
// a failed validation keeps the installed certificate with a warning.
func TestACMEWithPebble(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	cs := startChallengeServer(t, a)
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: cs.port})
	activate(t, a, acmeEnv(pb.Directory))
	ctx := context.Background()

	// The chain: self-signed until issued, the ACME unit started, not waited for.
	if err := a.PrepareAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	if c := installed(t, a)[0]; !selfSigned(c) || !validFor(c, acmeNames) {
		t.Fatalf("before issuance: want a self-signed certificate for %v, got issuer %q names %v", acmeNames, c.Issuer, c.DNSNames)
	}
	cmds := rec.Recorded()
	for _, want := range []string{"systemctl start --no-block " + ACMETimer, "systemctl start --no-block " + ACMEUnit} {
		if !slices.Contains(cmds, want) {
			t.Errorf("prepare-appliance did not run %q: %q", want, cmds)
		}
	}
	if site := read(t, a, NginxSite); !strings.Contains(site, "location ^~ /.well-known/acme-challenge/ {\n        root "+ACMEWebroot+";") {
		t.Errorf("nginx site does not serve the ACME webroot:\n%s", site)
	}

	// Issuance.
	if err := a.RenewCertificate(ctx, ACMEOptions{HTTPClient: pb.Client}); err != nil {
		t.Fatalf("%v\nagent log:\n%s", err, a.Log)
	}
	chain := installed(t, a)
	leaf := chain[0]
	roots := x509.NewCertPool()
	roots.AddCert(pb.Root(t))
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	for _, n := range acmeNames {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: n, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("issued certificate for %s: %v", n, err)
		}
	}
	if selfSigned(leaf) || len(chain) < 2 {
		t.Errorf("want a CA-issued chain, got %d certificates, issuer %q", len(chain), leaf.Issuer)
	}
	if n := cs.hits.Load(); n < int32(len(acmeNames)) {
		t.Errorf("the challenge server saw %d validation requests, want >= %d", n, len(acmeNames))
	}
	for p, want := range map[string]os.FileMode{ServerKey: 0o600, ACMEAccountKey: 0o600, ACMEDir: 0o700} {
		if m := mode(t, a, p); m != want {
			t.Errorf("%s mode %o, want %o", p, m, want)
		}
	}
	if left, _ := os.ReadDir(a.Host.Path(ACMEChallengeDir)); len(left) != 0 {
		t.Errorf("challenge tokens left in the webroot: %v", left)
	}
	if !slices.Contains(rec.Recorded(), "systemctl try-reload-or-restart nginx.service") {
		t.Error("nginx not reloaded after issuance")
	}
	if w := tlsWarningOf(t, a); w != "" {
		t.Errorf("warning after issuance: %q", w)
	}
	noKeyMaterial(t, a)
	accountKey := read(t, a, ACMEAccountKey)
	issued := read(t, a, ServerCert)

	// Not due: nothing requested, the certificate stays; the chain keeps it.
	if err := a.RenewCertificate(ctx, ACMEOptions{HTTPClient: pb.Client}); err != nil {
		t.Fatal(err)
	}
	if err := a.PrepareAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	if read(t, a, ServerCert) != issued {
		t.Fatal("a certificate that is not due was replaced")
	}

	// 20 days before expiry: renewed, with the same account.
	later := func() time.Time { return leaf.NotAfter.Add(-20 * 24 * time.Hour) }
	if err := a.RenewCertificate(ctx, ACMEOptions{HTTPClient: pb.Client, now: later}); err != nil {
		t.Fatalf("renewal: %v\nagent log:\n%s", err, a.Log)
	}
	renewed := installed(t, a)[0]
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 || selfSigned(renewed) {
		t.Fatal("the certificate was not renewed")
	}
	if read(t, a, ACMEAccountKey) != accountKey {
		t.Error("the account key changed")
	}
	if n := cs.hits.Load(); n < int32(2*len(acmeNames)) {
		t.Errorf("the renewal was not validated over HTTP-01 (%d requests in all)", n)
	}

	// Validation fails: the installed certificate stays, with a warning.
	cs.broken.Store(true)
	before := read(t, a, ServerCert)
	err := a.RenewCertificate(ctx, ACMEOptions{HTTPClient: pb.Client, Force: true})
	if err == nil {
		t.Fatal("issuance succeeded with a broken challenge server")
	}
	if read(t, a, ServerCert) != before {
		t.Error("a failed renewal replaced the certificate")
	}
	if w := tlsWarningOf(t, a); !strings.Contains(w, "not issued") || !strings.Contains(w, "404") || !strings.Contains(w, "serving the installed certificate") {
		t.Errorf("warning %q", w)
	}
	noKeyMaterial(t, a)

	// A fresh appliance whose first issuance fails serves the self-signed
	// certificate and shows why.
	b, _ := testAgent(t)
	fakeSystem(t, b)
	activate(t, b, acmeEnv(pb.Directory))
	if err := b.PrepareAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	selfCert := read(t, b, ServerCert)
	// b's webroot is not the one the challenge server serves: validation fails.
	cs.broken.Store(false)
	if err := b.RenewCertificate(ctx, ACMEOptions{HTTPClient: pb.Client}); err == nil {
		t.Fatal("issuance succeeded without the token being served")
	}
	if read(t, b, ServerCert) != selfCert {
		t.Error("the self-signed certificate was replaced after a failed issuance")
	}
	if w := tlsWarningOf(t, b); !strings.Contains(w, "serving the self-signed certificate") || !strings.Contains(w, "ecs.example.org") {
		t.Errorf("warning %q", w)
	}
	page := read(t, b, status.StatusPage)
	if !strings.Contains(page, "Warning (tls)") {
		t.Errorf("status page does not show the warning:\n%s", page)
	}
}

// An unreachable ACME server never blocks the chain: the appliance comes up
// with the self-signed certificate and the reason is a status warning.
func TestACMEUnreachableKeepsSelfSigned(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	dir := fmt.Sprintf("https://127.0.0.1:%d/directory", pebbletest.FreePort(t))
	activate(t, a, acmeEnv(dir))
	ctx := context.Background()
	if err := a.PrepareAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	selfCert := read(t, a, ServerCert)
	err := a.RenewCertificate(ctx, ACMEOptions{Timeout: 20 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "ACME directory: ") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("want a directory error, got %v", err)
	}
	if read(t, a, ServerCert) != selfCert || !selfSigned(installed(t, a)[0]) {
		t.Error("the self-signed certificate was replaced")
	}
	if a.Host.Exists(ACMEAccountKey) {
		t.Error("an account key was created without reaching the ACME server")
	}
	w := tlsWarningOf(t, a)
	if !strings.Contains(w, "not issued by "+dir) || !strings.Contains(w, "serving the self-signed certificate") {
		t.Errorf("warning %q", w)
	}
	if !strings.Contains(a.Log.(*bytes.Buffer).String(), "acme: warning: Let's Encrypt certificate for ecs.example.org, www.example.org not issued") {
		t.Errorf("log:\n%s", a.Log)
	}
	// Switching Let's Encrypt off clears the warning.
	activate(t, a, strings.Replace(acmeEnv(dir), "enabled: true", "enabled: false", 1))
	if err := a.PrepareAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	if w := tlsWarningOf(t, a); w != "" {
		t.Errorf("warning kept after disabling: %q", w)
	}
}

// The compat env has Let's Encrypt off: no ACME unit, no account, no
// request; in standby neither.
func TestACMEOffByDefault(t *testing.T) {
	a, rec := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, string(defaultEnvData(t)))
	ctx := context.Background()
	if err := a.PrepareAppliance(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range rec.Recorded() {
		if strings.Contains(c, "ecs-agent-acme") {
			t.Errorf("ACME unit touched: %q", c)
		}
	}
	cert := read(t, a, ServerCert)
	if err := a.RenewCertificate(ctx, ACMEOptions{Directory: "https://127.0.0.1:1/unused"}); err != nil {
		t.Fatal(err)
	}
	// Standby: nothing either, even with Let's Encrypt on.
	activate(t, a, acmeEnv("https://127.0.0.1:1/unused"))
	put(t, a, status.StandbyFlag, nil, 0o644)
	if err := a.RenewCertificate(ctx, ACMEOptions{}); err != nil {
		t.Fatal(err)
	}
	if read(t, a, ServerCert) != cert || a.Host.Exists(ACMEAccountKey) {
		t.Error("ACME ran although appliance.ssl.letsencrypt.enabled is false")
	}
}

func TestACMEDirectoryMustBeHTTPS(t *testing.T) {
	a, _ := testAgent(t)
	put(t, a, "/app/env.yml", []byte(acmeEnv("http://acme.example.org/directory")), 0o600)
	err := a.PrepareEnv(context.Background())
	if err == nil || !strings.Contains(err.Error(), "appliance.ssl.letsencrypt.directory") || !strings.Contains(err.Error(), "https") {
		t.Fatalf("want a schema error naming the field, got %v", err)
	}
}

// testCA issues certificates for the renewal decision.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, key}
}

func (ca *testCA) issue(t *testing.T, names []string, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: notAfter.Add(-90 * 24 * time.Hour), NotAfter: notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestACMERenewalDue(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	ca := newTestCA(t)
	selfPEM, _, err := SelfSigned(acmeNames, now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(selfPEM)
	self, _ := x509.ParseCertificate(b.Bytes)
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		due  bool
		why  string
	}{
		{"none", nil, true, "no usable certificate"},
		{"self-signed", self, true, "self-signed"},
		{"60 days left", ca.issue(t, acmeNames, now.Add(60*24*time.Hour)), false, "valid until 2027-01-23"},
		{"31 days left", ca.issue(t, acmeNames, now.Add(31*24*time.Hour)), false, "valid until"},
		{"29 days left", ca.issue(t, acmeNames, now.Add(29*24*time.Hour)), true, "less than 30 days"},
		{"expired", ca.issue(t, acmeNames, now.Add(-time.Hour)), true, "expires"},
		{"a name missing", ca.issue(t, acmeNames[:1], now.Add(60*24*time.Hour)), true, "does not cover"},
	} {
		due, why := ACMERenewalDue(tc.cert, acmeNames, now)
		if due != tc.due || !strings.Contains(why, tc.why) {
			t.Errorf("%s: due %v (%s), want %v (%s)", tc.name, due, why, tc.due, tc.why)
		}
	}
	// A CA whose clock is a little ahead: its fresh certificate is usable
	// (found in a guest whose clock was a second behind Pebble's host).
	ahead := ca.issue(t, acmeNames, now.Add(90*24*time.Hour+time.Second)) // NotBefore = now+1s
	if !acmeCertUsable(ahead, acmeNames, now) {
		t.Error("a certificate valid from a second ahead is not usable")
	}
	if _, err := checkIssued([][]byte{ahead.Raw, ca.cert.Raw}, ahead.PublicKey, acmeNames, now); err != nil {
		t.Errorf("checkIssued, clock a second behind: %v", err)
	}
	if _, err := checkIssued([][]byte{ahead.Raw, ca.cert.Raw}, ahead.PublicKey, acmeNames, now.Add(-2*time.Hour)); err == nil {
		t.Error("checkIssued accepts a certificate valid only in 2 hours")
	}
	// The chain keeps a CA-issued certificate until it expires, even when
	// it is due; a self-signed one is never "usable" as an ACME certificate.
	if !acmeCertUsable(ca.issue(t, acmeNames, now.Add(29*24*time.Hour)), acmeNames, now) || acmeCertUsable(self, acmeNames, now) ||
		acmeCertUsable(ca.issue(t, acmeNames, now.Add(-time.Hour)), acmeNames, now) {
		t.Error("acmeCertUsable")
	}
}

// The rendered nginx site answers HTTP-01 from the ACME webroot on port 80
// and still redirects everything else to HTTPS. Needs an nginx binary
// ($ECS_TEST_NGINX or nginx in PATH; the appliance's package is Debian's
// nginx); it runs unprivileged on loopback ports with the site's paths
// moved under the test root.
func TestNginxServesACMEChallenge(t *testing.T) {
	bin := nginxBin(t)
	a, _ := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, acmeEnv("https://acme.example.org/directory"))
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	httpPort, _, ngx := startTestNginx(t, bin, a)
	token := "Xm1lq2Zf0Tt4-_abcdefgh"
	if _, err := a.Host.WriteFile(ACMEChallengeDir+"/"+token, []byte(token+".keyauth"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	noRedirect := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(p string) (*http.Response, string) {
		t.Helper()
		for i := 0; ; i++ {
			res, err := noRedirect.Get(base + p)
			if err != nil {
				ngx.Exited(t)
				if i > 50 {
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			return res, string(body)
		}
	}
	res, body := get("/.well-known/acme-challenge/" + token)
	if res.StatusCode != 200 || body != token+".keyauth" || res.Header.Get("Content-Type") != "text/plain" {
		t.Errorf("token: %s %q %q", res.Status, res.Header.Get("Content-Type"), body)
	}
	if res, _ := get("/.well-known/acme-challenge/missing"); res.StatusCode != 404 {
		t.Errorf("missing token: %s", res.Status)
	}
	if res, _ := get("/index.html"); res.StatusCode != 301 || !strings.HasPrefix(res.Header.Get("Location"), "https://") {
		t.Errorf("other paths: %s %q", res.Status, res.Header.Get("Location"))
	}
}

// The appliance's site logs its requests and errors to the journal's
// syslog socket, tagged nginx, not to /var/log/nginx (manual §4.7: "all
// logging (except postgres) is going through journald", "journalctl -u
// nginx"): a request to the real nginx arrives there as a syslog line.
func TestNginxLogsToTheJournal(t *testing.T) {
	bin := nginxBin(t)
	a, _ := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, siteEnv)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	site := read(t, a, NginxSite)
	for _, want := range []string{"access_log syslog:server=unix:/dev/log,", "error_log syslog:server=unix:/dev/log,"} {
		if n := strings.Count(site, want); n != 2 {
			t.Errorf("%d servers with %q, want both", n, want)
		}
	}
	sock := a.Host.Path(NginxSyslog)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	httpPort, _, ngx := startTestNginx(t, bin, a)
	noRedirect := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i := 0; ; i++ {
		res, err := noRedirect.Get(fmt.Sprintf("http://127.0.0.1:%d/journal-check", httpPort))
		if err == nil {
			res.Body.Close()
			break
		}
		ngx.Exited(t)
		if i > 50 {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("nothing logged to the syslog socket: %v", err)
	}
	line := string(buf[:n])
	if !regexp.MustCompile(`^<\d+>\w{3} [ \d]\d \d\d:\d\d:\d\d nginx: `).MatchString(line) || !strings.Contains(line, `"GET /journal-check HTTP/1.1" 301`) {
		t.Errorf("syslog line %q, want a tagged nginx access line for GET /journal-check", line)
	}
}

// Names Let's Encrypt cannot issue for (the test appliances' *.ecs.test)
// are refused before any request: no traffic, the reason as the warning.
func TestACMEReservedNamesNotRequested(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, "#cloud-config\nappliance:\n  domain: a.ecs.test\n  ssl:\n    letsencrypt:\n      enabled: true\n")
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	var served atomic.Int32
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		served.Add(1)
		return nil, fmt.Errorf("no request expected, got %s", r.URL)
	})}
	err := a.RenewCertificate(context.Background(), ACMEOptions{HTTPClient: hc})
	if err == nil || !strings.Contains(err.Error(), "a.ecs.test is a reserved name (test)") || served.Load() != 0 {
		t.Fatalf("err %v, %d requests", err, served.Load())
	}
	if w := tlsWarningOf(t, a); !strings.Contains(w, "not issued by "+LetsEncryptDirectory) || !strings.Contains(w, "reserved name") {
		t.Errorf("warning %q", w)
	}
	for _, tc := range []struct {
		dir   string
		names []string
		ok    bool
	}{
		{LetsEncryptDirectory, []string{"ecs.example.at", "www.ecs.example.at"}, true},
		{LetsEncryptDirectory, []string{"ecs.example.at", "intranet"}, false},
		{"https://acme-staging-v02.api.letsencrypt.org/directory", []string{"ECS.Example.ORG."}, false},
		{LetsEncryptDirectory, []string{"printer.local"}, false},
		{"https://pebble.test:14000/dir", []string{"a.ecs.test"}, true},
	} {
		if err := checkPublicNames(tc.dir, tc.names); (err == nil) != tc.ok {
			t.Errorf("%s %v: %v", tc.dir, tc.names, err)
		}
	}
}

// nginxBin returns the nginx binary for tests ($ECS_TEST_NGINX or nginx in
// PATH); without one the test skips, in CI it fails.
func nginxBin(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("ECS_TEST_NGINX"); bin != "" {
		return bin
	}
	return testenv.Tool(t, "nginx", "make deps, or set ECS_TEST_NGINX to an nginx binary")
}

// startTestNginx runs nginx unprivileged with the agent's rendered site,
// its ports moved to free loopback ports and its paths under the test root.
func startTestNginx(t *testing.T, bin string, a *Agent) (httpPort, httpsPort int, ngx *pebbletest.Process) {
	t.Helper()
	httpPort, httpsPort = pebbletest.FreePort(t), pebbletest.FreePort(t)
	var kept []string
	for _, l := range strings.Split(read(t, a, NginxSite), "\n") {
		if !strings.Contains(l, "listen [::]") {
			kept = append(kept, l)
		}
	}
	site := strings.Join(kept, "\n")
	for old, repl := range map[string]string{
		"listen 80 ":  fmt.Sprintf("listen 127.0.0.1:%d ", httpPort),
		"listen 443 ": fmt.Sprintf("listen 127.0.0.1:%d ", httpsPort),
	} {
		if !strings.Contains(site, old) {
			t.Fatalf("site has no %q", old)
		}
		site = strings.ReplaceAll(site, old, repl)
	}
	for _, p := range []string{ACMEWebroot, status.StateFile, filepath.Dir(status.StatusPage), ServerCert, ServerKey, ClientCACert, ClientCACRL} {
		site = strings.ReplaceAll(site, " "+p, " "+a.Host.Path(p))
	}
	// The journal's syslog socket, under the test root too (nothing
	// listens there unless the test does).
	site = strings.ReplaceAll(site, "unix:"+NginxSyslog+",", "unix:"+a.Host.Path(NginxSyslog)+",")
	dir := t.TempDir()
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr;
events {}
http {
    access_log off;
    types { text/html html; }
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, site)
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ngx = pebbletest.StartProcess(t, nil, bin, "-p", dir, "-c", confFile, "-e", "stderr")
	return httpPort, httpsPort, ngx
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
