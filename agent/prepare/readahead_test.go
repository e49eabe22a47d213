package prepare

import (
	"os"
	"testing"
)

func TestReadAhead(t *testing.T) {
	a, _ := testAgent(t)
	put(t, a, "/usr/sbin/dockerd", make([]byte, 3<<20), 0o755)
	put(t, a, "/var/lib/ecs-image/docker-seed/image/overlay2/repositories.json", []byte("{}"), 0o644)
	put(t, a, "/var/lib/ecs-image/docker-seed/overlay2/l1/diff/bin/x", make([]byte, 1<<20), 0o755)
	if err := os.Symlink("/nowhere", a.Host.Path("/var/lib/ecs-image/docker-seed/overlay2/l1/diff/bin/link")); err != nil {
		t.Fatal(err)
	}
	n, size := a.readAhead([]string{"/usr/sbin/dockerd", "/usr/bin/docker", "/var/lib/ecs-image/docker-seed"})
	if n != 3 || size != 4<<20+2 {
		t.Errorf("readAhead: %d files, %d bytes; want 3 files (missing paths and links skipped), %d bytes", n, size, 4<<20+2)
	}
}
