package prepare

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/deploy"
	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/env"
)

// The deploy-api step decides which client certificates may deploy
// containers: every branch of stepDeployAPI and checkCAPEM.

// deployCA is a client CA with the PEM that goes into client_ca.
type deployCA struct {
	*testCA
	pem string
}

func newDeployCA(t *testing.T) deployCA {
	t.Helper()
	ca := newTestCA(t)
	return deployCA{ca, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}))}
}

// client issues a client certificate (with its key) signed by the CA.
func (ca deployCA) client(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// noDeployEnv is an env.yml without appliance.deploy.
const noDeployEnv = "#cloud-config\nappliance:\n  domain: ecs.example.org\n"

// deployYAML is an env.yml with appliance.deploy set from its parts (an
// empty part is left out).
func deployYAML(clientCA, port, extra string) string {
	var b strings.Builder
	b.WriteString("#cloud-config\nappliance:\n  domain: ecs.example.org\n  deploy:\n")
	if clientCA != "" {
		b.WriteString("    client_ca: |\n" + indent(strings.TrimSpace(clientCA), 6) + "\n")
	}
	if port != "" {
		b.WriteString("    port: " + port + "\n")
	}
	if extra != "" {
		b.WriteString(extra)
	} else {
		b.WriteString("    deployments:\n      - name: website\n        args: [\"-p\", \"80:8000\"]\n")
	}
	return b.String()
}

// stepDeploy runs the deploy-api step on envText and returns the commands
// it ran and its error.
func stepDeploy(t *testing.T, a *Agent, rec *host.Recorder, envText string) ([]string, error) {
	t.Helper()
	doc, err := env.Parse("env.yml", []byte(envText))
	if err != nil {
		t.Fatalf("test env: %v\n%s", err, envText)
	}
	n := len(rec.Commands)
	err = a.stepDeployAPI(context.Background(), &Env{Doc: doc})
	return slices.Clone(rec.Commands[n:]), err
}

func noDeployFiles(t *testing.T, a *Agent) {
	t.Helper()
	for _, p := range []string{DeployConfig, DeployCA, deployMarker} {
		if a.Host.Exists(p) {
			t.Errorf("%s written", p)
		}
	}
}

func TestDeployAPIWritesTrustAndConfig(t *testing.T) {
	a, rec := testAgent(t)
	ca := newDeployCA(t)
	cmds, err := stepDeploy(t, a, rec, deployYAML(ca.pem, "", "    max_upload_bytes: 1048576\n    deployments:\n      - name: website\n        args: [\"-p\", \"80:8000\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cmds, []string{"systemctl restart " + DeployUnit}) {
		t.Errorf("first write: commands %q, want a restart", cmds)
	}
	if got := read(t, a, DeployCA); strings.TrimSpace(got) != strings.TrimSpace(ca.pem) {
		t.Errorf("%s:\n%s", DeployCA, got)
	}
	if m := mode(t, a, DeployConfig); m != 0o600 {
		t.Errorf("%s mode %o, want 600", DeployConfig, m)
	}
	if m := mode(t, a, DeployCA); m != 0o644 {
		t.Errorf("%s mode %o, want 644", DeployCA, m)
	}
	if !a.Host.Exists(deployMarker) {
		t.Errorf("%s not written: a later env without appliance.deploy would leave the API up", deployMarker)
	}
	cfg, err := deploy.LoadConfig(a.Host.Path(DeployConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":8866" || cfg.ClientCA != DeployCA || cfg.TLSCert != ServerCert || cfg.TLSKey != ServerKey ||
		cfg.MaxUploadBytes != 1<<20 || len(cfg.Deployments) != 1 || cfg.Deployments[0].Name != "website" ||
		!slices.Equal(cfg.Deployments[0].Args, []string{"-p", "80:8000"}) {
		t.Errorf("config: %+v", cfg)
	}

	// The written files are what the server trusts: a client certificate
	// from the configured CA is accepted, one from another CA refused.
	certPEM, keyPEM, err := SelfSigned([]string{"ecs.example.org"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	put(t, a, ServerCert, certPEM, 0o644)
	put(t, a, ServerKey, keyPEM, 0o600)
	tc, err := deploy.TLSConfig(a.Host.Path(cfg.TLSCert), a.Host.Path(cfg.TLSKey), a.Host.Path(cfg.ClientCA))
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, tc, ca.client(t, "deployer")); err != nil {
		t.Errorf("client certificate from client_ca refused: %v", err)
	}
	if err := handshake(t, tc, newDeployCA(t).client(t, "intruder")); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("client certificate from another CA: %v, want it refused as signed by an unknown authority", err)
	}
}

// handshake runs a TLS handshake between a server with tc and a client
// presenting cert; it returns the server's error.
func handshake(t *testing.T, tc *tls.Config, cert tls.Certificate) error {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", tc)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		err = c.(*tls.Conn).Handshake()
		if err == nil {
			_, err = c.Write([]byte("ok"))
		}
		done <- err
	}()
	// GetClientCertificate presents cert even when the server's list of
	// acceptable CAs does not name its issuer (Certificates would not).
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }})
	if err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.ReadAll(c) // TLS 1.3: the server's verdict arrives after the handshake
		c.Close()
	}
	return <-done
}

func TestDeployAPIRestartsOnlyOnChange(t *testing.T) {
	a, rec := testAgent(t)
	ca := newDeployCA(t)
	step := func(envText, want string) {
		t.Helper()
		cmds, err := stepDeploy(t, a, rec, envText)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cmds, []string{"systemctl " + want + " " + DeployUnit}) {
			t.Errorf("commands %q, want systemctl %s", cmds, want)
		}
	}
	step(deployYAML(ca.pem, "", ""), "restart")
	// Unchanged: only make sure it runs.
	step(deployYAML(ca.pem, "", ""), "start")
	// The appliance certificate changed (tls step): the server reloads it.
	a.tlsChanged = true
	step(deployYAML(ca.pem, "", ""), "restart")
	a.tlsChanged = false
	// Another client CA: the old one must stop being trusted.
	other := newDeployCA(t)
	step(deployYAML(other.pem, "", ""), "restart")
	if got := read(t, a, DeployCA); strings.TrimSpace(got) != strings.TrimSpace(other.pem) {
		t.Errorf("%s still holds the old CA", DeployCA)
	}
	// Another port.
	step(deployYAML(other.pem, "9443", ""), "restart")
	cfg, err := deploy.LoadConfig(a.Host.Path(DeployConfig))
	if err != nil || cfg.Listen != ":9443" {
		t.Errorf("after the port change: %+v %v", cfg, err)
	}
	// Other deployments.
	step(deployYAML(other.pem, "9443", "    deployments:\n      - name: blog\n"), "restart")
	step(deployYAML(other.pem, "9443", "    deployments:\n      - name: blog\n"), "start")
}

func TestDeployAPIRestartFailureIsReported(t *testing.T) {
	a, rec := testAgent(t)
	rec.Responses["systemctl restart "+DeployUnit] = host.Response{Err: errors.New("unit failed")}
	_, err := stepDeploy(t, a, rec, deployYAML(newDeployCA(t).pem, "", ""))
	if err == nil || !strings.Contains(err.Error(), "unit failed") {
		t.Errorf("a failed restart: %v", err)
	}
}

func TestDeployAPIRemovedWithEnv(t *testing.T) {
	a, rec := testAgent(t)
	if _, err := stepDeploy(t, a, rec, deployYAML(newDeployCA(t).pem, "", "")); err != nil {
		t.Fatal(err)
	}
	cmds, err := stepDeploy(t, a, rec, noDeployEnv)
	if err != nil {
		t.Fatal(err)
	}
	noDeployFiles(t, a)
	if !slices.Equal(cmds, []string{"systemctl stop " + DeployUnit}) {
		t.Errorf("commands %q, want the API stopped", cmds)
	}
	// Nothing left to remove: nothing happens.
	if cmds, err := stepDeploy(t, a, rec, noDeployEnv); err != nil || len(cmds) != 0 {
		t.Errorf("second run without deploy: %v, commands %q", err, cmds)
	}
}

func TestDeployAPIRemovalFailures(t *testing.T) {
	a, rec := testAgent(t)
	if _, err := stepDeploy(t, a, rec, deployYAML(newDeployCA(t).pem, "", "")); err != nil {
		t.Fatal(err)
	}
	rec.Responses["systemctl stop "+DeployUnit] = host.Response{Err: errors.New("stop failed")}
	if _, err := stepDeploy(t, a, rec, noDeployEnv); err == nil || !strings.Contains(err.Error(), "stop failed") {
		t.Errorf("a failed stop: %v", err)
	}
	// A file that cannot be removed (a non-empty directory in its place)
	// fails the step before the API is stopped.
	put(t, a, deployMarker, []byte("x\n"), 0o644)
	if err := os.Remove(a.Host.Path(DeployCA)); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	put(t, a, DeployCA+"/x", []byte("x"), 0o644)
	n := len(rec.Commands)
	if _, err := stepDeploy(t, a, rec, noDeployEnv); err == nil {
		t.Error("a removal failure was not reported")
	}
	if len(rec.Commands) != n {
		t.Errorf("commands after a removal failure: %q", rec.Commands[n:])
	}
}

// A configuration baked into the image (no marker) is not the env's: an
// env without appliance.deploy leaves it and its service alone.
func TestDeployAPIBakedConfigKept(t *testing.T) {
	a, rec := testAgent(t)
	baked := `{"deployments": [{"name": "baked"}]}` + "\n"
	put(t, a, DeployConfig, []byte(baked), 0o600)
	put(t, a, DeployCA, []byte(newDeployCA(t).pem), 0o644)
	cmds, err := stepDeploy(t, a, rec, noDeployEnv)
	if err != nil || len(cmds) != 0 {
		t.Errorf("without appliance.deploy: %v, commands %q", err, cmds)
	}
	if read(t, a, DeployConfig) != baked || !a.Host.Exists(DeployCA) {
		t.Error("the baked configuration was changed")
	}
}

// Every invalid appliance.deploy fails the step with an error naming the
// key, writes nothing and leaves the service alone; a valid configuration
// written earlier stays in place.
func TestDeployAPIRejects(t *testing.T) {
	ca := newDeployCA(t)
	keyDER, _ := x509.MarshalECPrivateKey(ca.key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	garbled := strings.Replace(ca.pem, "\n", "\nAAAA", 2)
	for name, tc := range map[string]struct{ env, want string }{
		"no client_ca":         {deployYAML("", "", ""), "appliance.deploy.client_ca: required"},
		"client_ca not PEM":    {deployYAML("not a certificate", "", ""), "appliance.deploy.client_ca: no PEM certificate"},
		"client_ca key only":   {deployYAML(keyPEM, "", ""), "appliance.deploy.client_ca: block 1 is EC PRIVATE KEY"},
		"client_ca with a key": {deployYAML(ca.pem+keyPEM, "", ""), "appliance.deploy.client_ca: block 2 is EC PRIVATE KEY"},
		"client_ca garbled":    {deployYAML(garbled, "", ""), "appliance.deploy.client_ca: certificate 1:"},
		"port negative":        {deployYAML(ca.pem, "-1", ""), "appliance.deploy.port: -1 is not a port"},
		"port too big":         {deployYAML(ca.pem, "65536", ""), "appliance.deploy.port: 65536 is not a port"},
		"port not a number":    {deployYAML(ca.pem, "https", ""), "appliance.deploy: yaml: unmarshal errors"},
		"no deployments":       {deployYAML(ca.pem, "", "    deployments: []\n"), "deployments: at least one deployment is required"},
		"bad deployment name":  {deployYAML(ca.pem, "", "    deployments:\n      - name: ../etc\n"), `deployments[0].name: "../etc" must match`},
		"deployment sets name": {deployYAML(ca.pem, "", "    deployments:\n      - name: web\n        args: [--name=x]\n"), "deployments[0].args: --name is set by the agent"},
	} {
		t.Run(name, func(t *testing.T) {
			a, rec := testAgent(t)
			cmds, err := stepDeploy(t, a, rec, tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if len(cmds) != 0 {
				t.Errorf("commands %q", cmds)
			}
			noDeployFiles(t, a)

			// Over a valid configuration: kept, the service not touched.
			good := deployYAML(ca.pem, "", "")
			if _, err := stepDeploy(t, a, rec, good); err != nil {
				t.Fatal(err)
			}
			before := read(t, a, DeployConfig) + read(t, a, DeployCA)
			cmds, err = stepDeploy(t, a, rec, tc.env)
			if err == nil || len(cmds) != 0 {
				t.Errorf("over a valid config: error %v, commands %q", err, cmds)
			}
			if after := read(t, a, DeployConfig) + read(t, a, DeployCA); after != before {
				t.Error("the valid configuration was changed by an invalid one")
			}
		})
	}
}

func TestCheckCAPEM(t *testing.T) {
	ca, other := newDeployCA(t), newDeployCA(t)
	for _, ok := range []string{
		ca.pem,
		ca.pem + other.pem,
		"# the deploy CA\n" + ca.pem + "trailing text\n",
	} {
		if err := checkCAPEM(ok); err != nil {
			t.Errorf("checkCAPEM(%.40q): %v", ok, err)
		}
	}
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})
	for in, want := range map[string]string{
		"":                   "no PEM certificate",
		"MIIB":               "no PEM certificate",
		ca.pem + string(bad): "certificate 2: x509:",
		string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})): "block 1 is PUBLIC KEY, not CERTIFICATE",
	} {
		if err := checkCAPEM(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkCAPEM(%.40q) = %v, want %q", in, err, want)
		}
	}
}

// The step runs in prepare-appliance's chain: an invalid client_ca fails
// prepare-appliance naming the key.
func TestPrepareApplianceFailsOnBadClientCA(t *testing.T) {
	a, _ := testAgent(t)
	fakeSystem(t, a)
	activate(t, a, deployYAML("not a certificate", "", ""))
	err := a.PrepareAppliance(context.Background())
	if err == nil || !strings.Contains(err.Error(), "appliance.deploy.client_ca") {
		t.Errorf("PrepareAppliance: %v", err)
	}
	noDeployFiles(t, a)
}

// A file that cannot be written (a directory in its place) fails the step
// without touching the service.
func TestDeployAPIWriteFailures(t *testing.T) {
	ca := newDeployCA(t)
	for _, p := range []string{DeployCA, DeployConfig, deployMarker} {
		t.Run(p, func(t *testing.T) {
			a, rec := testAgent(t)
			put(t, a, p+"/x", []byte("x"), 0o644)
			cmds, err := stepDeploy(t, a, rec, deployYAML(ca.pem, "", ""))
			if err == nil || !strings.Contains(err.Error(), p) {
				t.Errorf("error %v, want one naming %s", err, p)
			}
			if len(cmds) != 0 {
				t.Errorf("commands %q", cmds)
			}
		})
	}
}
