package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/qemuimg"
)

// testImage makes a small real qcow2 image with qemu-img and returns its bytes.
func testImage(t *testing.T) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// server serves files from a map and counts requests per path.
type server struct {
	*httptest.Server
	files    map[string][]byte
	requests atomic.Int64
}

func newServer(t *testing.T, files map[string][]byte) *server {
	s := &server{files: files}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		data, ok := s.files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Write(data)
	}))
	t.Cleanup(s.Close)
	return s
}

func testCache(t *testing.T) *Cache { return &Cache{Dir: filepath.Join(t.TempDir(), "images")} }

// assertEmptyCache checks that no index entry and no image file exist and
// that tmp/ holds no leftovers.
func assertEmptyCache(t *testing.T, c *Cache) {
	t.Helper()
	for _, pat := range []string{"index/*", "sha256-*", "tmp/*"} {
		m, _ := filepath.Glob(filepath.Join(c.Dir, pat))
		if len(m) > 0 {
			t.Errorf("cache not empty: %v", m)
		}
	}
}

func TestFetchGoodChecksum(t *testing.T) {
	img := testImage(t)
	s := newServer(t, map[string][]byte{"/base.qcow2": img})
	c := testCache(t)
	e, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2", Checksum: "sha256:" + sha256hex(img), Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(c.Path(e))
	if err != nil {
		t.Fatal(err)
	}
	if sha256hex(got) != sha256hex(img) || e.Digest != "sha256:"+sha256hex(img) || e.Format != "qcow2" {
		t.Fatalf("cached file differs: entry %+v", e)
	}
	if !strings.HasSuffix(c.Path(e), "sha256-"+sha256hex(img)+".qcow2") {
		t.Errorf("cache path not keyed by digest: %s", c.Path(e))
	}
	if m, _ := filepath.Glob(filepath.Join(c.Dir, "tmp/*")); len(m) > 0 {
		t.Errorf("leftovers in tmp: %v", m)
	}
}

func TestFetchBadChecksum(t *testing.T) {
	img := testImage(t)
	s := newServer(t, map[string][]byte{"/base.qcow2": img})
	c := testCache(t)
	wrong := strings.Repeat("ab", 32)
	_, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2", Checksum: "sha256:" + wrong})
	var ce *ChecksumError
	if !errors.As(err, &ce) {
		t.Fatalf("want ChecksumError, got %v", err)
	}
	if ce.Expected != "sha256:"+wrong || ce.Actual != "sha256:"+sha256hex(img) {
		t.Errorf("error: %v", ce)
	}
	assertEmptyCache(t, c)
}

func TestFetchTruncatedBody(t *testing.T) {
	img := testImage(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(img)))
		w.Write(img[:len(img)/2])
		// Close the connection mid-body.
		if hj, ok := w.(http.Hijacker); ok {
			conn, _, err := hj.Hijack()
			if err == nil {
				conn.Close()
			}
		}
	}))
	defer srv.Close()
	c := testCache(t)
	_, err := Fetch(context.Background(), c, FetchRequest{URL: srv.URL + "/base.qcow2", Checksum: "sha256:" + sha256hex(img)})
	if err == nil {
		t.Fatal("truncated download accepted")
	}
	assertEmptyCache(t, c)
}

func TestFetchTruncatedWithoutLength(t *testing.T) {
	// A server that just stops early (no Content-Length): only the checksum
	// can tell.
	img := testImage(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		w.Write(img[:len(img)-1000])
	}))
	defer srv.Close()
	c := testCache(t)
	_, err := Fetch(context.Background(), c, FetchRequest{URL: srv.URL + "/base.qcow2", Checksum: "sha256:" + sha256hex(img)})
	var ce *ChecksumError
	if !errors.As(err, &ce) {
		t.Fatalf("want ChecksumError, got %v", err)
	}
	assertEmptyCache(t, c)
}

func TestFetchChecksumFiles(t *testing.T) {
	img := testImage(t)
	other := strings.Repeat("0", 64)
	sum := sha256hex(img)
	sha512 := func(b []byte) string {
		out := run(t, "sh", "-c", "sha512sum "+writeTemp(t, b))
		return strings.Fields(out)[0]
	}(img)
	cases := map[string]string{
		"gnu":         other + "  other.img\n" + sum + "  base.qcow2\n",
		"gnu-binary":  other + " *other.img\n" + sum + " *base.qcow2\n",
		"bsd":         "SHA256 (other.img) = " + other + "\nSHA256 (base.qcow2) = " + sum + "\n",
		"gnu-sha512":  sha512 + "  base.qcow2\n",
		"with-header": "# checksums\n\n" + sum + "  base.qcow2\n",
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			s := newServer(t, map[string][]byte{"/d/base.qcow2": img, "/d/SUMS": []byte(content)})
			c := testCache(t)
			e, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/d/base.qcow2", Checksum: "file:" + s.URL + "/d/SUMS"})
			if err != nil {
				t.Fatal(err)
			}
			if e.Digest != "sha256:"+sum {
				t.Errorf("digest %s", e.Digest)
			}
		})
	}
	t.Run("bsd-mismatch", func(t *testing.T) {
		s := newServer(t, map[string][]byte{"/d/base.qcow2": img, "/d/SUMS": []byte("SHA256 (base.qcow2) = " + other + "\n")})
		c := testCache(t)
		_, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/d/base.qcow2", Checksum: "file:" + s.URL + "/d/SUMS"})
		var ce *ChecksumError
		if !errors.As(err, &ce) {
			t.Fatalf("want ChecksumError, got %v", err)
		}
		assertEmptyCache(t, c)
	})
	t.Run("not-listed", func(t *testing.T) {
		s := newServer(t, map[string][]byte{"/d/base.qcow2": img, "/d/SUMS": []byte(other + "  other.img\n")})
		c := testCache(t)
		_, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/d/base.qcow2", Checksum: "file:" + s.URL + "/d/SUMS"})
		if err == nil || !strings.Contains(err.Error(), "no checksum found") {
			t.Fatalf("want 'no checksum found', got %v", err)
		}
		assertEmptyCache(t, c)
	})
}

func writeTemp(t *testing.T, b []byte) string {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFetchCompressed(t *testing.T) {
	img := testImage(t)
	for _, tc := range []struct{ ext, tool string }{{"xz", "xz"}, {"gz", "gzip"}, {"bz2", "bzip2"}} {
		t.Run(tc.ext, func(t *testing.T) {
			p := writeTemp(t, img)
			run(t, tc.tool, "-k", p)
			comp, err := os.ReadFile(p + "." + tc.ext)
			if err != nil {
				t.Fatal(err)
			}
			s := newServer(t, map[string][]byte{"/base.qcow2." + tc.ext: comp})
			c := testCache(t)
			// The checksum is that of the compressed file, as published.
			e, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2." + tc.ext, Checksum: "sha256:" + sha256hex(comp), Format: "qcow2"})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(c.Path(e))
			if sha256hex(got) != sha256hex(img) {
				t.Fatal("decompressed image differs")
			}
			if e.Format != "qcow2" {
				t.Errorf("format %s", e.Format)
			}
		})
	}
}

func TestFetchCacheHit(t *testing.T) {
	img := testImage(t)
	s := newServer(t, map[string][]byte{"/base.qcow2": img, "/SUMS": []byte(sha256hex(img) + "  base.qcow2\n")})
	c := testCache(t)
	req := FetchRequest{URL: s.URL + "/base.qcow2", Checksum: "file:" + s.URL + "/SUMS"}
	e1, err := Fetch(context.Background(), c, req)
	if err != nil {
		t.Fatal(err)
	}
	n := s.requests.Load()
	if n != 2 {
		t.Errorf("first fetch made %d requests, want 2 (sums + image)", n)
	}
	s.Close() // no network from here on
	e2, err := Fetch(context.Background(), c, req)
	if err != nil {
		t.Fatal(err)
	}
	if s.requests.Load() != n {
		t.Errorf("second fetch hit the server")
	}
	if c.Path(e1) != c.Path(e2) {
		t.Errorf("different paths %s %s", c.Path(e1), c.Path(e2))
	}
	// The declared format is checked on a hit too (issue 13): the cached
	// qcow2 is not returned for --format raw.
	req.Format = "raw"
	var ie *qemuimg.ImageError
	if _, err := Fetch(context.Background(), c, req); !errors.As(err, &ie) || !strings.Contains(err.Error(), "declared format raw, but the file is qcow2") {
		t.Errorf("cache hit with the wrong declared format: %v", err)
	}
	req.Format = "qcow2"
	if _, err := Fetch(context.Background(), c, req); err != nil {
		t.Errorf("cache hit with the right declared format: %v", err)
	}
	// A deleted image file is not a hit.
	os.Remove(c.Path(e1))
	if e, _ := c.Lookup(e1.Key); e != nil {
		t.Error("lookup returned an entry whose file is gone")
	}
}

func TestFetchInterrupted(t *testing.T) {
	img := testImage(t)
	started := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(img)))
		w.Write(img[:len(img)/2])
		w.(http.Flusher).Flush()
		close(started)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	c := testCache(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		time.Sleep(100 * time.Millisecond)
		cancel()
	}()
	_, err := Fetch(ctx, c, FetchRequest{URL: srv.URL + "/base.qcow2", Checksum: "sha256:" + sha256hex(img)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	assertEmptyCache(t, c)
}

func TestFetchChecksumRequired(t *testing.T) {
	img := testImage(t)
	s := newServer(t, map[string][]byte{"/base.qcow2": img})
	c := testCache(t)
	_, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2"})
	var ie *InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("want InputError mentioning --insecure, got %v", err)
	}
	if s.requests.Load() != 0 {
		t.Error("refused fetch still hit the network")
	}
	if _, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2", Insecure: true}); err != nil {
		t.Fatalf("--insecure fetch: %v", err)
	}
	for _, bad := range []string{"md5:abc", "sha256:xyz", "sha256:" + strings.Repeat("a", 63), "file:ftp://x/y", "abc"} {
		_, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2", Checksum: bad})
		if !errors.As(err, &ie) {
			t.Errorf("checksum %q: want InputError, got %v", bad, err)
		}
	}
}

func TestFetchRefusesNonImage(t *testing.T) {
	page := []byte("<html><body>Not Found, but status 200</body></html>\n")
	s := newServer(t, map[string][]byte{"/base.qcow2": page})
	c := testCache(t)
	_, err := Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2", Checksum: "sha256:" + sha256hex(page), Format: "qcow2"})
	var ie *qemuimg.ImageError
	if !errors.As(err, &ie) {
		t.Fatalf("want ImageError, got %v", err)
	}
	// The error names the URL, not the temporary download (issue 13).
	if !strings.HasPrefix(err.Error(), s.URL+"/base.qcow2: ") || strings.Contains(err.Error(), c.Dir) {
		t.Errorf("error %q does not name the URL, or names the cache's temp path", err)
	}
	assertEmptyCache(t, c)
}

func TestFetchLocalFile(t *testing.T) {
	img := testImage(t)
	p := writeTemp(t, img)
	c := testCache(t)
	e, err := Fetch(context.Background(), c, FetchRequest{URL: p, Checksum: "sha256:" + sha256hex(img)})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(c.Path(e))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("cached local file is not a regular file copy: %v %v", fi, err)
	}
}

func TestFetchRemovesStaleLeftovers(t *testing.T) {
	img := testImage(t)
	s := newServer(t, map[string][]byte{"/base.qcow2": img})
	c := testCache(t)
	req := FetchRequest{URL: s.URL + "/base.qcow2", Checksum: "sha256:" + sha256hex(img)}
	// What a SIGKILLed fetch of the same source leaves behind.
	stale := filepath.Join(c.Dir, "tmp", "fetch-"+FetchKey(req.URL, req.Checksum)+"-123")
	other := filepath.Join(c.Dir, "tmp", "fetch-otherkey-456")
	for _, d := range []string{stale, other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "image"), []byte("partial"), 0o644)
	}
	if _, err := Fetch(context.Background(), c, req); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale leftover kept: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another key's work dir was removed: %v", err)
	}
}

// TestFetchTruncatedQcow2Insecure: a qcow2 cut short in transit (no
// checksum to notice it with --insecure) fails qemu-img check and is not
// cached (issue 13).
func TestFetchTruncatedQcow2Insecure(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "d.raw")
	os.WriteFile(raw, bytes.Repeat([]byte{0xab}, 8<<20), 0o644)
	q := filepath.Join(dir, "d.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q)
	data, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, map[string][]byte{"/base.qcow2": data[:4<<20]})
	c := testCache(t)
	_, err = Fetch(context.Background(), c, FetchRequest{URL: s.URL + "/base.qcow2", Insecure: true})
	var ie *qemuimg.ImageError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "truncated or damaged") {
		t.Fatalf("err = %v, want a refused truncated image", err)
	}
	assertEmptyCache(t, c)
}
