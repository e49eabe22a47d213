package prepare

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"

	"software.sslmate.com/src/go-pkcs12"
)

const clientCertEnv = "#cloud-config\nappliance:\n  domain: ecs.example.org\n"

// The CA is created at the first activation (key 0600) and kept by the
// next runs; nginx verifies client certificates against it and its CRL,
// optionally unless appliance.ssl.client_certs_mandatory.
func TestClientCACreatedAndKept(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, clientCertEnv)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	caPEM := read(t, a, ClientCACert)
	if m := mode(t, a, ClientCAKey); m != 0o600 {
		t.Errorf("CA key mode %o", m)
	}
	if m := mode(t, a, ClientCAIndex); m != 0o600 {
		t.Errorf("index mode %o", m)
	}
	site := read(t, a, NginxSite)
	for _, want := range []string{"ssl_client_certificate " + ClientCACert + ";", "ssl_crl " + ClientCACRL + ";",
		"ssl_verify_client optional;", "X-Ssl-Client-Verify $ssl_client_verify"} {
		if !strings.Contains(site, want) {
			t.Errorf("site lacks %q", want)
		}
	}
	crl := read(t, a, ClientCACRL)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if read(t, a, ClientCACert) != caPEM || read(t, a, ClientCACRL) != crl {
		t.Error("the CA or its CRL changed on the second run")
	}
	activate(t, a, clientCertEnv+"  ssl:\n    client_certs_mandatory: true\n")
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if site := read(t, a, NginxSite); !strings.Contains(site, "ssl_verify_client on;") {
		t.Errorf("mandatory: %s", site)
	}
	if read(t, a, ClientCACert) != caPEM {
		t.Error("the CA changed")
	}
	// A CA the application put there (another key): kept, used by
	// nginx, reported.
	appCert, _, err := SelfSigned([]string{"ECS application CA"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keep := read(t, a, ClientCACert)
	put(t, a, ClientCACert, appCert, 0o644)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatalf("application's CA: %v", err)
	}
	if read(t, a, ClientCACert) != string(appCert) || !strings.Contains(read(t, a, NginxSite), "ssl_client_certificate "+ClientCACert) {
		t.Error("the application's CA was replaced or dropped")
	}
	if st, _ := status.Read(a.Host); !strings.Contains(st.Warnings["client-ca"], "is not the agent's") {
		t.Errorf("warnings %v", st.Warnings)
	}
	if _, _, err := a.LoadClientCA(); err == nil {
		t.Error("client-cert commands work with a foreign CA")
	}
	put(t, a, ClientCACert, []byte(keep), 0o644)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st, _ := status.Read(a.Host); st.Warnings["client-ca"] != "" {
		t.Errorf("stale warning %v", st.Warnings)
	}
	// Half a CA is not replaced silently.
	if err := a.Host.Remove(ClientCACert); err != nil {
		t.Fatal(err)
	}
	err = a.PrepareAppliance(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is incomplete") {
		t.Errorf("incomplete CA: %v", err)
	}
}

func newClientCATest(t *testing.T) (*Agent, *ClientCA) {
	t.Helper()
	a, _ := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, clientCertEnv)
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	ca, unlock, err := a.LoadClientCA()
	if err != nil {
		t.Fatal(err)
	}
	unlock() // the chain takes the lock again
	return a, ca
}

// A certificate is issued as a PKCS#12 file that opens with its transport
// password (Go and, when installed, OpenSSL), chains to the CA for client
// authentication; revoking it puts its serial on the CA-signed CRL.
func TestClientCertCreateAndRevoke(t *testing.T) {
	a, ca := newClientCATest(t)
	now := time.Now()
	p12, pw, issued, err := ca.Create(ClientCertRequest{Email: "office@ek.example.org", Name: "Office 1", Days: 7}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(pw) != 23 || strings.Count(pw, "-") != 3 {
		t.Errorf("password %q", pw)
	}
	if _, _, _, err := pkcs12.DecodeChain(p12, pw+"x"); err == nil {
		t.Error("wrong password accepted")
	}
	key, cert, chain, err := pkcs12.DecodeChain(p12, pw)
	if err != nil {
		t.Fatal(err)
	}
	if key == nil || len(chain) != 1 || !chain[0].Equal(ca.Cert()) {
		t.Errorf("key %T, chain %d", key, len(chain))
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify: %v", err)
	}
	if cert.Subject.CommonName != "Office 1" || !slices.Equal(cert.EmailAddresses, []string{"office@ek.example.org"}) ||
		cert.NotAfter.Sub(now) > 7*24*time.Hour+time.Minute || cert.NotAfter.Sub(now) < 7*24*time.Hour-time.Minute {
		t.Errorf("cert %v %v %v", cert.Subject, cert.EmailAddresses, cert.NotAfter)
	}
	if issued.Serial != strings.ToUpper(cert.SerialNumber.Text(16)) {
		t.Errorf("serial %s vs %s", issued.Serial, cert.SerialNumber.Text(16))
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		f := filepath.Join(t.TempDir(), "c.p12")
		if err := WriteClientP12(f, p12); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(openssl, "pkcs12", "-in", f, "-passin", "pass:"+pw, "-nokeys", "-clcerts").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Office 1") {
			t.Errorf("openssl pkcs12: %v\n%s", err, out)
		}
		if err := WriteClientP12(f, p12); err == nil {
			t.Error("WriteClientP12 overwrote a file")
		}
	}
	if _, _, _, err := ca.Create(ClientCertRequest{Email: "not an address", Name: "x", Days: 7}, now); err == nil {
		t.Error("bad e-mail accepted")
	}
	other, _, _, err := ca.Create(ClientCertRequest{Email: "exec@ek.example.org", Name: "Exec", Days: 30}, now)
	if err != nil || other == nil {
		t.Fatal(err)
	}
	revoked, err := ca.Revoke(strings.ToLower(issued.Serial), now)
	if err != nil || len(revoked) != 1 || revoked[0].Serial != issued.Serial {
		t.Fatalf("revoke: %v %v", revoked, err)
	}
	if _, err := ca.Revoke(issued.Serial, now); err == nil {
		t.Error("revoked twice")
	}
	b, _ := pem.Decode([]byte(read(t, a, ClientCACRL)))
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert()); err != nil {
		t.Error(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(cert.SerialNumber) != 0 {
		t.Errorf("CRL entries %v", crl.RevokedCertificateEntries)
	}
	// The index survives a reload, with the statuses.
	ca2, err := a.loadClientCA()
	if err != nil {
		t.Fatal(err)
	}
	var st []string
	for _, c := range ca2.Issued() {
		st = append(st, c.Name+"="+c.Status(now))
	}
	if !slices.Equal(st, []string{"Office 1=revoked", "Exec=valid"}) {
		t.Errorf("statuses %v", st)
	}
	if idx := read(t, a, ClientCAIndex); strings.Contains(idx, pw) || strings.Contains(idx, "PRIVATE") {
		t.Error("the index holds a password or key")
	}
}

// The real nginx, with the rendered site: a certificate issued by the agent
// is admitted, a revoked one and one of another CA refused; without a
// certificate the request passes, unless client certificates are mandatory.
func TestNginxVerifiesClientCertificates(t *testing.T) {
	bin := nginxBin(t)
	a, ca := newClientCATest(t)
	now := time.Now()
	good := tlsCert(t, ca, "good@ek.example.org", now)
	bad := tlsCert(t, ca, "bad@ek.example.org", now)
	if _, err := ca.Revoke("bad@ek.example.org", now); err != nil {
		t.Fatal(err)
	}
	b, other := newClientCATest(t)
	_ = b
	foreign := tlsCert(t, other, "good@ek.example.org", now)

	get := func(port int, cert *tls.Certificate) int {
		t.Helper()
		cfg := &tls.Config{InsecureSkipVerify: true}
		if cert != nil {
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		var lastErr error
		for i := 0; i < 50; i++ {
			res, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/ecs-status.json", port))
			if err != nil {
				lastErr = err
				time.Sleep(100 * time.Millisecond)
				continue
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			return res.StatusCode
		}
		t.Fatalf("no answer: %v", lastErr)
		return 0
	}
	_, port, _ := startTestNginx(t, bin, a)
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want int
	}{{"issued", &good, 200}, {"none", nil, 200}, {"revoked", &bad, 400}, {"other CA", &foreign, 400}} {
		if got := get(port, tc.cert); got != tc.want {
			t.Errorf("optional, %s certificate: HTTP %d, want %d", tc.name, got, tc.want)
		}
	}

	activate(t, a, clientCertEnv+"  ssl:\n    client_certs_mandatory: true\n")
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, port, _ = startTestNginx(t, bin, a)
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want int
	}{{"issued", &good, 200}, {"none", nil, 400}, {"revoked", &bad, 400}} {
		if got := get(port, tc.cert); got != tc.want {
			t.Errorf("mandatory, %s certificate: HTTP %d, want %d", tc.name, got, tc.want)
		}
	}
}

func tlsCert(t *testing.T, ca *ClientCA, email string, now time.Time) tls.Certificate {
	t.Helper()
	p12, pw, _, err := ca.Create(ClientCertRequest{Email: email, Name: email, Days: 1}, now)
	if err != nil {
		t.Fatal(err)
	}
	key, cert, _, err := pkcs12.DecodeChain(p12, pw)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}
