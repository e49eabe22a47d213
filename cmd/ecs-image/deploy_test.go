package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/deploy"
)

// memRuntime is a minimal in-memory container engine for the client test.
type memRuntime struct{ running map[string]string }

func (m *memRuntime) Load(ctx context.Context, archive string) (string, error) {
	return "site:new", nil
}
func (m *memRuntime) Tag(ctx context.Context, image, tag string) error { return nil }
func (m *memRuntime) Run(ctx context.Context, name, image string, args []string) error {
	m.running[name] = image
	return nil
}
func (m *memRuntime) Start(ctx context.Context, name string) error { return nil }
func (m *memRuntime) Stop(ctx context.Context, name string) error  { return nil }
func (m *memRuntime) Remove(ctx context.Context, name string) error {
	delete(m.running, name)
	return nil
}
func (m *memRuntime) Rename(ctx context.Context, from, to string) error {
	m.running[to] = m.running[from]
	delete(m.running, from)
	return nil
}
func (m *memRuntime) RestartStack(ctx context.Context) error { return nil }

func (m *memRuntime) Inspect(ctx context.Context, name string) (deploy.Container, error) {
	img, ok := m.running[name]
	return deploy.Container{Exists: ok, Running: ok, Image: img}, nil
}

func deployPKI(t *testing.T, dir string) (ca *x509.Certificate, caKey *ecdsa.PrivateKey, issue func(cn string, server bool) (string, string)) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	ca, _ = x509.ParseCertificate(der)
	n := int64(1)
	issue = func(cn string, server bool) (string, string) {
		n++
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tm := &x509.Certificate{SerialNumber: big.NewInt(n), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if server {
			tm.ExtKeyUsage, tm.DNSNames = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []string{cn}
		}
		d, _ := x509.CreateCertificate(rand.Reader, tm, ca, &k.PublicKey, key)
		kd, _ := x509.MarshalPKCS8PrivateKey(k)
		c := filepath.Join(dir, cn+".crt")
		kf := filepath.Join(dir, cn+".key")
		os.WriteFile(c, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d}), 0o600)
		os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
		return c, kf
	}
	os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return ca, key, issue
}

func runDeployCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd, _, err := rootCmd.Find([]string{"deploy"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"action", "cert", "key", "ca", "server-name"} {
		cmd.Flags().Set(f, "")
	}
	cmd.SetContext(context.Background())
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	defer rootCmd.SetOut(nil)
	return run(append([]string{"deploy"}, args...)), out.String()
}

func TestDeployCommand(t *testing.T) {
	dir := t.TempDir()
	_, _, issue := deployPKI(t, dir)
	srvCert, srvKey := issue("appliance.test", true)
	cliCert, cliKey := issue("operator", false)
	cfg, err := deploy.ParseConfig("test", []byte(`{"deployments": [{"name": "website"}], "spool_dir": "`+filepath.Join(dir, "spool")+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	api := deploy.NewServer(cfg, &memRuntime{running: map[string]string{}}, log.New(io.Discard, "", 0))
	srv := httptest.NewUnstartedServer(api.Handler())
	srv.TLS, err = deploy.TLSConfig(srvCert, srvKey, filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	hostArg := strings.TrimPrefix(srv.URL, "https://")
	tls := []string{"--cert", cliCert, "--key", cliKey, "--ca", filepath.Join(dir, "ca.crt"), "--server-name", "appliance.test"}

	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: 2})
	tw.Write([]byte("[]"))
	tw.Close()
	image := filepath.Join(dir, "site.tar")
	os.WriteFile(image, b.Bytes(), 0o644)

	code, out := runDeployCLI(t, append([]string{hostArg, "website", image}, tls...)...)
	if code != 0 || !strings.Contains(out, `"running": true`) || !strings.Contains(out, `"image": "site:new"`) {
		t.Fatalf("load: exit %d\n%s", code, out)
	}
	if code, out = runDeployCLI(t, append([]string{hostArg, "-", "--action", "status"}, tls...)...); code != 0 || !strings.Contains(out, `"name": "website"`) {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	if code, _ = runDeployCLI(t, append([]string{hostArg, "website", "--action", "restart"}, tls...)...); code != 0 {
		t.Fatalf("restart: exit %d", code)
	}
	// Bad input: missing flags, unknown deployment, bad archive, no action.
	if code, _ = runDeployCLI(t, hostArg, "website", image); code != 2 {
		t.Errorf("no certificate flags: exit %d", code)
	}
	if code, _ = runDeployCLI(t, append([]string{hostArg, "nope", "--action", "start"}, tls...)...); code != 2 {
		t.Errorf("unknown deployment: exit %d", code)
	}
	os.WriteFile(image, []byte("not a tarball"), 0o644)
	if code, _ = runDeployCLI(t, append([]string{hostArg, "website", image}, tls...)...); code != 2 {
		t.Errorf("bad archive: exit %d", code)
	}
	if code, _ = runDeployCLI(t, append([]string{hostArg, "website"}, tls...)...); code != 2 {
		t.Errorf("no image, no action: exit %d", code)
	}
	// A server certificate the --ca does not vouch for: refused, exit 1.
	if code, _ = runDeployCLI(t, append([]string{hostArg, "-", "--action", "status"}, "--cert", cliCert, "--key", cliKey, "--ca", cliCert, "--server-name", "appliance.test")...); code != 1 {
		t.Errorf("untrusted server: exit %d", code)
	}
}
