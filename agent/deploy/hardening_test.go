package deploy

import (
	"archive/tar"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func checkTar(t *testing.T, hs ...*tar.Header) error {
	t.Helper()
	p := filepath.Join(t.TempDir(), "a.tar")
	if err := os.WriteFile(p, archive(t, false, hs...), 0o600); err != nil {
		t.Fatal(err)
	}
	return CheckArchive(p)
}

func sym(name, target string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}
}

// TestCheckArchiveLinkChains: links are resolved against the archive's own
// tree (issue 13: d1 → ., d1/d2 → .., d2/evil was accepted, each link
// alone staying inside).
func TestCheckArchiveLinkChains(t *testing.T) {
	for name, hs := range map[string][]*tar.Header{
		"issue chain":        {sym("d1", "."), sym("d1/d2", ".."), {Name: "d2/evil"}},
		"chain, link only":   {sym("d1", "."), sym("d1/d2", "..")},
		"physical dot-dot":   {{Name: "a/b/", Typeflag: tar.TypeDir}, sym("a/b/l", "../.."), sym("m", "a/b/l/..")},
		"dot-dot after link": {{Name: "a/b/", Typeflag: tar.TypeDir}, sym("a/b/root", "../.."), sym("x", "a/b/root/../etc")},
		"two-link chain":     {sym("a", "b"), sym("b", "c/../.."), {Name: "a/x"}},
		"link through link":  {sym("top", "."), sym("top/top/top/up", "../..")},
		"loop":               {sym("a", "b"), sym("b", "a"), {Name: "a/x"}},
		"hard link via link": {sym("d", ".."), {Name: "h", Typeflag: tar.TypeLink, Linkname: "d/etc/shadow"}},
		"later link":         {{Name: "d/x"}, sym("d/y", "../q/../.."), sym("q", ".")},
	} {
		err := checkTar(t, hs...)
		if !errors.Is(err, ErrBadArchive) {
			t.Errorf("%s: accepted (%v)", name, err)
		} else if !strings.Contains(err.Error(), "archive") {
			t.Errorf("%s: unclear error %v", name, err)
		}
	}
	// Links that stay inside, as docker-archive layers use them.
	for name, hs := range map[string][]*tar.Header{
		"layer link":    {{Name: "l2/", Typeflag: tar.TypeDir}, sym("l2/layer.tar", "../l1/layer.tar")},
		"dot link":      {sym("here", "."), {Name: "here/file"}},
		"down and up":   {{Name: "a/b/", Typeflag: tar.TypeDir}, sym("a/b/up", ".."), sym("x", "a/b/up/b")},
		"hard link":     {{Name: "h", Typeflag: tar.TypeLink, Linkname: "l1/layer.tar"}},
		"replaced link": {sym("d", ".."), {Name: "d", Typeflag: tar.TypeDir}},
	} {
		if err := checkTar(t, hs...); err != nil && name != "replaced link" {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
}

// TestSlowUploadHoldsNoLock: an upload trickling in does not block the
// deployment's other operations (the lock is taken once the upload is
// read and verified), and an upload that stops sending is cut off after
// the idle time-out (issue 13).
func TestSlowUploadHoldsNoLock(t *testing.T) {
	e := startServer(t, 1<<20)
	e.api.bodyIdle = 2 * time.Second
	c := e.goodClient(t)
	pr, pw := io.Pipe()
	defer pw.Close()
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/deployments/website/load", pr)
		req.ContentLength = 1 << 19
		resp, err := c.Do(req)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	pw.Write(make([]byte, 4<<10)) // then nothing more
	time.Sleep(100 * time.Millisecond)
	code, msg := post(t, c, e.srv.URL+"/v1/deployments/website/restart", nil)
	// The restart answered while the upload still stalls (it is cut off
	// only after bodyIdle): it did not wait for it.
	select {
	case up := <-done:
		t.Fatalf("restart (%d %s) returned only after the stalled upload ended (%d)", code, msg, up)
	default:
	}
	select {
	case code := <-done:
		if code != http.StatusRequestTimeout && code != 0 {
			t.Errorf("stalled upload: %d, want 408", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled upload was not cut off")
	}
	if e.rt.loads != 0 {
		t.Error("a stalled upload was loaded")
	}
	entries, _ := os.ReadDir(filepath.Join(e.dir, "spool"))
	if len(entries) != 0 {
		t.Errorf("spool not cleaned: %v", entries)
	}
}

// FuzzCheckArchive: an archive CheckArchive accepts, extracted naively
// (following links as the kernel does), writes nothing outside its
// directory. The seeds are the link chains of issue 13.
func FuzzCheckArchive(f *testing.F) {
	t := &testing.T{}
	for _, hs := range [][]*tar.Header{
		{sym("d1", "."), sym("d1/d2", ".."), {Name: "d2/evil"}},
		{{Name: "a/b/", Typeflag: tar.TypeDir}, sym("a/b/l", "../.."), sym("m", "a/b/l/.."), {Name: "m/evil"}},
		{sym("a", "b"), sym("b", "c/../.."), {Name: "a/x"}},
		{sym("d", ".."), {Name: "h", Typeflag: tar.TypeLink, Linkname: "d/x"}},
		{{Name: "l2/", Typeflag: tar.TypeDir}, sym("l2/layer.tar", "../l1/layer.tar")},
		{sym("here", "."), {Name: "here/file"}},
	} {
		f.Add(archive(t, false, hs...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "a.tar")
		os.WriteFile(p, data, 0o600)
		if CheckArchive(p) != nil {
			return
		}
		// The extraction root, deep enough that any escape lands inside
		// the sandbox (archives with more ".." than that are skipped).
		const depth = 32
		sandbox := filepath.Join(dir, "sandbox")
		root := sandbox
		for i := 0; i < depth; i++ {
			root = filepath.Join(root, "d")
		}
		os.MkdirAll(root, 0o755)
		tr := tar.NewReader(bytesReader(data))
		ups := 0
		var hs []*tar.Header
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			ups += strings.Count(h.Linkname, "..")
			hs = append(hs, h)
		}
		if ups >= depth-1 || len(hs) > 200 {
			return
		}
		for _, h := range hs {
			dst := filepath.Join(root, h.Name)
			switch h.Typeflag {
			case tar.TypeDir:
				os.MkdirAll(dst, 0o755)
			case tar.TypeSymlink:
				os.Symlink(h.Linkname, dst)
			case tar.TypeLink:
				os.Link(filepath.Join(root, h.Linkname), dst)
			case tar.TypeReg:
				os.WriteFile(dst, []byte("x"), 0o644)
			}
		}
		// Nothing beside root's own chain of directories.
		cur := sandbox
		for i := 0; i < depth; i++ {
			ents, _ := os.ReadDir(cur)
			if len(ents) != 1 || ents[0].Name() != "d" {
				t.Fatalf("accepted archive wrote outside its directory: %s holds %v", cur, ents)
			}
			cur = filepath.Join(cur, "d")
		}
	})
}

func bytesReader(b []byte) io.Reader { return strings.NewReader(string(b)) }
