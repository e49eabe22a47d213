package testimage

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ecs-image/ecs-image/agent/prepare"
	"github.com/ecs-image/ecs-image/provisioners"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// server builds the real server binary once for all tests.
func server(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "testimage-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath, binErr = BuildServer(context.Background(), dir)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// readTar returns the regular files of a tarball by name.
func readTar(t *testing.T, p string) map[string][]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = data
	}
}

func TestDockerArchive(t *testing.T) {
	bin := server(t)
	out := filepath.Join(t.TempDir(), "testapp.tar")
	if err := Write(out, bin, Options{Tags: []string{"ecs/testapp:v2"}, Version: "2", Port: 9090}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %o, want 644", st.Mode().Perm())
	}
	files := readTar(t, out)
	var man []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &man); err != nil {
		t.Fatalf("manifest.json: %v (%q)", err, files["manifest.json"])
	}
	if len(man) != 1 || len(man[0].Layers) != 1 || strings.Join(man[0].RepoTags, ",") != "ecs/testapp:v2" {
		t.Fatalf("manifest.json: %+v", man)
	}
	var cf v1.ConfigFile
	if err := json.Unmarshal(files[man[0].Config], &cf); err != nil {
		t.Fatalf("config %s: %v", man[0].Config, err)
	}
	if got := strings.Join(cf.Config.Entrypoint, " "); got != BinaryPath {
		t.Errorf("Entrypoint %q", got)
	}
	if _, ok := cf.Config.ExposedPorts["9090/tcp"]; !ok || len(cf.Config.ExposedPorts) != 1 {
		t.Errorf("ExposedPorts %v", cf.Config.ExposedPorts)
	}
	if got := strings.Join(cf.Config.Env, " "); got != "PORT=9090 APP_VERSION=2" {
		t.Errorf("Env %q", got)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.RootFS.DiffIDs) != 1 {
		t.Errorf("os %q arch %q diff_ids %v", cf.OS, cf.Architecture, cf.RootFS.DiffIDs)
	}

	// The layer holds the binary, executable, byte for byte.
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %v %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "testapp" || h.Mode != 0o755 {
		t.Errorf("layer entry %q mode %o", h.Name, h.Mode)
	}
	got, _ := io.ReadAll(tr)
	want, _ := os.ReadFile(bin)
	if string(got) != string(want) {
		t.Errorf("layer binary differs from the built one (%d vs %d bytes)", len(got), len(want))
	}
	if _, err := tr.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("more than one file in the layer: %v", err)
	}

	// What the appliance's parts read from it: the agent's web port
	// detection and the builder's archive check.
	ic, err := prepare.ReadImageConfig(out)
	if err != nil || len(ic.ExposedTCP) != 1 || ic.ExposedTCP[0] != 9090 {
		t.Errorf("agent ReadImageConfig: %+v %v", ic, err)
	}
	c := &provisioners.Containers{Images: []provisioners.ContainerImage{{Path: out}}}
	if errs := c.Check(""); len(errs) != 0 {
		t.Errorf("containers provisioner rejects it: %v", errs)
	}
}

func TestReproducibleAndVersions(t *testing.T) {
	bin := server(t)
	digest := func(o Options) v1.Hash {
		img, err := Image(bin, o)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if a, b := digest(Options{}), digest(Options{}); a != b {
		t.Errorf("same input, different digests %s %s", a, b)
	}
	if a, b := digest(Options{Version: "1"}), digest(Options{Version: "2"}); a == b {
		t.Errorf("versions 1 and 2 have the same digest %s", a)
	}
	if _, err := Image(bin, Options{Port: 70000}); err == nil {
		t.Error("port 70000 accepted")
	}
	if err := Write(filepath.Join(t.TempDir(), "x.tar"), bin, Options{Tags: []string{"Bad Tag!"}}); err == nil {
		t.Error("bad tag accepted")
	}
}

func TestWriteLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "x.tar")
	if err := Write(out, filepath.Join(dir, "missing"), Options{}); err == nil {
		t.Fatal("missing binary accepted")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestServer runs the real binary the image carries.
func TestServer(t *testing.T) {
	bin := server(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin)
	cmd.Env = []string{fmt.Sprintf("PORT=%d", port), "APP_VERSION=7", "ECS_FOO=secret", "APPLIANCE_DOMAIN=x.test", "OTHER=1"}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	go func() { // drain its log
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			t.Log(s.Text())
		}
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	get := func(p string, hdr map[string]string) (string, http.Header) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			req, _ := http.NewRequest("GET", base+p, nil)
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("GET %s: %d", p, resp.StatusCode)
				}
				return string(b), resp.Header
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	body, h := get("/", map[string]string{"X-Forwarded-Proto": "https"})
	if !strings.HasPrefix(body, "ecs-testapp version=7 host=127.0.0.1:") || !strings.Contains(body, "proto=https") || h.Get("X-Testapp-Version") != "7" {
		t.Errorf("GET /: %q %v", body, h)
	}
	if body, _ := get("/env", nil); strings.TrimSpace(body) != `["APPLIANCE_DOMAIN","ECS_FOO"]` {
		t.Errorf("GET /env: %q (want names only)", body)
	}
	if body, _ := get("/healthz", nil); body != "ok\n" {
		t.Errorf("GET /healthz: %q", body)
	}
}

func TestTagParses(t *testing.T) {
	if _, err := name.NewTag(DefaultTag); err != nil {
		t.Fatal(err)
	}
}
