package formats

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSparseTar writes a file with many data regions (extension blocks)
// and a size past the octal limit (base-256 fields), and reads it back with
// archive/tar and with GNU tar.
func TestSparseTar(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "disk.raw")
	f, _ := os.Create(src)
	const size = 9 * gib // > 8 GiB: realsize needs base-256
	var want []region
	for i := int64(0); i < 30; i++ {
		off := i * 200 * mib
		b := bytes.Repeat([]byte{byte(i + 1)}, 8192)
		f.WriteAt(b, off)
		want = append(want, region{off, 8192})
	}
	f.Truncate(size)
	rs, err := dataRegions(f, size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != len(want) {
		t.Fatalf("dataRegions found %d data regions, want %d: %v", len(rs), len(want), rs)
	}
	out := filepath.Join(dir, "x.tar")
	w, _ := os.Create(out)
	j := &job{name: "test"}
	if err := writeSparseTar(context.Background(), w, "disk.raw", src, j); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if st, _ := os.Stat(out); st.Size() > 1*mib {
		t.Fatalf("archive is %d bytes: holes stored", st.Size())
	}

	r, _ := os.Open(out)
	defer r.Close()
	tr := tar.NewReader(r)
	h, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "disk.raw" || h.Size != size || h.Typeflag != tar.TypeGNUSparse {
		t.Fatalf("header %+v", h)
	}
	buf := make([]byte, 8192)
	var pos int64
	for _, rg := range want {
		if _, err := io.CopyN(io.Discard, tr, rg.off-pos); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(tr, buf); err != nil {
			t.Fatal(err)
		}
		if buf[0] != byte(rg.off/(200*mib)+1) || buf[8191] != buf[0] {
			t.Fatalf("data at %d: %d", rg.off, buf[0])
		}
		pos = rg.off + 8192
	}
	if n, err := io.Copy(io.Discard, tr); err != nil || pos+n != size {
		t.Fatalf("tail %d %v", n, err)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("after member: %v", err)
	}

	x := t.TempDir()
	if o, err := exec.Command("tar", "-xf", out, "-C", x).CombinedOutput(); err != nil {
		t.Fatalf("GNU tar: %v %s", err, o)
	}
	g, err := os.Open(filepath.Join(x, "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if st, _ := g.Stat(); st.Size() != size {
		t.Fatalf("GNU tar extracted %d bytes", st.Size())
	}
	for _, rg := range want {
		g.ReadAt(buf, rg.off)
		if buf[0] != byte(rg.off/(200*mib)+1) || buf[8191] != buf[0] {
			t.Fatalf("GNU tar: data at %d: %d", rg.off, buf[0])
		}
		g.ReadAt(buf[:1], rg.off+8192)
		if buf[0] != 0 {
			t.Fatalf("GNU tar: no hole after %d", rg.off)
		}
	}
}
