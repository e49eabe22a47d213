package formats

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/progress"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// job is one format being written.
type job struct {
	in      *qemuimg.Info
	out     string // where the writer puts its result (inside scratch)
	scratch string // private scratch directory, removed afterwards
	base    string // output base name, e.g. "ecs-1.2" (for names inside archives)
	opts    Options
	name    string        // format name, for progress lines
	shared  *shared       // intermediates shared with the run's other formats
	sem     chan struct{} // the run's concurrency slots (nil: unbounded)
	held    bool          // this job holds a slot of sem
}

// tracker starts a progress report for one phase of this job.
func (j *job) tracker(phase string, total int64) *progress.Tracker {
	return progress.New(j.name+": "+phase, total)
}

// convert runs `qemu-img convert` from src (format srcFmt) to dst with
// progress.
func (j *job) convert(ctx context.Context, src, srcFmt string, total int64, dst string, outArgs ...string) error {
	tr := j.tracker("convert", total)
	defer tr.Done()
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if dst, err = filepath.Abs(dst); err != nil {
		return err
	}
	args := append([]string{"convert", "-f", srcFmt}, outArgs...)
	args = append(args, src, dst)
	return qemuimg.RunProgress(ctx, tr, total, args...)
}

// Artifact is one file Emit wrote.
type Artifact struct {
	Format string
	Path   string
	Size   int64
}

// Emit writes in as each of the named formats into dir, as base+Ext, all at
// once (at most runtime.NumCPU() at a time, each reading the input itself).
// Outputs are written under temporary names in dir and renamed only when
// every format succeeded; on error or cancellation nothing is left behind.
// Existing outputs of the same names are replaced.
func Emit(ctx context.Context, in *qemuimg.Info, dir, base string, names []string, opts Options) ([]Artifact, error) {
	fs, err := resolve(names)
	if err != nil {
		return nil, err
	}
	if base == "" || base != filepath.Base(base) {
		return nil, &InputError{Msg: fmt.Sprintf("output base name %q must be a plain file name", base)}
	}
	for _, f := range fs {
		if err := atomicfile.CheckTarget(filepath.Join(dir, base+f.Ext)); err != nil {
			return nil, &InputError{Msg: err.Error()}
		}
	}
	tmp, err := workDir(dir, ".ecs-image-formats-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts = opts.withDefaults()
	sh := newShared(filepath.Join(tmp, "shared"))
	if err := os.Mkdir(sh.dir, 0o755); err != nil {
		return nil, err
	}
	jobs := make([]*job, len(fs))
	errs := make([]error, len(fs))
	sem := make(chan struct{}, runtime.NumCPU())
	var wg sync.WaitGroup
	for i, f := range fs {
		scratch := filepath.Join(tmp, f.Name)
		if err := os.Mkdir(scratch, 0o755); err != nil {
			return nil, err
		}
		jobs[i] = &job{in: in, out: filepath.Join(scratch, base+f.Ext), scratch: scratch, base: base, opts: opts, name: f.Name, shared: sh, sem: sem}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs[i] = ctx.Err()
				return
			}
			jobs[i].held = true
			defer func() {
				if jobs[i].held {
					<-sem
				}
			}()
			start := time.Now()
			if err := f.write(ctx, jobs[i]); err != nil {
				errs[i] = fmt.Errorf("format %s: %w", f.Name, err)
				cancel()
				return
			}
			logrus.Infof("format %s written in %s", f.Name, time.Since(start).Round(100*time.Millisecond))
		}()
	}
	wg.Wait()
	if err := parent.Err(); err != nil {
		return nil, err
	}
	for _, e := range errs {
		if e != nil && !errors.Is(e, context.Canceled) {
			return nil, e
		}
	}
	arts := make([]Artifact, 0, len(jobs))
	for i, j := range jobs {
		final := filepath.Join(dir, base+fs[i].Ext)
		if err := atomicfile.CheckTarget(final); err != nil {
			return nil, &InputError{Msg: err.Error()}
		}
		if err := os.Rename(j.out, final); err != nil {
			return nil, err
		}
		st, err := os.Stat(final)
		if err != nil {
			return nil, err
		}
		arts = append(arts, Artifact{Format: fs[i].Name, Path: final, Size: st.Size()})
	}
	return arts, nil
}

// resolve looks up names, dropping duplicates.
func resolve(names []string) ([]Format, error) {
	if len(names) == 0 {
		return nil, &InputError{Msg: "no output format given"}
	}
	seen := map[string]bool{}
	var fs []Format
	for _, n := range names {
		f, err := Lookup(n)
		if err != nil {
			return nil, err
		}
		if !seen[n] {
			seen[n] = true
			fs = append(fs, f)
		}
	}
	return fs, nil
}

// Write writes in as the single format name to the file out (atomically).
func Write(ctx context.Context, in *qemuimg.Info, name, out string, opts Options) error {
	f, err := Lookup(name)
	if err != nil {
		return err
	}
	dir := filepath.Dir(out)
	if err := atomicfile.CheckTarget(out); err != nil {
		return &InputError{Msg: err.Error()}
	}
	tmp, err := workDir(dir, ".ecs-image-convert-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	base := filepath.Base(out)
	if len(base) > len(f.Ext) && base[len(base)-len(f.Ext):] == f.Ext {
		base = base[:len(base)-len(f.Ext)]
	}
	j := &job{in: in, out: filepath.Join(tmp, "out"), scratch: tmp, base: base, opts: opts.withDefaults(), name: name, shared: newShared(tmp)}
	if err := f.write(ctx, j); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("format %s: %w", name, err)
	}
	if err := atomicfile.CheckTarget(out); err != nil {
		return &InputError{Msg: err.Error()}
	}
	return os.Rename(j.out, out)
}

// workDir makes a private work directory in dir (the output directory, so
// that results are renamed, not copied) that records its owner process,
// after removing the work directories of runs that were killed (kill -9,
// OOM, power loss) before they could clean up.
func workDir(dir, prefix string) (string, error) {
	for _, p := range []string{".ecs-image-convert-*", ".ecs-image-formats-*"} {
		for _, d := range atomicfile.RemoveStaleDirs(filepath.Join(dir, p)) {
			logrus.Infof("removed %s, left behind by a killed ecs-image", d)
		}
	}
	tmp, err := os.MkdirTemp(dir, prefix)
	if err != nil {
		return "", fmt.Errorf("output directory: %w", err)
	}
	if err := atomicfile.WriteOwner(tmp); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("output directory: %w", err)
	}
	return tmp, nil
}
