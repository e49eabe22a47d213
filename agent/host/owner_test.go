package host

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

// A file replaced by WriteFile keeps its owner and group.
func TestWriteFileKeepsOwner(t *testing.T) {
	testenv.Root(t, "chown")
	h := New(t.TempDir(), nil)
	p := "/etc/postgresql/15/main/pg_hba.conf"
	if _, err := h.WriteFile(p, []byte("local all postgres peer\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(h.Path(p), 65534, 65533); err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteFile(p, []byte("local all postgres peer\nhost ecs ecs 172.16.0.0/12 scram-sha-256\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(h.Path(p))
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid != 65534 || sys.Gid != 65533 || st.Mode().Perm() != 0o640 {
		t.Errorf("owner %d:%d mode %o, want 65534:65533 640", sys.Uid, sys.Gid, st.Mode().Perm())
	}
	// A new file is the writer's.
	if _, err := h.WriteFile("/etc/new.conf", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, _ = os.Stat(filepath.Join(h.Root, "etc/new.conf"))
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 {
		t.Errorf("new file owned by %d", sys.Uid)
	}
}
