package formats

// Where each output format runs: the hypervisors' default storage
// controllers for the boot disk and for a CD-ROM (where the appliance reads
// its cidata seed), and the Linux drivers a guest needs for them. The
// builder checks the image's kernel against this table (CheckDrivers) for
// every requested format; `ecs-image test --machine/--seed-bus` emulates
// the controllers QEMU has.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Controller is a storage controller and the Linux drivers (module names,
// dashes as underscores) a guest needs to use a disk or CD-ROM on it.
type Controller struct {
	Name    string
	Drivers []string
	// SeedBus is the `ecs-image test --seed-bus` value that emulates it
	// ("" when QEMU cannot).
	SeedBus string
	// SCSI: disks on it are SCSI disks to Linux (sd_mod).
	SCSI bool
}

// Hypervisor is where a format runs: its boot disk's and CD-ROM's default
// controllers. CDROM is nil where the appliance's env.yml comes from the
// platform's metadata (EC2, GCE, Azure) or no seed is used (Vagrant).
type Hypervisor struct {
	Name  string
	Disk  Controller
	CDROM *Controller
	// Machine is the `ecs-image test --machine` value that emulates it
	// ("" when QEMU cannot).
	Machine string
}

// The controllers.
var (
	ctrlVirtioBlk  = Controller{Name: "virtio-blk", Drivers: []string{"virtio_pci", "virtio_blk"}, SeedBus: "virtio"}
	ctrlVirtioSCSI = Controller{Name: "virtio-scsi", Drivers: []string{"virtio_pci", "virtio_scsi"}, SeedBus: "scsi", SCSI: true}
	ctrlAHCI       = Controller{Name: "SATA (AHCI)", Drivers: []string{"ahci"}, SeedBus: "sata", SCSI: true}
	ctrlPIIX       = Controller{Name: "IDE (PIIX)", Drivers: []string{"ata_piix"}, SeedBus: "ide", SCSI: true}
	ctrlLSILogic   = Controller{Name: "LSI Logic parallel SCSI", Drivers: []string{"mptspi"}, SCSI: true}
	ctrlPVSCSI     = Controller{Name: "VMware PVSCSI", Drivers: []string{"vmw_pvscsi"}, SeedBus: "pvscsi", SCSI: true}
	ctrlStorVSC    = Controller{Name: "Hyper-V synthetic SCSI (VMBus)", Drivers: []string{"hv_vmbus", "hv_storvsc"}, SCSI: true}
	ctrlNVMe       = Controller{Name: "NVMe", Drivers: []string{"nvme"}}
	ctrlXenBlk     = Controller{Name: "Xen PV block", Drivers: []string{"xen_blkfront"}}
)

// The hypervisors.
var (
	hvKVMQ35  = Hypervisor{Name: "KVM/libvirt q35 (virt-manager's default)", Disk: ctrlVirtioBlk, CDROM: &ctrlAHCI, Machine: "q35"}
	hvKVMPC   = Hypervisor{Name: "KVM/libvirt i440fx", Disk: ctrlVirtioBlk, CDROM: &ctrlPIIX, Machine: "pc"}
	hvVMware  = Hypervisor{Name: "VMware vSphere (new VM, Debian 64-bit)", Disk: ctrlPVSCSI, CDROM: &ctrlAHCI}
	hvVMwareI = Hypervisor{Name: "VMware (the VMDK's lsilogic adapter type, CD-ROM on IDE)", Disk: ctrlLSILogic, CDROM: &ctrlPIIX}
	hvOVA     = Hypervisor{Name: "VMware/VirtualBox, the OVA's LSI Logic controller, SATA CD-ROM", Disk: ctrlLSILogic, CDROM: &ctrlAHCI}
	hvOVAI    = Hypervisor{Name: "VMware/VirtualBox, the OVA's LSI Logic controller, IDE CD-ROM", Disk: ctrlLSILogic, CDROM: &ctrlPIIX}
	// Generation 1 serves the IDE boot disk through hv_storvsc (ata_piix
	// leaves it alone on Hyper-V); the DVD stays on the emulated IDE.
	hvHyperV1 = Hypervisor{Name: "Hyper-V generation 1", Disk: ctrlStorVSC, CDROM: &ctrlPIIX}
	hvHyperV2 = Hypervisor{Name: "Hyper-V generation 2", Disk: ctrlStorVSC, CDROM: &ctrlStorVSC}
	hvAzure   = Hypervisor{Name: "Azure (env.yml as custom data)", Disk: ctrlStorVSC}
	hvGCE     = Hypervisor{Name: "GCE (virtio-scsi; env.yml in metadata)", Disk: ctrlVirtioSCSI}
	hvGCENVMe = Hypervisor{Name: "GCE (NVMe machine types)", Disk: ctrlNVMe}
	hvEC2     = Hypervisor{Name: "EC2 Nitro (NVMe; env.yml as user data)", Disk: ctrlNVMe}
	hvEC2Xen  = Hypervisor{Name: "EC2 Xen (older instance types)", Disk: ctrlXenBlk}
	hvVagrant = Hypervisor{Name: "vagrant-libvirt (provisioned over SSH, no seed)", Disk: ctrlVirtioBlk}
	hvVBox    = Hypervisor{Name: "VirtualBox (the box's SATA controller, no seed)", Disk: ctrlAHCI}
)

// cdromDrivers are what a seed CD-ROM needs besides its controller's
// driver: the SCSI CD-ROM driver and ISO 9660.
var cdromDrivers = []string{"sr_mod", "isofs"}

// Hypervisors returns where format name runs (nil for unknown names).
func Hypervisors(name string) []Hypervisor { return table[name].Hypervisors }

// needs lists what a guest on h needs: each driver and what for.
func (h Hypervisor) needs() [][2]string {
	var out [][2]string
	for _, d := range h.Disk.Drivers {
		out = append(out, [2]string{d, "the boot disk on " + h.Disk.Name})
	}
	if h.Disk.SCSI {
		out = append(out, [2]string{"sd_mod", "the boot disk on " + h.Disk.Name})
	}
	if h.CDROM != nil {
		for _, d := range append(append([]string(nil), h.CDROM.Drivers...), cdromDrivers...) {
			out = append(out, [2]string{d, "the seed CD-ROM on " + h.CDROM.Name})
		}
	}
	return out
}

// AllDrivers lists every driver the table names, sorted.
func AllDrivers() []string {
	seen := map[string]bool{}
	for _, f := range table {
		for _, h := range f.Hypervisors {
			for _, n := range h.needs() {
				seen[n[0]] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for d := range seen {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// driverConfig names each driver's kernel configuration option.
var driverConfig = map[string]string{
	"virtio_pci": "CONFIG_VIRTIO_PCI", "virtio_blk": "CONFIG_VIRTIO_BLK", "virtio_scsi": "CONFIG_SCSI_VIRTIO",
	"ahci": "CONFIG_SATA_AHCI", "ata_piix": "CONFIG_ATA_PIIX", "mptspi": "CONFIG_FUSION_SPI",
	"vmw_pvscsi": "CONFIG_VMWARE_PVSCSI", "hv_vmbus": "CONFIG_HYPERV", "hv_storvsc": "CONFIG_HYPERV_STORAGE",
	"nvme": "CONFIG_BLK_DEV_NVME", "xen_blkfront": "CONFIG_XEN_BLKDEV_FRONTEND", "sd_mod": "CONFIG_BLK_DEV_SD",
	"sr_mod": "CONFIG_BLK_DEV_SR", "isofs": "CONFIG_ISO9660_FS",
}

// KernelDrivers is what an image's kernel carries: the drivers built into
// it and those it has as modules.
type KernelDrivers struct {
	Version string
	Builtin map[string]bool
	Modules map[string]bool
}

// Has reports whether the kernel has driver name, built in or as a module.
func (k *KernelDrivers) Has(name string) bool {
	n := moduleName(name)
	return k.Builtin[n] || k.Modules[n]
}

// Present lists which of names the kernel has.
func (k *KernelDrivers) Present(names []string) []string {
	var out []string
	for _, n := range names {
		if k.Has(n) {
			out = append(out, n)
		}
	}
	return out
}

// moduleName is a module's name as modprobe knows it: "kernel/drivers/ata/
// ata_piix.ko.xz" → "ata_piix", dashes as underscores.
func moduleName(p string) string {
	n := path.Base(p)
	if i := strings.Index(n, ".ko"); i >= 0 {
		n = n[:i]
	}
	return strings.ReplaceAll(n, "-", "_")
}

// ReadKernelDrivers reads a kernel's modules directory (/lib/modules/
// VERSION of the image): modules.builtin lists the built-in drivers,
// modules.dep the modules (whose files must exist).
func ReadKernelDrivers(dir string) (*KernelDrivers, error) {
	k := &KernelDrivers{Version: filepath.Base(dir), Builtin: map[string]bool{}, Modules: map[string]bool{}}
	read := func(name string, line func(string)) error {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			line(sc.Text())
		}
		return sc.Err()
	}
	if err := read("modules.builtin", func(l string) {
		if l = strings.TrimSpace(l); l != "" {
			k.Builtin[moduleName(l)] = true
		}
	}); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	if err := read("modules.dep", func(l string) {
		mod, _, ok := strings.Cut(l, ":")
		if !ok || mod == "" {
			return
		}
		p := mod
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, mod)
		}
		if _, err := os.Stat(p); err == nil {
			k.Modules[moduleName(mod)] = true
		}
	}); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	return k, nil
}

// DriverError lists what an image's kernel lacks for the requested formats.
type DriverError struct {
	Kernel  string
	Missing []MissingDriver
}

// MissingDriver is one driver a format's hypervisor needs.
type MissingDriver struct {
	Format, Hypervisor, Driver, For string
}

func (e *DriverError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the image's kernel %s lacks drivers its output formats need:", e.Kernel)
	for _, m := range e.Missing {
		cfg := driverConfig[m.Driver]
		if cfg != "" {
			cfg = ", " + cfg
		}
		fmt.Fprintf(&b, "\n  %s on %s: no %s driver (%s%s)", m.Format, m.Hypervisor, m.Driver, m.For, cfg)
	}
	b.WriteString("\nfix: set `kernel: generic` in the template (installs Debian's generic kernel linux-image-amd64 in place of the cloud kernel), " +
		"or build from a base with a kernel that has these drivers, or drop these formats from the outputs")
	return b.String()
}

// CheckDrivers returns a *DriverError when kernel k lacks a driver that a
// hypervisor of one of the formats needs for its boot disk or seed CD-ROM.
func CheckDrivers(k *KernelDrivers, formatNames []string) error {
	e := &DriverError{Kernel: k.Version}
	for _, f := range formatNames {
		for _, h := range table[f].Hypervisors {
			seen := map[string]bool{}
			for _, n := range h.needs() {
				if seen[n[0]] || k.Has(n[0]) {
					continue
				}
				seen[n[0]] = true
				e.Missing = append(e.Missing, MissingDriver{Format: f, Hypervisor: h.Name, Driver: n[0], For: n[1]})
			}
		}
	}
	if len(e.Missing) > 0 {
		return e
	}
	return nil
}

// IsDriverError reports whether err is (or wraps) a *DriverError.
func IsDriverError(err error) bool {
	var de *DriverError
	return errors.As(err, &de)
}
