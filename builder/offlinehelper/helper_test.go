package offlinehelper

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/testenv"
)

// TestJobArchiveUnpack unpacks a job archive (written as the builder's
// writeJob does: the job, then provisioners' files) the way the helper
// does, into a fake image root with its own passwd.
func TestJobArchiveUnpack(t *testing.T) {
	testenv.Root(t, "chown")
	var job bytes.Buffer
	a := provisioners.NewArchive(&job)
	data, _ := json.Marshal(Job{Generalise: true, GeneraliseScript: "true", Packages: true})
	a.Bytes("/"+JobEntryName, data, 0o600, provisioners.Owner{User: "0", Group: "0"})
	a.Bytes("/etc/motd", []byte("hello\n"), 0o644, provisioners.Owner{User: "root", Group: "root"})
	a.Bytes("/app/etc/conf", []byte("x=1\n"), 0o640, provisioners.Owner{User: "app", Group: "staff"})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/app:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nstaff:x:50:\n"), 0o644)
	// /app/etc is a symlink into /data, as in the appliance layout.
	os.MkdirAll(filepath.Join(root, "data/etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	os.Symlink("/data/etc", filepath.Join(root, "app/etc")) // absolute, as in the image

	tr := tar.NewReader(&job)
	h, err := tr.Next()
	if err != nil || h.Name != JobEntryName {
		t.Fatalf("first entry %v %v", h, err)
	}
	var got Job
	if err := json.NewDecoder(tr).Decode(&got); err != nil || !got.Generalise || !got.Packages {
		t.Fatalf("job %+v %v", got, err)
	}
	cwd, _ := os.Getwd()
	n, err := unpackChrooted(tr, root)
	if now, _ := os.Getwd(); now != cwd {
		t.Fatalf("working directory changed: %s", now)
	}
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Fatal("the process did not return to the real root")
	}
	users, groups := readIDs(root)
	if err != nil || n != 2 {
		t.Fatalf("unpack: %d %v", n, err)
	}
	st := func(p string) *syscall.Stat_t {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t)
	}
	if s := st("etc/motd"); s.Mode&0o777 != 0o644 || s.Uid != 0 {
		t.Errorf("motd: mode %o uid %d", s.Mode&0o777, s.Uid)
	}
	if s := st("data/etc/conf"); s.Mode&0o777 != 0o640 || s.Uid != 1234 || s.Gid != 50 {
		t.Errorf("conf through the symlink: mode %o uid %d gid %d", s.Mode&0o777, s.Uid, s.Gid)
	}
	if l, err := os.Readlink(filepath.Join(root, "app/etc")); err != nil || l != "/data/etc" {
		t.Errorf("the directory symlink was replaced: %q %v", l, err)
	}

	// An owner unknown in the image is an error, not a silent root.
	var buf bytes.Buffer
	a = provisioners.NewArchive(&buf)
	a.Bytes("/etc/x", []byte("x"), 0o644, provisioners.Owner{User: "nobody-here", Group: "root"})
	a.Close()
	if _, err := unpack(tar.NewReader(&buf), root, users, groups); err == nil || !strings.Contains(err.Error(), `no user "nobody-here"`) {
		t.Errorf("unknown owner: %v", err)
	}
	// Paths cannot leave the root.
	buf.Reset()
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../../escape", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	if _, err := unpack(tar.NewReader(&buf), root, users, groups); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(root)), "escape")); err == nil {
		t.Error("an entry escaped the root")
	}
}
