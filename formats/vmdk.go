package formats

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/vmdkstream"
	"github.com/ecs-image/ecs-image/vmdkstream/grainstore"
)

// VMDKWriterEnv names the environment variable that chooses how stream
// VMDKs (vmdk, ova, ami, vagrant-virtualbox) are written: "ecs-image" for
// package vmdkstream (grains deflated on every core; the default),
// "qemu-img" for `qemu-img convert -O vmdk` (one thread), the way back if
// a hypervisor ever refuses vmdkstream's files.
const VMDKWriterEnv = "ECS_IMAGE_VMDK_WRITER"

// defaultVMDKWriter is the writer used when VMDKWriterEnv is unset.
const defaultVMDKWriter = "ecs-image"

// VMDKLevelEnv names the environment variable that sets the deflate level
// (1–9) of the grains vmdkstream writes. The default, 1, is the fastest:
// on the reference workload's image (1.2 GiB of data) it took 5.3 s of CPU
// instead of level 6's 9.5 s and wrote 489.5 instead of 450.3 MiB (+8.7 %;
// qemu-img's single-threaded writer deflates at zlib's default, 6). The
// stream VMDK was the largest part of the CPU a build with every format
// adds to the qcow2 alone (issue 19); 6 gives qemu-img's size back.
const VMDKLevelEnv = "ECS_IMAGE_VMDK_LEVEL"

// defaultVMDKLevel is the deflate level used when VMDKLevelEnv is unset.
const defaultVMDKLevel = 1

// vmdkLevel returns the deflate level from VMDKLevelEnv.
func vmdkLevel() (int, error) {
	v := os.Getenv(VMDKLevelEnv)
	if v == "" {
		return defaultVMDKLevel, nil
	}
	if len(v) == 1 && v[0] >= '1' && v[0] <= '9' {
		return int(v[0] - '0'), nil
	}
	return 0, &InputError{Msg: fmt.Sprintf("%s=%q: want a deflate level from 1 (fastest) to 9 (smallest)", VMDKLevelEnv, v)}
}

// vmdkWriter returns "ecs-image" or "qemu-img" from VMDKWriterEnv.
func vmdkWriter() (string, error) {
	switch v := os.Getenv(VMDKWriterEnv); v {
	case "":
		return defaultVMDKWriter, nil
	case "ecs-image", "qemu-img":
		return v, nil
	default:
		return "", &InputError{Msg: fmt.Sprintf("%s=%q: want ecs-image or qemu-img", VMDKWriterEnv, v)}
	}
}

// deflateVMDK writes the stream VMDK of the input, at its size rounded up
// to align, to out with package vmdkstream. It reads the input's data
// extents straight from the files of its chain (chainReader) when every
// one is stored uncompressed — a build's overlays on an uncompressed base —
// and otherwise from the run's sparse raw disk (qemu-img reads the image,
// so no image format is parsed here; raw and gce share it), of which only
// the data regions are read.
func (j *job) deflateVMDK(ctx context.Context, align int64, out string) error {
	level, err := vmdkLevel()
	if err != nil {
		return err
	}
	size := roundUp(j.in.VirtualSize, align)
	var src io.ReaderAt
	var rs []region
	chain, err := openChain(ctx, j.in.Path, j.in.Format)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if chain != nil {
		defer chain.Close()
		src, rs = chain, chain.regions()
	} else {
		if err != nil {
			logrus.Debugf("vmdk: reading %s through a raw copy (%v)", j.in.Path, err)
		}
		raw, rawSize, err := j.rawDisk(ctx, align)
		if err != nil {
			return err
		}
		f, err := os.Open(raw)
		if err != nil {
			return err
		}
		defer f.Close()
		if rs, err = dataRegions(f, rawSize); err != nil {
			return fmt.Errorf("%s: %w", raw, err)
		}
		src, size = f, rawSize
	}
	regions := make([]vmdkstream.Region, len(rs))
	for i, r := range rs {
		regions[i] = vmdkstream.Region{Off: r.off, Len: r.len}
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	tr := j.tracker("deflate", size)
	defer tr.Done()
	opts := vmdkstream.Options{
		AdapterType: "lsilogic",
		HWVersion:   vmwareHWVersion,
		ExtentName:  j.base + ".vmdk",
		Level:       level,
		Progress:    tr.Add,
		Stats:       &vmdkstream.Stats{},
	}
	store, rec, closeStore := j.grainStore(size, level, &opts)
	defer closeStore()
	err = vmdkstream.Write(ctx, f, src, size, regions, opts)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	st := opts.Stats
	logrus.Debugf("vmdk: %d grains, %d copied from the last VMDK of %s, %d copies refused (deflated)", st.Grains, st.Reused, j.base, st.Rejected)
	if store != nil {
		if err := store.Commit(out, rec); err != nil {
			logrus.Debugf("vmdk: not kept for the next build: %v", err)
		}
	}
	return nil
}

// grainStore sets opts up to copy grains from the grain store of this
// output (j.opts.GrainStores; keyed by base name, size and level) and to
// record the new VMDK's. It returns the store to commit the VMDK to (nil:
// none), its recorder, and what closes the store's old VMDK.
func (j *job) grainStore(size int64, level int, opts *vmdkstream.Options) (*grainstore.Store, *grainstore.Recorder, func()) {
	if j.opts.GrainStores == "" {
		return nil, nil, func() {}
	}
	store := grainstore.New(j.opts.GrainStores, fmt.Sprintf("%s %s level %d", j.base, diskKey("vmdk", size), level))
	rec := &grainstore.Recorder{}
	opts.Record = rec.Record
	if j.opts.NoGrainReuse {
		return store, rec, func() {}
	}
	src, err := store.Source()
	if err != nil || src == nil {
		if err != nil {
			logrus.Debugf("vmdk: deflating every grain: %v", err)
		}
		return store, rec, func() {}
	}
	opts.Reuse = src
	return store, rec, func() { src.Close() }
}
