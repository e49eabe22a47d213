package formats

import "context"

// vmwareHWVersion is the virtual hardware version written into VMDK
// descriptors and OVF VirtualSystemType (vmx-13: ESXi 6.5 and later).
const vmwareHWVersion = "13"

// vmdkOptions are qemu-img's options for an ESXi-importable stream VMDK.
var vmdkOptions = "subformat=streamOptimized,adapter_type=lsilogic,hwversion=" + vmwareHWVersion

func writeQcow2(ctx context.Context, j *job) error {
	p, err := j.compressedQcow2(ctx)
	if err != nil {
		return err
	}
	return j.place(p)
}

func writeRaw(ctx context.Context, j *job) error {
	p, _, err := j.rawDisk(ctx, 1)
	if err != nil {
		return err
	}
	return j.place(p)
}

func writeVMDK(ctx context.Context, j *job) error {
	p, _, err := j.streamVMDK(ctx, 1)
	if err != nil {
		return err
	}
	return j.place(p)
}

// writeVHDX writes a dynamic VHDX with 1 MiB blocks, as Microsoft advises
// for Linux guests: with qemu-img's default of 16 MiB, every block that
// holds any ext4 metadata is allocated whole (the reference appliance's
// VHDX: 2.39 GB instead of 1.89 GB).
func writeVHDX(ctx context.Context, j *job) error {
	return j.convert(ctx, j.in.Path, j.in.Format, j.in.VirtualSize, j.out, "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M")
}

// writeVHD writes a fixed VHD whose virtual size is a whole number of MiB,
// as Azure requires. force_size keeps qemu from rounding to a CHS geometry.
func writeVHD(ctx context.Context, j *job) error {
	src, format, size, err := resized(ctx, j.in, j.scratch, mib)
	if err != nil {
		return err
	}
	return j.convert(ctx, src, format, size, j.out, "-O", "vpc", "-o", "subformat=fixed,force_size=on")
}

// writeAMI writes the disk EC2 ImportSnapshot reads: a stream VMDK whose size
// is a whole number of GiB (EBS volume sizes are whole GiB).
func writeAMI(ctx context.Context, j *job) error {
	p, _, err := j.streamVMDK(ctx, gib)
	if err != nil {
		return err
	}
	return j.place(p)
}
