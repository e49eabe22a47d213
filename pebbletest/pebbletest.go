// Package pebbletest runs Pebble, Let's Encrypt's ACME test server, with
// pebble-challtestsrv as its DNS, for tests: every name resolves to
// 127.0.0.1 and HTTP-01 validations go to 127.0.0.1:HTTPPort.
package pebbletest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/testenv"
)

// Version is the Pebble release `make deps` installs.
const Version = "v2.10.1"

// Options configure Start.
type Options struct {
	// HTTPPort is where Pebble sends HTTP-01 validations (on 127.0.0.1).
	HTTPPort int
	// Validity of issued certificates (default 40 days).
	Validity time.Duration
	// Names of Pebble's own HTTPS certificate besides localhost.
	Names []string
}

// Server is a running Pebble.
type Server struct {
	// Directory is the ACME directory URL on localhost.
	Directory string
	// Port is the port of Directory.
	Port int
	// Client trusts Pebble's HTTPS certificate.
	Client *http.Client
	// CertPEM is Pebble's HTTPS certificate.
	CertPEM []byte
	mgmt    string
}

// Tool finds a Pebble binary in PATH or in $GOPATH/bin (where `go install`
// puts it); without it the test is skipped, in CI it fails.
func Tool(t testing.TB, name string) string {
	t.Helper()
	return testenv.Tool(t, name, fmt.Sprintf("run `make deps`: go install github.com/letsencrypt/pebble/v2/cmd/%s@%s", name, Version))
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Process is a server run for a test (Pebble's, or another such as nginx);
// its output is logged if the test fails.
type Process struct {
	name string
	out  lockedBuffer
	done chan error
}

// StartProcess runs path with args and env added to the environment
// until the test ends.
func StartProcess(t testing.TB, env []string, path string, args ...string) *Process {
	t.Helper()
	p := &Process{name: filepath.Base(path), done: make(chan error, 1)}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", p.name, p.out.String())
		}
	})
	return p
}

// Exited fails the test if the process has ended.
func (p *Process) Exited(t testing.TB) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		t.Fatalf("%s exited: %v\n%s", p.name, err, p.out.String())
	default:
	}
}

// selfSigned makes Pebble's own HTTPS certificate and key (PEM).
func selfSigned(names []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// Start runs pebble-challtestsrv and Pebble until the test ends and waits
// until both answer.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	pebbleBin := Tool(t, "pebble")
	challBin := Tool(t, "pebble-challtestsrv")
	if o.Validity == 0 {
		o.Validity = 40 * 24 * time.Hour
	}
	dir := t.TempDir()
	certPEM, keyPEM, err := selfSigned(append([]string{"localhost"}, o.Names...))
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	listen, mgmt, dnsPort := FreePort(t), FreePort(t), FreePort(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", listen),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       o.HTTPPort,
		"tlsPort":                        FreePort(t),
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"profiles": map[string]any{"default": map[string]any{
			"description": "ecs-image test", "validityPeriod": int(o.Validity.Seconds()),
		}},
	}}
	cfgData, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, cfgData, 0o644); err != nil {
		t.Fatal(err)
	}
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", dnsPort)
	chall := StartProcess(t, nil, challBin,
		"-dnsserver", dnsAddr, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-management", fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "")
	// No random validation delays, no deliberately rejected nonces: the
	// tests are about the agent, not about retries. No reuse of valid
	// authorizations: every order is validated over HTTP-01 again.
	pb := StartProcess(t, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"}, pebbleBin,
		"-config", cfgFile, "-dnsserver", dnsAddr)

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	s := &Server{
		Directory: fmt.Sprintf("https://localhost:%d/dir", listen),
		Port:      listen,
		Client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool},
		}},
		CertPEM: certPEM,
		mgmt:    fmt.Sprintf("https://localhost:%d", mgmt),
	}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", dnsAddr)
	}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		chall.Exited(t)
		pb.Exited(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		addrs, derr := resolver.LookupHost(ctx, "probe.example.org")
		cancel()
		var herr error
		if res, err := s.Client.Get(s.Directory); err != nil {
			herr = err
		} else {
			res.Body.Close()
			if res.StatusCode != 200 {
				herr = fmt.Errorf("directory: %s", res.Status)
			}
		}
		if derr == nil && slices.Contains(addrs, "127.0.0.1") && herr == nil {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble not ready: dns %v %v, directory %v", addrs, derr, herr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Root returns Pebble's (per-run) root CA.
func (s *Server) Root(t testing.TB) *x509.Certificate {
	t.Helper()
	res, err := s.Client.Get(s.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("pebble root: %s %q", res.Status, data)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
