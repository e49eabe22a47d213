package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// OwnerFile names the file in a temporary directory that lists the
// processes using it (see WriteOwner and RemoveStaleDirs).
const OwnerFile = ".owner"

// WriteOwner records pids (plus this process) as the users of dir.
func WriteOwner(dir string, pids ...int) error {
	all := append([]int{os.Getpid()}, pids...)
	var b strings.Builder
	for _, p := range all {
		fmt.Fprintln(&b, p)
	}
	return os.WriteFile(filepath.Join(dir, OwnerFile), []byte(b.String()), 0o600)
}

// RemoveStaleDirs removes the directories matching glob whose owner file
// lists only processes that no longer exist: the leftovers of an ecs-image
// that was killed (SIGKILL, OOM, power loss) before it could clean up. It
// returns the directories removed. Directories without an owner file are
// left alone.
func RemoveStaleDirs(glob string) []string {
	dirs, _ := filepath.Glob(glob)
	var removed []string
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, OwnerFile))
		if err != nil {
			continue
		}
		alive := false
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid <= 0 {
				continue
			}
			if err := syscall.Kill(pid, 0); err == nil || !errors.Is(err, syscall.ESRCH) {
				alive = true
				break
			}
		}
		if !alive && os.RemoveAll(d) == nil {
			removed = append(removed, d)
		}
	}
	return removed
}
