// Package formats turns a finished qcow2 disk image into the artifacts a
// release ships: qcow2, raw, vmdk, OVA, vhdx, vhd, GCE and AMI images and
// Vagrant boxes. Every format is one entry of a single table (after
// LinuxKit's output table). qemu-img reads the input and does the disk
// conversions, except the stream VMDK's compression: package vmdkstream
// deflates it on every core from qemu-img's raw disk (VMDKWriterEnv=qemu-img
// goes back to qemu-img's single-threaded writer).
package formats

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Format is one output format: how its file is named and how it is written.
type Format struct {
	// Name is the format's name on the command line (e.g. "vmdk").
	Name string
	// Ext is appended to the output base name (e.g. ".vmdk", ".libvirt.box").
	Ext string
	// Description is a one-line summary for help texts.
	Description string
	// NonProduction marks formats that must never be built from a production
	// variant (Vagrant boxes carry Vagrant's public insecure key).
	NonProduction bool
	// Hypervisors are where the format runs, with their default disk and
	// CD-ROM controllers (drivers.go): the builder checks the image's
	// kernel against them.
	Hypervisors []Hypervisor

	write func(ctx context.Context, j *job) error
}

// table maps format names to their writers. It is the only list of formats.
var table = map[string]Format{
	"qcow2": {Ext: ".qcow2", Description: "qcow2, compressed, compat 1.1 (QEMU/KVM, OpenStack, Proxmox)", Hypervisors: []Hypervisor{hvKVMQ35, hvKVMPC}, write: writeQcow2},
	"raw":   {Ext: ".raw", Description: "raw disk image, sparse (dd to a disk, any hypervisor)", Hypervisors: []Hypervisor{hvKVMQ35, hvKVMPC}, write: writeRaw},
	"vmdk":  {Ext: ".vmdk", Description: "VMDK streamOptimized, lsilogic, hardware version " + vmwareHWVersion + " (VMware)", Hypervisors: []Hypervisor{hvVMware, hvVMwareI}, write: writeVMDK},
	"ova":   {Ext: ".ova", Description: "OVA: OVF 1.0 descriptor + SHA256 manifest + streamOptimized VMDK (VMware, VirtualBox)", Hypervisors: []Hypervisor{hvOVA, hvOVAI}, write: writeOVA},
	"vhdx":  {Ext: ".vhdx", Description: "VHDX dynamic (Hyper-V)", Hypervisors: []Hypervisor{hvHyperV1, hvHyperV2}, write: writeVHDX},
	"vhd":   {Ext: ".vhd", Description: "VHD fixed, size rounded up to 1 MiB (Azure)", Hypervisors: []Hypervisor{hvAzure}, write: writeVHD},
	"gce":   {Ext: ".gce.tar.gz", Description: "disk.raw (size rounded up to 1 GiB) in a GNU tar.gz (Google Compute Engine image import)", Hypervisors: []Hypervisor{hvGCE, hvGCENVMe}, write: writeGCE},
	"ami":   {Ext: ".ami.vmdk", Description: "streamOptimized VMDK, size rounded up to 1 GiB, for `ecs-image publish aws` (EC2 ImportSnapshot)", Hypervisors: []Hypervisor{hvEC2, hvEC2Xen}, write: writeAMI},
	"vagrant-libvirt": {Ext: ".libvirt.box", Description: "Vagrant box for vagrant-libvirt (qcow2 box.img); dev/test variants only",
		NonProduction: true, Hypervisors: []Hypervisor{hvVagrant}, write: writeVagrantLibvirt},
	"vagrant-virtualbox": {Ext: ".virtualbox.box", Description: "Vagrant box for VirtualBox (box.ovf + VMDK); dev/test variants only",
		NonProduction: true, Hypervisors: []Hypervisor{hvVBox}, write: writeVagrantVirtualBox},
}

func init() {
	for name, f := range table {
		f.Name = name
		table[name] = f
	}
}

// ErrUnknownFormat is wrapped by Lookup's error for a name not in the table.
var ErrUnknownFormat = errors.New("unknown output format")

// Lookup returns the format called name.
func Lookup(name string) (Format, error) {
	f, ok := table[name]
	if !ok {
		return Format{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownFormat, name, strings.Join(Names(), ", "))
	}
	return f, nil
}

// Names lists all format names, sorted.
func Names() []string {
	names := make([]string, 0, len(table))
	for n := range table {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NonProduction lists the formats of names that are built from dev/test
// variants only (Vagrant boxes); unknown names are not listed.
func NonProduction(names []string) []string {
	var out []string
	for _, n := range names {
		if table[n].NonProduction {
			out = append(out, n)
		}
	}
	return out
}

// CheckProduction is the production rule: a production variant must not
// be built as a NonProduction format (Vagrant boxes carry Vagrant's public
// insecure key). It returns the bad-input error naming those of names and
// variant; nil when production is false or none is. The builder checks
// templates and plans with it, convert --variant through CheckVariant.
func CheckProduction(variant string, production bool, names []string) error {
	if !production {
		return nil
	}
	if bad := NonProduction(names); len(bad) > 0 {
		return &InputError{Msg: fmt.Sprintf("%s: Vagrant boxes carry Vagrant's public insecure key and are built from dev/test variants only, not from the production variant %q",
			strings.Join(bad, ", "), variant)}
	}
	return nil
}

// CheckVariant is CheckProduction for a variant known only by its name
// (ecs-image convert --variant): "production" and "prod" are production.
func CheckVariant(variant string, names []string) error {
	v := strings.ToLower(strings.TrimSpace(variant))
	return CheckProduction(variant, v == "production" || v == "prod", names)
}

// Options describe the virtual machine written into OVF descriptors and
// Vagrant boxes. Zero values take the defaults.
type Options struct {
	Product   string // product name (OVF ProductSection, VM name); default "ECS appliance"
	Vendor    string // default "ECS"
	Version   string // product version; default "0"
	CPUs      int    // default 2
	MemoryMiB int    // default 2048

	// GrainStores is a directory of package grainstore's stores ("": none):
	// a stream VMDK written by vmdkstream copies the compressed grains it
	// shares with the last one written for the same base name, size and
	// deflate level instead of deflating them again, and is kept there
	// (hard-linked) for the next.
	GrainStores string
	// NoGrainReuse keeps the stream VMDK in GrainStores without copying
	// grains from it (a build with --no-cache).
	NoGrainReuse bool
}

func (o Options) withDefaults() Options {
	if o.Product == "" {
		o.Product = "ECS appliance"
	}
	if o.Vendor == "" {
		o.Vendor = "ECS"
	}
	if o.Version == "" {
		o.Version = "0"
	}
	if o.CPUs <= 0 {
		o.CPUs = 2
	}
	if o.MemoryMiB <= 0 {
		o.MemoryMiB = 2048
	}
	return o
}

// InputError is a problem with what the user handed in (bad image, unknown
// format, production variant); commands map it to exit code 2.
type InputError struct {
	Path string // offending file, if any
	Msg  string
}

func (e *InputError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// IsBadInput reports whether err is caused by bad input to this package.
func IsBadInput(err error) bool {
	var ie *InputError
	return errors.As(err, &ie) || errors.Is(err, ErrUnknownFormat)
}

// ForFile returns the format whose extension ends name (the longest match:
// "x.ami.vmdk" is ami, not vmdk), or "" if none does.
func ForFile(name string) string {
	best, bestLen := "", 0
	for n, f := range table {
		if strings.HasSuffix(name, f.Ext) && len(f.Ext) > bestLen {
			best, bestLen = n, len(f.Ext)
		}
	}
	return best
}
