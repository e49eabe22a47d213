package formats

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// shared holds intermediate disks several formats of one run need (the
// stream VMDK for vmdk, ova, ami and the VirtualBox box; the compressed
// qcow2 for qcow2 and the libvirt box; the raw disk for raw, gce and the
// stream VMDK): each
// is converted once, by the first writer that asks, while the others wait.
type shared struct {
	dir   string
	mu    sync.Mutex
	items map[string]*product
}

type product struct {
	done chan struct{}
	path string
	err  error
}

func newShared(dir string) *shared {
	return &shared{dir: dir, items: map[string]*product{}}
}

// get returns the path of the intermediate called key, running produce(path)
// to produce it if no other writer has. A writer waiting for another's
// intermediate gives up its slot (j.sem) meanwhile, so that waiting never
// holds back other conversions.
func (s *shared) get(ctx context.Context, j *job, key string, produce func(path string) error) (string, error) {
	s.mu.Lock()
	p, ok := s.items[key]
	if !ok {
		p = &product{done: make(chan struct{}), path: filepath.Join(s.dir, fmt.Sprintf("%d-%s", len(s.items), key))}
		s.items[key] = p
	}
	s.mu.Unlock()
	if !ok {
		p.err = produce(p.path)
		close(p.done)
		return p.path, p.err
	}
	if j.held {
		<-j.sem
		j.held = false
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if j.sem != nil {
		select {
		case j.sem <- struct{}{}:
			j.held = true
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return p.path, p.err
}

// diskKey names an intermediate disk by format and virtual size.
func diskKey(kind string, size int64) string { return fmt.Sprintf("%s-%d", kind, size) }

// streamVMDK returns the stream-optimized VMDK of the input at its size
// rounded up to align: written by package vmdkstream from the run's raw
// disk, or with VMDKWriterEnv=qemu-img by qemu-img.
func (j *job) streamVMDK(ctx context.Context, align int64) (string, int64, error) {
	size := roundUp(j.in.VirtualSize, align)
	writer, err := vmdkWriter()
	if err != nil {
		return "", 0, err
	}
	p, err := j.shared.get(ctx, j, diskKey("vmdk", size), func(out string) error {
		if writer == "ecs-image" {
			return j.deflateVMDK(ctx, align, out)
		}
		src, format, size, err := resized(ctx, j.in, j.shared.dir, align)
		if err != nil {
			return err
		}
		return j.convert(ctx, src, format, size, out, "-O", "vmdk", "-o", vmdkOptions)
	})
	return p, size, err
}

// rawDisk returns the sparse raw disk of the input at its size rounded up
// to align.
func (j *job) rawDisk(ctx context.Context, align int64) (string, int64, error) {
	size := roundUp(j.in.VirtualSize, align)
	p, err := j.shared.get(ctx, j, diskKey("raw", size), func(out string) error {
		src, format, size, err := resized(ctx, j.in, j.shared.dir, align)
		if err != nil {
			return err
		}
		// -S 4k keeps runs of zeros as holes: the raw file is sparse.
		// -m 8 -W: eight requests in flight, written out of order (the
		// writes run in QEMU's I/O threads, so the copy into the file
		// is not one thread's: this disk is the stream VMDK's source, on
		// the critical path of a build with every format).
		return j.convert(ctx, src, format, size, out, "-O", "raw", "-S", "4k", "-m", "8", "-W")
	})
	return p, size, err
}

// compressedQcow2 returns the input as a compressed compat 1.1 qcow2.
func (j *job) compressedQcow2(ctx context.Context) (string, error) {
	return j.shared.get(ctx, j, "qcow2-compressed", func(out string) error {
		return j.convert(ctx, j.in.Path, j.in.Format, j.in.VirtualSize, out, "-O", "qcow2", "-c", "-o", "compat=1.1")
	})
}

// place puts the intermediate at src as the job's output: a hard link (both
// are in the same temporary directory), else a copy. Holes are kept by
// linking; a copy is only a fallback.
func (j *job) place(src string) error {
	if err := os.Link(src, j.out); err == nil {
		return nil
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	return atomicfile.Copy(src, j.out, st.Mode().Perm()) // the mode a link would have
}
