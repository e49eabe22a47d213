package builder

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
	"github.com/sirupsen/logrus"
)

// TestChrootGrow grows the last partition of real MBR and GPT disks with
// sfdisk, as a chroot stage does before mounting.
func TestChrootGrow(t *testing.T) {
	testenv.Tools(t, "sfdisk")
	for _, label := range []string{"dos", "gpt"} {
		t.Run(label, func(t *testing.T) {
			dir := t.TempDir()
			disk := filepath.Join(dir, "export.raw")
			if err := os.WriteFile(disk, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(disk, 64<<20); err != nil {
				t.Fatal(err)
			}
			// A small partition first, the root partition last.
			cmd := exec.Command("sfdisk", "-q", disk)
			cmd.Stdin = strings.NewReader("label: " + label + "\nstart=2048, size=2048\nstart=4096, size=20480\n")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("sfdisk: %v %s", err, out)
			}
			if err := os.Truncate(disk, 128<<20); err != nil { // the disk grew
				t.Fatal(err)
			}
			s := &chrootSession{export: disk, log: logrus.New()}
			root := partition{offset: 4096 * 512, size: 20480 * 512}
			p, grew, err := s.grow(context.Background(), root)
			if err != nil {
				t.Fatal(err)
			}
			if !grew || p.offset != root.offset || p.size < 120<<20 || p.size > 128<<20 {
				t.Fatalf("grew %v to %+v, want the partition to reach the end of 128 MiB", grew, p)
			}
			// Not the last partition: left alone.
			first := partition{offset: 2048 * 512, size: 2048 * 512}
			if q, grew, err := s.grow(context.Background(), first); err != nil || grew || q != first {
				t.Errorf("the first partition: %+v %v %v", q, grew, err)
			}
			// Already at the end: nothing to do.
			if _, grew, err := s.grow(context.Background(), p); err != nil || grew {
				t.Errorf("a second grow: %v %v", grew, err)
			}
		})
	}
}

// TestChrootNoRoot: a disk without an ext4 root is refused with
// a message naming what chroot stages need.
func TestChrootNoRoot(t *testing.T) {
	testenv.Tools(t, "debugfs")
	disk := filepath.Join(t.TempDir(), "export.raw")
	os.WriteFile(disk, make([]byte, 1<<20), 0o600)
	s := &chrootSession{export: disk, log: logrus.New()}
	if _, err := s.rootPartition(context.Background()); err == nil || !strings.Contains(err.Error(), "ext2/3/4") {
		t.Errorf("got %v", err)
	}
}
