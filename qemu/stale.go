package qemu

import (
	"os"
	"path/filepath"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// OwnerFile names the file in a temporary directory that lists the
// processes using it (see WriteOwner and RemoveStaleDirs).
const OwnerFile = atomicfile.OwnerFile

// WriteOwner records pids (plus this process) as the users of dir.
func WriteOwner(dir string, pids ...int) error { return atomicfile.WriteOwner(dir, pids...) }

// RemoveStaleDirs removes the directories matching glob whose owner file
// lists only processes that no longer exist: the leftovers of an ecs-image
// that was killed (SIGKILL, OOM, power loss) before it could clean up.
// Directories without an owner file are left alone.
func RemoveStaleDirs(glob string) {
	for _, d := range atomicfile.RemoveStaleDirs(glob) {
		logrus.Debugf("removed %s, left behind by a killed ecs-image", d)
	}
}

var staleOnce sync.Once

// removeStaleRunDirs cleans the run directories of dead machines once per
// process.
func removeStaleRunDirs() {
	staleOnce.Do(func() {
		for _, tmp := range []string{os.TempDir(), "/tmp"} {
			RemoveStaleDirs(filepath.Join(tmp, "ecs-qemu-*"))
		}
	})
}
