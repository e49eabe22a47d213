package discover

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/testenv"
	"github.com/kdomanski/iso9660"
)

const envYML = "#cloud-config\nappliance:\n  domain: %s\n"

func envFor(domain string) []byte { return []byte(strings.Replace(envYML, "%s", domain, 1)) }

// newRoot returns a temp root with no sources, and a config that disables
// the network sources.
func newRoot(t *testing.T) (string, Config) {
	t.Helper()
	root := t.TempDir()
	return root, Config{Host: host.New(root, &host.Recorder{}), EC2URL: "-", GCEURL: "-", Timeout: 2 * time.Second}
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func find(t *testing.T, cfg Config) *Result {
	t.Helper()
	res, err := Find(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Find: %v (%s)", err, res.Summary())
	}
	return res
}

func seed(t *testing.T, format cidata.Format, domain string) string {
	t.Helper()
	img, err := cidata.Build(cidata.Options{Format: format, UserData: envFor(domain)})
	if err != nil {
		t.Fatalf("cidata.Build(%s): %v", format, err)
	}
	p := filepath.Join(t.TempDir(), string(format)+".img")
	write(t, p, img)
	return p
}

func TestNothingFound(t *testing.T) {
	_, cfg := newRoot(t)
	res, err := Find(context.Background(), cfg)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if len(res.Attempts) != 6 {
		t.Fatalf("attempts = %v", res.Attempts)
	}
	for _, a := range res.Attempts {
		if a.Result != "absent" {
			t.Errorf("%s: %s, want absent", a.Source, a.Result)
		}
	}
}

func TestEnvVarWinsOverLocalFile(t *testing.T) {
	root, cfg := newRoot(t)
	write(t, filepath.Join(root, "srv/site.yml"), envFor("env.example.org"))
	write(t, filepath.Join(root, "app/env.yml"), envFor("local.example.org"))
	cfg.EnvYML = "/srv/site.yml"
	res := find(t, cfg)
	if res.Source != "env:/srv/site.yml" || !bytes.Contains(res.Data, []byte("env.example.org")) {
		t.Fatalf("got %s: %s", res.Source, res.Data)
	}
	// $ENV_YML naming a missing file falls through to /app/env.yml.
	cfg.EnvYML = "/srv/missing.yml"
	if res := find(t, cfg); res.Source != "file:/app/env.yml" {
		t.Fatalf("source = %s", res.Source)
	}
}

func TestBrokenAndEmptyLocalFallThrough(t *testing.T) {
	root, cfg := newRoot(t)
	// A directory where the file should be: broken.
	if err := os.MkdirAll(filepath.Join(root, "app/env.yml"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Devices = []string{seed(t, cidata.NoCloud, "iso.example.org")}
	res := find(t, cfg)
	if !strings.HasPrefix(res.Source, "cidata:") {
		t.Fatalf("source = %s (%s)", res.Source, res.Summary())
	}
	if !strings.HasPrefix(res.Attempts[1].Result, "error:") {
		t.Errorf("broken /app/env.yml: %s", res.Attempts[1].Result)
	}
	// Present but empty: falls through too.
	os.Remove(filepath.Join(root, "app/env.yml"))
	write(t, filepath.Join(root, "app/env.yml"), []byte("  \n"))
	res = find(t, cfg)
	if res.Attempts[1].Result != "empty" || !strings.HasPrefix(res.Source, "cidata:") {
		t.Fatalf("%s -> %s", res.Summary(), res.Source)
	}
}

func TestCidataISOByLabelLink(t *testing.T) {
	root, cfg := newRoot(t)
	iso := seed(t, cidata.NoCloud, "iso.example.org")
	// The udev by-label link, as on a booted appliance.
	if err := os.MkdirAll(filepath.Join(root, "dev/disk/by-label"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(iso, filepath.Join(root, "dev/disk/by-label/cidata")); err != nil {
		t.Fatal(err)
	}
	res := find(t, cfg)
	if res.Source != "cidata:/dev/disk/by-label/cidata (iso9660)" {
		t.Fatalf("source = %q", res.Source)
	}
	if want := envFor("iso.example.org"); !bytes.Equal(res.Data, want) {
		t.Fatalf("data = %q, want %q", res.Data, want)
	}
}

func TestCidataBySysClassBlockScan(t *testing.T) {
	root, cfg := newRoot(t)
	// /sys/class/block lists vda (no filesystem) and sr0 (the seed).
	for _, n := range []string{"vda", "sr0"} {
		if err := os.MkdirAll(filepath.Join(root, "sys/class/block", n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(root, "dev/vda"), make([]byte, 64<<10))
	img, _ := os.ReadFile(seed(t, cidata.NoCloud, "scan.example.org"))
	write(t, filepath.Join(root, "dev/sr0"), img)
	res := find(t, cfg)
	if res.Source != "cidata:/dev/sr0 (iso9660)" || !bytes.Contains(res.Data, []byte("scan.example.org")) {
		t.Fatalf("source = %q", res.Source)
	}
}

func TestCidataVFAT(t *testing.T) {
	_, cfg := newRoot(t)
	cfg.Devices = []string{seed(t, cidata.VFAT, "fat.example.org")}
	res := find(t, cfg)
	if !strings.HasSuffix(res.Source, "(vfat)") || !bytes.Equal(res.Data, envFor("fat.example.org")) {
		t.Fatalf("source = %q data = %q", res.Source, res.Data)
	}
}

// A seed made by cloud-init's own tool (genisoimage, and mkfs.vfat+mcopy).
func TestCloudLocaldsSeeds(t *testing.T) {
	testenv.Tools(t, "cloud-localds")
	for _, fs := range []string{"iso9660", "vfat"} {
		t.Run(fs, func(t *testing.T) {
			dir := t.TempDir()
			ud := filepath.Join(dir, "user-data")
			write(t, ud, envFor("localds.example.org"))
			img := filepath.Join(dir, "seed.img")
			if out, err := exec.Command("cloud-localds", "-f", fs, img, ud).CombinedOutput(); err != nil {
				t.Fatalf("cloud-localds -f %s: %v: %s", fs, err, out)
			}
			_, cfg := newRoot(t)
			cfg.Devices = []string{img}
			res := find(t, cfg)
			if !bytes.Equal(res.Data, envFor("localds.example.org")) {
				t.Fatalf("%s: data = %q", res.Source, res.Data)
			}
		})
	}
}

func TestConfigDrive(t *testing.T) {
	_, cfg := newRoot(t)
	cfg.Devices = []string{seed(t, cidata.ConfigDrive, "os.example.org")}
	res := find(t, cfg)
	if !strings.HasPrefix(res.Source, "config-2:") || !bytes.Equal(res.Data, envFor("os.example.org")) {
		t.Fatalf("source = %q data = %q", res.Source, res.Data)
	}
	if res.Attempts[2].Result != "absent" {
		t.Errorf("cidata attempt: %s", res.Attempts[2].Result)
	}
}

// A cidata drive without user-data falls through to the next source.
func TestCidataWithoutUserDataFallsThrough(t *testing.T) {
	w, err := iso9660.NewWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cleanup()
	if err := w.AddFile(strings.NewReader("instance-id: x\n"), "meta-data"); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := w.WriteTo(&b, "cidata"); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.iso")
	write(t, empty, b.Bytes())
	_, cfg := newRoot(t)
	cfg.Devices = []string{empty, seed(t, cidata.ConfigDrive, "next.example.org")}
	res := find(t, cfg)
	if res.Attempts[2].Result != "empty" || !strings.HasPrefix(res.Source, "config-2:") {
		t.Fatalf("%s -> %s", res.Summary(), res.Source)
	}
}

// A drive that claims ISO9660 but is garbage is reported and skipped.
func TestBrokenISOFallsThrough(t *testing.T) {
	bad := make([]byte, 64<<10)
	copy(bad[32768:], append([]byte{1}, []byte("CD001")...))
	copy(bad[32768+40:], "CIDATA")
	p := filepath.Join(t.TempDir(), "bad.iso")
	write(t, p, bad)
	root, cfg := newRoot(t)
	_ = root
	cfg.Devices = []string{p, seed(t, cidata.ConfigDrive, "after.example.org")}
	res := find(t, cfg)
	if !strings.HasPrefix(res.Attempts[2].Result, "error:") || !strings.HasPrefix(res.Source, "config-2:") {
		t.Fatalf("%s -> %s", res.Summary(), res.Source)
	}
}

// imds is an httptest server speaking the EC2 instance metadata protocol.
type imds struct {
	v2       bool   // offer IMDSv2 tokens
	requireT bool   // refuse v1 requests (IMDSv2 required)
	userData []byte // nil: no user-data (404)
	puts     int
}

func (m *imds) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	const token = "AQAEAtok3n=="
	switch {
	case r.URL.Path == "/latest/api/token":
		if r.Method != http.MethodPut {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		m.puts++
		if !m.v2 {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Write([]byte(token))
	case r.URL.Path == "/latest/user-data" && r.Method == http.MethodGet:
		if m.requireT && r.Header.Get("X-aws-ec2-metadata-token") != token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if m.userData == nil {
			http.NotFound(w, r)
			return
		}
		w.Write(m.userData)
	default:
		http.NotFound(w, r)
	}
}

type gce struct{ userData []byte }

func (g *gce) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Metadata-Flavor", "Google")
	if r.Header.Get("Metadata-Flavor") != "Google" {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	if r.URL.Path != "/computeMetadata/v1/instance/attributes/user-data" || g.userData == nil {
		http.NotFound(w, r)
		return
	}
	w.Write(g.userData)
}

func TestEC2IMDSv2(t *testing.T) {
	m := &imds{v2: true, requireT: true, userData: envFor("ec2.example.org")}
	srv := httptest.NewServer(m)
	defer srv.Close()
	_, cfg := newRoot(t)
	cfg.EC2URL = srv.URL
	res := find(t, cfg)
	if res.Source != "ec2-metadata (imdsv2)" || !bytes.Equal(res.Data, envFor("ec2.example.org")) || m.puts != 1 {
		t.Fatalf("source = %q puts = %d data = %q", res.Source, m.puts, res.Data)
	}
}

func TestEC2IMDSv1Fallback(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(envFor("v1.example.org"))
	zw.Close()
	srv := httptest.NewServer(&imds{v2: false, userData: gz.Bytes()})
	defer srv.Close()
	_, cfg := newRoot(t)
	cfg.EC2URL = srv.URL
	res := find(t, cfg)
	if res.Source != "ec2-metadata (imdsv1)" || !bytes.Equal(res.Data, envFor("v1.example.org")) {
		t.Fatalf("source = %q data = %q", res.Source, res.Data)
	}
}

func TestEC2WithoutUserDataFallsThroughToGCE(t *testing.T) {
	ec2 := httptest.NewServer(&imds{v2: true, requireT: true})
	defer ec2.Close()
	g := httptest.NewServer(&gce{userData: envFor("gce.example.org")})
	defer g.Close()
	_, cfg := newRoot(t)
	cfg.EC2URL, cfg.GCEURL = ec2.URL, g.URL
	res := find(t, cfg)
	if res.Attempts[4].Result != "empty" || res.Source != "gce-metadata" || !bytes.Equal(res.Data, envFor("gce.example.org")) {
		t.Fatalf("%s -> %s", res.Summary(), res.Source)
	}
}

func TestGCERejectsImpostor(t *testing.T) {
	// A server that answers without Metadata-Flavor: Google is not GCE.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(envFor("impostor.example.org"))
	}))
	defer srv.Close()
	_, cfg := newRoot(t)
	cfg.GCEURL = srv.URL
	if _, err := Find(context.Background(), cfg); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
}

func TestMetadataTimeoutFallsThrough(t *testing.T) {
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer hang.Close()
	g := httptest.NewServer(&gce{userData: envFor("gce.example.org")})
	defer g.Close()
	_, cfg := newRoot(t)
	cfg.EC2URL, cfg.GCEURL, cfg.Timeout = hang.URL, g.URL, 300*time.Millisecond
	start := time.Now()
	res := find(t, cfg)
	if res.Source != "gce-metadata" {
		t.Fatalf("%s -> %s", res.Summary(), res.Source)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestEC2ServerErrorIsReportedAndSkipped(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	_, cfg := newRoot(t)
	cfg.EC2URL = srv.URL
	res, err := Find(context.Background(), cfg)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(res.Attempts[4].Result, "HTTP 500") {
		t.Fatalf("err = %v, %s", err, res.Summary())
	}
}

func TestOrderCidataBeforeMetadata(t *testing.T) {
	srv := httptest.NewServer(&imds{v2: true, userData: envFor("ec2.example.org")})
	defer srv.Close()
	_, cfg := newRoot(t)
	cfg.EC2URL = srv.URL
	cfg.Devices = []string{seed(t, cidata.NoCloud, "iso.example.org")}
	if res := find(t, cfg); !bytes.Contains(res.Data, []byte("iso.example.org")) {
		t.Fatalf("source = %s", res.Source)
	}
}
