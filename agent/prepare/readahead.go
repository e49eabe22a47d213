package prepare

import (
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// dockerPrograms are the programs the start of dockerd and of the stack
// run (Debian's docker.io, containerd, runc and iptables-nft paths; with
// composePlugins for Compose; missing ones are skipped).
var dockerPrograms = []string{
	"/usr/sbin/dockerd", "/usr/bin/dockerd",
	"/usr/sbin/docker-proxy", "/usr/bin/docker-proxy", "/usr/libexec/docker/docker-proxy",
	"/usr/bin/docker",
	"/usr/bin/containerd-shim-runc-v2",
	"/usr/sbin/runc", "/usr/bin/runc",
	"/usr/sbin/xtables-nft-multi",
}

// readAhead asks the kernel to read the files (and the files below the
// directories) into the page cache (fadvise WILLNEED: the reads are
// queued, nothing is copied here). It is called where the boot waits
// anyway, so that a later start (dockerd's, the stack's) finds its
// programs in memory instead of paging them in from the disk, which
// costs seconds under emulation. It returns the files and bytes asked for.
func (a *Agent) readAhead(paths []string) (files int, bytes int64) {
	advise := func(p string, size int64) {
		f, err := os.Open(p)
		if err != nil {
			return
		}
		defer f.Close()
		if unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_WILLNEED) == nil {
			files, bytes = files+1, bytes+size
		}
	}
	for _, p := range paths {
		_ = filepath.WalkDir(a.Host.Path(p), func(q string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil {
					advise(q, fi.Size())
				}
			}
			return nil
		})
	}
	return files, bytes
}
