package host

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPathStaysUnderRoot(t *testing.T) {
	h := New("/tmp/r", nil)
	for in, want := range map[string]string{"/etc/x": "/tmp/r/etc/x", "../../etc/x": "/tmp/r/etc/x", "/a/../../b": "/tmp/r/b"} {
		if got := h.Path(in); got != want {
			t.Errorf("Path(%q) = %q, want %q", in, got, want)
		}
	}
	if got := New("/", nil).Path("/etc/x"); got != "/etc/x" {
		t.Errorf("real root: %q", got)
	}
}

func TestWriteFileAtomicAndChanged(t *testing.T) {
	h := New(t.TempDir(), nil)
	changed, err := h.WriteFile("/a/b/c.conf", []byte("one"), 0o600)
	if err != nil || !changed {
		t.Fatalf("first write: %v %v", changed, err)
	}
	if changed, _ := h.WriteFile("/a/b/c.conf", []byte("one"), 0o600); changed {
		t.Error("unchanged content reported changed")
	}
	if changed, _ := h.WriteFile("/a/b/c.conf", []byte("one"), 0o644); !changed {
		t.Error("mode change not reported")
	}
	st, _ := os.Stat(h.Path("/a/b/c.conf"))
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %o", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(h.Path("/a/b"))
	if len(entries) != 1 {
		t.Errorf("temp files left: %v", entries)
	}
	// A failed write leaves the old file and no temp file.
	if err := os.Chmod(h.Path("/a/b"), 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(h.Path("/a/b"), 0o755)
	if os.Geteuid() != 0 {
		if _, err := h.WriteFile("/a/b/c.conf", []byte("two"), 0o644); err == nil {
			t.Error("write into read-only dir succeeded")
		}
		if data, _ := os.ReadFile(h.Path("/a/b/c.conf")); string(data) != "one" {
			t.Errorf("old content lost: %q", data)
		}
	}
}

func TestSymlinkRelative(t *testing.T) {
	h := New(t.TempDir(), nil)
	os.MkdirAll(h.Path("/data/etc"), 0o755)
	changed, err := h.Symlink("/data/etc", "/app/etc")
	if err != nil || !changed {
		t.Fatal(err)
	}
	if l, _ := os.Readlink(h.Path("/app/etc")); l != "../data/etc" {
		t.Errorf("link %q", l)
	}
	if err := os.WriteFile(filepath.Join(h.Path("/app/etc"), "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.Path("/data/etc/f")); err != nil {
		t.Error("link does not resolve under the root")
	}
	if changed, _ := h.Symlink("/data/etc", "/app/etc"); changed {
		t.Error("second Symlink reported a change")
	}
}

func TestExecRunner(t *testing.T) {
	r := ExecRunner{Grace: time.Second}
	out, err := r.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", "read x; echo got $x $FOO"}, Stdin: strings.NewReader("in\n"), Env: []string{"FOO=bar"}})
	if err != nil || string(out) != "got in bar\n" {
		t.Fatalf("%q %v", out, err)
	}
	_, err = r.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", "echo boom >&2; exit 3"}})
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = r.Run(ctx, Cmd{Name: "sleep", Args: []string{"30"}})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("cancel: %v after %s", err, time.Since(start))
	}
}

func TestRecorder(t *testing.T) {
	rec := &Recorder{Responses: map[string]Response{
		"docker":      {Stdout: "generic"},
		"docker load": {Stdout: "Loaded image: x:y\n"},
		"false":       {Err: errors.New("no")},
	}}
	out, _ := rec.Run(context.Background(), Cmd{Name: "docker", Args: []string{"load", "-i", "a b.tar"}})
	if string(out) != "Loaded image: x:y\n" {
		t.Errorf("longest prefix: %q", out)
	}
	if _, err := rec.Run(context.Background(), Cmd{Name: "false"}); err == nil {
		t.Error("canned error lost")
	}
	if got := rec.Recorded(); got[0] != "docker load -i 'a b.tar'" || len(got) != 2 {
		t.Errorf("recorded %q", got)
	}
}
