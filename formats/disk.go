package formats

import "context"

// vmwareHWVersion is the virtual hardware version written into VMDK
// descriptors and OVF VirtualSystemType (vmx-13: ESXi 6.5 and later).
const vmwareHWVersion = "13"

// vmdkOptions are qemu-img's options for an ESXi-importable stream VMDK.
var vmdkOptions = "subformat=streamOptimized,adapter_type=lsilogic,hwversion=" + vmwareHWVersion

func writeQcow2(ctx context.Context, j *job) error {
	return j.convert(ctx, j.in.Path, j.in.Format, j.in.VirtualSize, j.out, "-O", "qcow2", "-c", "-o", "compat=1.1")
}

func writeRaw(ctx context.Context, j *job) error {
	// -S 4k keeps runs of zeros as holes: the raw file is sparse.
	return j.convert(ctx, j.in.Path, j.in.Format, j.in.VirtualSize, j.out, "-O", "raw", "-S", "4k")
}

func writeVMDK(ctx context.Context, j *job) error {
	return j.convert(ctx, j.in.Path, j.in.Format, j.in.VirtualSize, j.out, "-O", "vmdk", "-o", vmdkOptions)
}

func writeVHDX(ctx context.Context, j *job) error {
	return j.convert(ctx, j.in.Path, j.in.Format, j.in.VirtualSize, j.out, "-O", "vhdx", "-o", "subformat=dynamic")
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
	src, format, size, err := resized(ctx, j.in, j.scratch, gib)
	if err != nil {
		return err
	}
	return j.convert(ctx, src, format, size, j.out, "-O", "vmdk", "-o", "subformat=streamOptimized,adapter_type=lsilogic")
}
