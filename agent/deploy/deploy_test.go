package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pki is a throwaway CA with helpers to issue certificates.
type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &pki{c, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

var serial atomic.Int64

// issue returns a PEM certificate and key signed by the CA.
func (p *pki) issue(t *testing.T, cn string, server bool, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1) + 100), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{cn}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeRuntime is an in-memory container engine.
type fakeRuntime struct {
	mu         sync.Mutex
	containers map[string]*Container
	tags       map[string]string
	loadErr    error
	runErr     error
	loads      int
	calls      []string
	inLoad     atomic.Int32
	maxInLoad  atomic.Int32
	loadDelay  time.Duration
}

func newFake() *fakeRuntime {
	return &fakeRuntime{containers: map[string]*Container{}, tags: map[string]string{}}
}

func (f *fakeRuntime) log(s string, a ...any) {
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf(s, a...))
	f.mu.Unlock()
}

func (f *fakeRuntime) Load(ctx context.Context, archive string) (string, error) {
	n := f.inLoad.Add(1)
	defer f.inLoad.Add(-1)
	for {
		m := f.maxInLoad.Load()
		if n <= m || f.maxInLoad.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(f.loadDelay)
	f.log("load")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.loadErr != nil {
		return "", f.loadErr
	}
	f.loads++
	return fmt.Sprintf("site:v%d", f.loads), nil
}

func (f *fakeRuntime) Tag(ctx context.Context, image, tag string) error {
	f.log("tag %s %s", image, tag)
	f.mu.Lock()
	defer f.mu.Unlock()
	if src, ok := f.tags[image]; ok {
		image = src
	}
	f.tags[tag] = image
	return nil
}

func (f *fakeRuntime) Run(ctx context.Context, name, image string, args []string) error {
	f.log("run %s %s %s", name, image, strings.Join(args, " "))
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.containers[name]; ok {
		return fmt.Errorf("name %s in use", name)
	}
	if f.runErr != nil {
		f.containers[name] = &Container{Exists: true, Status: "created", Image: f.tags[image]}
		return f.runErr
	}
	f.containers[name] = &Container{Exists: true, Running: true, Status: "running", Image: f.tags[image]}
	return nil
}

func (f *fakeRuntime) set(name string, running bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[name]
	if !ok {
		return fmt.Errorf("no such container %s", name)
	}
	c.Running = running
	c.Status = map[bool]string{true: "running", false: "exited"}[running]
	return nil
}

func (f *fakeRuntime) Start(ctx context.Context, name string) error {
	f.log("start %s", name)
	return f.set(name, true)
}

func (f *fakeRuntime) Stop(ctx context.Context, name string) error {
	f.log("stop %s", name)
	return f.set(name, false)
}

func (f *fakeRuntime) Remove(ctx context.Context, name string) error {
	f.log("rm %s", name)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, name)
	return nil
}

func (f *fakeRuntime) Rename(ctx context.Context, from, to string) error {
	f.log("rename %s %s", from, to)
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[from]
	if !ok {
		return fmt.Errorf("no such container %s", from)
	}
	delete(f.containers, from)
	f.containers[to] = c
	return nil
}

func (f *fakeRuntime) RestartStack(ctx context.Context) error {
	f.log("restart-stack")
	return nil
}

func (f *fakeRuntime) Inspect(ctx context.Context, name string) (Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[name]; ok {
		return *c, nil
	}
	return Container{}, nil
}

// env is a running mTLS API server with its PKI.
type env struct {
	srv         *httptest.Server
	api         *Server
	ca          *pki
	rt          *fakeRuntime
	dir         string
	handled     atomic.Int32
	serverCA    *x509.CertPool
	serverCAPEM []byte
}

func startServer(t *testing.T, maxUpload int64) *env {
	t.Helper()
	e := &env{ca: newCA(t, "client CA"), rt: newFake(), dir: t.TempDir()}
	serverCA := newCA(t, "server CA")
	scert, skey := serverCA.issue(t, "appliance.example.org", true, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	cfg, err := ParseConfig("test", []byte(fmt.Sprintf(`{"tls_cert": %q, "tls_key": %q, "client_ca": %q, "spool_dir": %q, "max_upload_bytes": %d,
		"deployments": [{"name": "website", "args": ["-p", "80:8000"]}, {"name": "other"}, {"name": "ecs", "image": "ecs/ecs:latest"}]}`,
		writeFile(t, e.dir, "server.crt", scert), writeFile(t, e.dir, "server.key", skey),
		writeFile(t, e.dir, "ca.crt", e.ca.pem), filepath.Join(e.dir, "spool"), maxUpload)))
	if err != nil {
		t.Fatal(err)
	}
	api := NewServer(cfg, e.rt, log.New(io.Discard, "", 0))
	e.api = api
	tc, err := TLSConfig(cfg.TLSCert, cfg.TLSKey, cfg.ClientCA)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.handled.Add(1)
		api.Handler().ServeHTTP(w, r)
	}))
	e.srv.TLS = tc
	e.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	e.serverCAPEM = serverCA.pem
	e.serverCA = x509.NewCertPool()
	e.serverCA.AppendCertsFromPEM(serverCA.pem)
	return e
}

func (e *env) client(t *testing.T, certPEM, keyPEM []byte) *http.Client {
	t.Helper()
	tc := &tls.Config{RootCAs: e.serverCA, ServerName: "appliance.example.org"}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		// Always present the certificate, even when its issuer is not one
		// the server asks for (Go's default would then send none), so the
		// server's own verification is what refuses it.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
}

func (e *env) goodClient(t *testing.T) *http.Client {
	c, k := e.ca.issue(t, "deployer", false, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	return e.client(t, c, k)
}

func TestMutualTLS(t *testing.T) {
	e := startServer(t, 1<<20)
	other := newCA(t, "someone else")
	otherCert, otherKey := other.issue(t, "intruder", false, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	expCert, expKey := e.ca.issue(t, "expired", false, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	for name, c := range map[string]*http.Client{
		"no client certificate": e.client(t, nil, nil),
		"signed by another CA":  e.client(t, otherCert, otherKey),
		"expired certificate":   e.client(t, expCert, expKey),
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := c.Get(e.srv.URL + "/v1/deployments")
			if err == nil {
				resp.Body.Close()
				t.Fatalf("served with status %d", resp.StatusCode)
			}
			t.Logf("refused: %v", err)
		})
	}
	if n := e.handled.Load(); n != 0 {
		t.Fatalf("%d requests reached a handler", n)
	}
	// TLS 1.1 is refused even with a good certificate.
	c, k := e.ca.issue(t, "old", false, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	oldTLS := e.client(t, c, k)
	oldTLS.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS11
	if resp, err := oldTLS.Get(e.srv.URL + "/v1/deployments"); err == nil {
		resp.Body.Close()
		t.Fatal("TLS 1.1 accepted")
	}
	resp, err := e.goodClient(t).Get(e.srv.URL + "/v1/deployments")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []Status
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != 200 {
		t.Fatalf("status %d: %v", resp.StatusCode, err)
	}
	if len(list) != 3 || list[0].Name != "website" || list[0].Container != "ed_website" {
		t.Fatalf("list = %+v", list)
	}
	if e.handled.Load() != 1 {
		t.Fatalf("handled = %d", e.handled.Load())
	}
}

// archive builds a docker-archive-shaped tarball with extra entries.
func archive(t *testing.T, gz bool, extra ...*tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.Writer = &b
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&b)
		w = zw
	}
	tw := tar.NewWriter(w)
	add := func(h *tar.Header, data []byte) {
		h.Size = int64(len(data))
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
			data = nil
		}
		h.Mode = 0o644
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	add(&tar.Header{Name: "abc.json"}, []byte(`{"config":{}}`))
	add(&tar.Header{Name: "l1/layer.tar"}, make([]byte, 1024))
	for _, h := range extra {
		add(h, []byte("x"))
	}
	add(&tar.Header{Name: "manifest.json"}, []byte(`[{"Config":"abc.json","RepoTags":["site:latest"],"Layers":["l1/layer.tar"]}]`))
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	return b.Bytes()
}

func post(t *testing.T, c *http.Client, url string, body []byte) (int, string) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	resp, err := c.Post(url, "application/x-tar", r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func TestDeployFlow(t *testing.T) {
	e := startServer(t, 1<<20)
	c := e.goodClient(t)
	base := e.srv.URL + "/v1/deployments/website"

	// start before any load: conflict.
	if code, body := post(t, c, base+"/start", nil); code != http.StatusConflict {
		t.Fatalf("start before load: %d %s", code, body)
	}
	// First load (gzip): container runs the new image with the configured args.
	if code, body := post(t, c, base+"/load", archive(t, true)); code != 200 {
		t.Fatalf("load: %d %s", code, body)
	}
	if ct := e.rt.containers["ed_website"]; ct == nil || !ct.Running || ct.Image != "site:v1" {
		t.Fatalf("after first load: %+v", ct)
	}
	if !contains(e.rt.calls, "run ed_website ed_website:candidate -p 80:8000") {
		t.Errorf("calls: %v", e.rt.calls)
	}
	// Second load replaces it; the old container is gone.
	if code, body := post(t, c, base+"/load", archive(t, false)); code != 200 {
		t.Fatalf("load 2: %d %s", code, body)
	}
	if ct := e.rt.containers["ed_website"]; !ct.Running || ct.Image != "site:v2" || len(e.rt.containers) != 1 {
		t.Fatalf("after second load: %+v (%d containers)", ct, len(e.rt.containers))
	}
	// A load that docker refuses leaves the old container running.
	e.rt.loadErr = errors.New("invalid tar header")
	code, body := post(t, c, base+"/load", archive(t, false))
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "unchanged") {
		t.Fatalf("failed load: %d %s", code, body)
	}
	if ct := e.rt.containers["ed_website"]; !ct.Running || ct.Image != "site:v2" {
		t.Fatalf("after failed load: %+v", ct)
	}
	e.rt.loadErr = nil
	// A new container that fails to start: the old one is put back and runs.
	e.rt.runErr = errors.New("port is already allocated")
	code, body = post(t, c, base+"/load", archive(t, false))
	if code != http.StatusInternalServerError || !strings.Contains(body, "previous container was restored") {
		t.Fatalf("failed start: %d %s", code, body)
	}
	if ct := e.rt.containers["ed_website"]; ct == nil || !ct.Running || ct.Image != "site:v2" || len(e.rt.containers) != 1 {
		t.Fatalf("after failed start: %+v %v", ct, e.rt.containers)
	}
	e.rt.runErr = nil
	// stop / start / restart.
	if code, _ := post(t, c, base+"/stop", nil); code != 200 || e.rt.containers["ed_website"].Running {
		t.Fatal("stop")
	}
	if code, _ := post(t, c, base+"/start", nil); code != 200 || !e.rt.containers["ed_website"].Running {
		t.Fatal("start")
	}
	if code, _ := post(t, c, base+"/restart", nil); code != 200 || !e.rt.containers["ed_website"].Running {
		t.Fatal("restart")
	}
	// GET one deployment.
	resp, err := c.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	var st Status
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Name != "website" || !st.Current.Running || st.Image != "site:v2" || st.LastOp != "restart" {
		t.Fatalf("status %+v", st)
	}
	// Unknown deployment and action.
	if code, _ := post(t, c, e.srv.URL+"/v1/deployments/nope/load", archive(t, false)); code != 404 {
		t.Fatalf("unknown deployment: %d", code)
	}
	if code, _ := post(t, c, base+"/explode", nil); code != 404 {
		t.Fatalf("unknown action: %d", code)
	}
	// ed-daemon's short path works too.
	if code, body := post(t, c, e.srv.URL+"/v1/website/restart", nil); code != 200 {
		t.Fatalf("short path: %d %s", code, body)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestDeployStackImage: a stack image is retagged and the stack restarted;
// no container of its own runs.
func TestDeployStackImage(t *testing.T) {
	e := startServer(t, 1<<20)
	c := e.goodClient(t)
	if code, body := post(t, c, e.srv.URL+"/v1/deployments/ecs/load", archive(t, false)); code != 200 {
		t.Fatalf("load: %d %s", code, body)
	}
	if !contains(e.rt.calls, "tag site:v1 ecs/ecs:latest") || !contains(e.rt.calls, "restart-stack") {
		t.Errorf("calls: %v", e.rt.calls)
	}
	for _, call := range e.rt.calls {
		if strings.HasPrefix(call, "run ") {
			t.Errorf("a stack image ran a container: %v", e.rt.calls)
		}
	}
}

func TestLoadRejectsBadArchives(t *testing.T) {
	e := startServer(t, 64<<10)
	c := e.goodClient(t)
	url := e.srv.URL + "/v1/deployments/website/load"
	// Each refusal names its reason: a 400 for any other fault (a server
	// that refuses everything) does not pass.
	cases := map[string]struct {
		body []byte
		want string
	}{
		"dot-dot entry":    {archive(t, false, &tar.Header{Name: "../../etc/cron.d/evil"}), `entry "../../etc/cron.d/evil": ".." in path`},
		"nested dot-dot":   {archive(t, true, &tar.Header{Name: "l1/../../x"}), `entry "l1/../../x": ".." in path`},
		"absolute entry":   {archive(t, false, &tar.Header{Name: "/etc/passwd"}), `entry "/etc/passwd": absolute path`},
		"escaping symlink": {archive(t, false, &tar.Header{Name: "l1/link", Typeflag: tar.TypeSymlink, Linkname: "../../../etc"}), `l1/link: link to "../../../etc" leaves the archive`},
		"absolute symlink": {archive(t, false, &tar.Header{Name: "l1/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}), `l1/link: link to "/etc/shadow" leaves the archive`},
		"device node":      {archive(t, false, &tar.Header{Name: "dev", Typeflag: tar.TypeChar}), "dev: device or fifo entry"},
		"not a tar":        {[]byte("hello world, definitely not a tarball"), "bad image archive: "},
		"tar without manifest": {func() []byte {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			tw.WriteHeader(&tar.Header{Name: "a", Size: 1, Mode: 0o644})
			tw.Write([]byte("a"))
			tw.Close()
			return b.Bytes()
		}(), "not a docker-archive or OCI layout"},
		"empty body": {[]byte{}, "empty upload"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			code, body := post(t, c, url, tc.body)
			var msg struct{ Error string }
			json.Unmarshal([]byte(body), &msg)
			if code != http.StatusBadRequest || !strings.HasPrefix(msg.Error, "bad image archive: ") || !strings.Contains(msg.Error, tc.want) {
				t.Fatalf("%d %q, want 400 naming %q", code, body, tc.want)
			}
		})
	}
	if e.rt.loads != 0 || len(e.rt.calls) != 0 {
		t.Fatalf("runtime touched: %v", e.rt.calls)
	}
	// Over the size limit: 413, nothing loaded, nothing left in the spool.
	big := archive(t, false, &tar.Header{Name: "pad"})
	big = append(big, make([]byte, 128<<10)...)
	if code, msg := post(t, c, url, big); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversize: %d %s", code, msg)
	}
	// Chunked upload (no Content-Length) over the limit.
	req, _ := http.NewRequest(http.MethodPost, url, io.MultiReader(bytes.NewReader(big), strings.NewReader("")))
	req.ContentLength = -1
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked oversize: %d", resp.StatusCode)
	}
	entries, _ := os.ReadDir(filepath.Join(e.dir, "spool"))
	if len(entries) != 0 {
		t.Fatalf("spool not cleaned: %v", entries)
	}
	if e.rt.loads != 0 {
		t.Fatal("oversize upload loaded")
	}
}

func TestOperationsSerialisedPerDeployment(t *testing.T) {
	e := startServer(t, 1<<20)
	e.rt.loadDelay = 50 * time.Millisecond
	c := e.goodClient(t)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			post(t, c, e.srv.URL+"/v1/deployments/website/load", archive(t, false))
		}()
	}
	wg.Wait()
	if m := e.rt.maxInLoad.Load(); m != 1 {
		t.Fatalf("%d loads of one deployment ran at once", m)
	}
	if len(e.rt.containers) != 1 || e.rt.loads != 4 {
		t.Fatalf("containers %v loads %d", e.rt.containers, e.rt.loads)
	}
}

func TestParseConfig(t *testing.T) {
	for name, c := range map[string]string{
		"no deployments": `{"deployments": []}`,
		"bad name":       `{"deployments": [{"name": "../x"}]}`,
		"duplicate":      `{"deployments": [{"name": "a"}, {"name": "a"}]}`,
		"--name in args": `{"deployments": [{"name": "a", "args": ["--name", "x"]}]}`,
		"-d in args":     `{"deployments": [{"name": "a", "args": ["-d"]}]}`,
		"unknown field":  `{"deployments": [{"name": "a"}], "tls_cret": "x"}`,
		"bad image":      `{"deployments": [{"name": "a", "image": "Not An Image"}]}`,
		"image and args": `{"deployments": [{"name": "a", "image": "ecs/ecs", "args": ["-p", "1:1"]}]}`,
	} {
		if _, err := ParseConfig("c.json", []byte(c)); err == nil || !strings.HasPrefix(err.Error(), "c.json") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	cfg, err := ParseConfig("c.json", []byte(`{"deployments": [{"name": "website", "args": ["-p", "80:8000"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":8866" || cfg.ContainerPrefix != "ed_" || cfg.ClientCA != DefaultClientCA || cfg.MaxUploadBytes != DefaultMaxUpload {
		t.Errorf("defaults: %+v", cfg)
	}
}

func TestClient(t *testing.T) {
	e := startServer(t, 1<<20)
	c, k := e.ca.issue(t, "deployer", false, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	dir := t.TempDir()
	serverCAFile := writeFile(t, dir, "server-ca.crt", e.serverCAPEM)
	cl, err := NewClient(strings.TrimPrefix(e.srv.URL, "https://"), ClientOptions{
		CertFile: writeFile(t, dir, "c.crt", c), KeyFile: writeFile(t, dir, "c.key", k),
		CAFile: serverCAFile, ServerName: "appliance.example.org",
	})
	if err != nil {
		t.Fatal(err)
	}
	body := archive(t, true)
	st, err := cl.Load(context.Background(), "website", bytes.NewReader(body), int64(len(body)))
	if err != nil || !st.Current.Running {
		t.Fatalf("load: %+v %v", st, err)
	}
	list, err := cl.List(context.Background())
	if err != nil || len(list) != 3 {
		t.Fatalf("list: %v %v", list, err)
	}
	_, err = cl.Action(context.Background(), "nope", "start")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != 404 {
		t.Fatalf("unknown deployment: %v", err)
	}
	if _, err := baseURL("example.org"); err != nil {
		t.Error(err)
	}
	if u, _ := baseURL("example.org"); u != "https://example.org:8866" {
		t.Errorf("default port: %s", u)
	}
	if _, err := baseURL("http://example.org"); err == nil {
		t.Error("plain http accepted")
	}
}
