// Package qemu runs virtual machines under QEMU for building and testing
// appliance images: accelerator detection (KVM when it really works, else
// TCG), argument building, user-mode networking with host port forwards on
// free loopback ports, a serial console log, a QMP control socket, graceful
// ACPI shutdown, and qcow2 overlays through qemu-img.
package qemu

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Firmware values for Config.Firmware.
const (
	FirmwareBIOS = "bios" // SeaBIOS (QEMU's default)
	FirmwareUEFI = "uefi" // OVMF, from Debian's ovmf package
)

// Default OVMF images of Debian's ovmf package (4 MiB flash layout).
var (
	DefaultUEFICode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	DefaultUEFIVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Machine types for Config.Machine.
const (
	MachineQ35 = "q35" // ICH9 chipset: an AHCI (SATA) controller, no IDE (QEMU's and libvirt's modern default)
	MachinePC  = "pc"  // i440fx chipset: a PIIX IDE controller
)

// Seed buses for Config.SeedBus: where the CDROMs (seeds) are attached.
const (
	SeedSATA   = "sata"   // CD-ROM on an AHCI controller (q35's own; added on pc); Linux: ahci, sr_mod
	SeedIDE    = "ide"    // CD-ROM on PIIX IDE (pc only); Linux: ata_piix, sr_mod
	SeedSCSI   = "scsi"   // CD-ROM on virtio-scsi; Linux: virtio_scsi, sr_mod
	SeedPVSCSI = "pvscsi" // CD-ROM on VMware's paravirtual SCSI; Linux: vmw_pvscsi, sr_mod
	SeedVirtio = "virtio" // a read-only virtio disk holding the image; Linux: virtio_blk
)

// SeedBuses lists the seed buses.
var SeedBuses = []string{SeedSATA, SeedIDE, SeedSCSI, SeedPVSCSI, SeedVirtio}

// Forward forwards a host TCP port on 127.0.0.1 to a guest TCP port.
// Host 0 means "pick a free port" (done by Start).
type Forward struct {
	Guest int
	Host  int
}

// Config describes one virtual machine. The zero value of every optional
// field has a sane default.
type Config struct {
	// Name labels the VM in QEMU (-name) and in log lines.
	Name string
	// Binary is the QEMU system emulator (default qemu-system-x86_64).
	Binary string

	// Disk is the boot disk image; DiskFormat its format (qcow2, raw,
	// vmdk, vhdx, vpc; default qcow2).
	Disk       string
	DiskFormat string
	// DiskCache is QEMU's cache mode for the disk (default writeback;
	// "unsafe" ignores guest flushes — fast, for throw-away build VMs that
	// are shut down cleanly).
	DiskCache string
	// Snapshot makes QEMU write every disk change to a temporary file, so
	// the disk image is never modified (-snapshot). Prefer an Overlay when
	// the changes should be kept.
	Snapshot bool
	// CDROMs are attached read-only as CD-ROM drives (e.g. a cidata seed)
	// on SeedBus.
	CDROMs []string
	// SeedBus is where CDROMs are attached (SeedSATA, SeedIDE, SeedSCSI,
	// SeedPVSCSI, SeedVirtio); default the machine's own CD-ROM controller:
	// SATA on q35, IDE on pc. SeedVirtio attaches them as read-only virtio
	// disks, which every kernel that boots from the virtio system disk can
	// read (cloud-init finds a cidata label on any block device).
	SeedBus string
	// Machine is QEMU's machine type: MachineQ35 (default) or MachinePC.
	Machine string

	// Memory in MiB (default 1024); CPUs (default 2).
	Memory int
	CPUs   int

	// Firmware is "bios" (default) or "uefi". For UEFI, UEFICode is the
	// read-only OVMF code image (default DefaultUEFICode) and UEFIVars the
	// writable variable store; Start copies DefaultUEFIVars to a temporary
	// file when UEFIVars is empty.
	Firmware string
	UEFICode string
	UEFIVars string

	// Kernel, Initrd and Append boot a Linux kernel directly (QEMU loads
	// them through fw_cfg), skipping the firmware's boot loader: under TCG,
	// GRUB reading a kernel and a 36 MiB initrd through BIOS disk calls
	// costs tens of seconds. Empty: boot from the disk.
	Kernel string
	Initrd string
	Append string

	// Forwards are guest TCP ports reachable on host loopback ports.
	Forwards []Forward

	// SerialLog is the file the first serial port (ttyS0) is written to.
	// Start uses a temporary file when empty.
	SerialLog string
	// QMPSocket is the unix socket of the QMP control channel; Start uses a
	// temporary path when empty. Args omits QMP when it is empty.
	QMPSocket string

	// Accel is the accelerator; Start calls DetectAccel when empty.
	Accel Accel
	// AccelForced keeps KVM even when the guest stalls (a template's
	// `accel: kvm`); ECS_IMAGE_ACCEL=kvm does the same. Otherwise a guest
	// that stays silent on its serial console under KVM is restarted under
	// TCG (see Start).
	AccelForced bool

	// Detachable starts QEMU so that it can outlive ecs-image (no parent
	// death signal): Machine.Detach then leaves it running, e.g. for a
	// build that stops on error with --on-error=abort.
	Detachable bool

	// DataDisks are attached read-write after the boot disk as virtio
	// block devices, in order (vdb, vdc, … in a Linux guest): data
	// volumes the guest writes to, e.g. ecs-data and ecs-volatile.
	DataDisks []DataDisk

	// ExtraArgs are appended to QEMU's command line verbatim.
	ExtraArgs []string

	// serialAppend keeps the serial log of an earlier run (a restart).
	serialAppend bool
}

// Defaults for Config.
const (
	DefaultBinary = "qemu-system-x86_64"
	DefaultMemory = 1024
	DefaultCPUs   = 2
)

func (c *Config) binary() string {
	if c.Binary != "" {
		return c.Binary
	}
	return SystemBinary()
}

// BinaryEnv names the QEMU system emulator to run instead of
// DefaultBinary (a path or a name on $PATH), e.g. a wrapper script.
const BinaryEnv = "ECS_IMAGE_QEMU"

// SystemBinary is the QEMU system emulator: $ECS_IMAGE_QEMU, else
// DefaultBinary.
func SystemBinary() string {
	if b := strings.TrimSpace(os.Getenv(BinaryEnv)); b != "" {
		return b
	}
	return DefaultBinary
}

func (c *Config) memory() int {
	if c.Memory > 0 {
		return c.Memory
	}
	return DefaultMemory
}

func (c *Config) cpus() int {
	if c.CPUs > 0 {
		return c.CPUs
	}
	return DefaultCPUs
}

func (c *Config) machine() string {
	if c.Machine != "" {
		return c.Machine
	}
	return MachineQ35
}

// SeedBusUsed is the bus CDROMs are attached to: SeedBus, or the
// machine's CD-ROM controller.
func (c *Config) SeedBusUsed() string {
	if c.SeedBus != "" {
		return c.SeedBus
	}
	if c.machine() == MachinePC {
		return SeedIDE
	}
	return SeedSATA
}

func (c *Config) diskFormat() string {
	if c.DiskFormat != "" {
		return c.DiskFormat
	}
	return "qcow2"
}

// Validate checks the configuration without touching the file system.
func (c *Config) Validate() error {
	var errs []error
	if c.Disk == "" {
		errs = append(errs, errors.New("no disk image"))
	}
	if c.Memory < 0 {
		errs = append(errs, fmt.Errorf("memory %d MiB: must be positive", c.Memory))
	}
	if c.CPUs < 0 {
		errs = append(errs, fmt.Errorf("cpus %d: must be positive", c.CPUs))
	}
	switch c.Firmware {
	case "", FirmwareBIOS, FirmwareUEFI:
	default:
		errs = append(errs, fmt.Errorf("firmware %q: want %q or %q", c.Firmware, FirmwareBIOS, FirmwareUEFI))
	}
	switch c.Machine {
	case "", MachineQ35, MachinePC:
	default:
		errs = append(errs, fmt.Errorf("machine %q: want %q or %q", c.Machine, MachineQ35, MachinePC))
	}
	switch c.SeedBus {
	case "", SeedSATA, SeedSCSI, SeedPVSCSI, SeedVirtio:
	case SeedIDE:
		if c.machine() != MachinePC {
			errs = append(errs, fmt.Errorf("seed bus ide: the %s machine has no IDE controller (its CD-ROMs are SATA); use machine %q", c.machine(), MachinePC))
		}
	default:
		errs = append(errs, fmt.Errorf("seed bus %q: want one of %s", c.SeedBus, strings.Join(SeedBuses, ", ")))
	}
	switch c.Accel {
	case "", AccelKVM, AccelTCG:
	default:
		errs = append(errs, fmt.Errorf("accelerator %q: want %q or %q", c.Accel, AccelKVM, AccelTCG))
	}
	switch c.DiskCache {
	case "", "writeback", "none", "writethrough", "directsync", "unsafe":
	default:
		errs = append(errs, fmt.Errorf("disk cache %q: want writeback, none, writethrough, directsync or unsafe", c.DiskCache))
	}
	if c.Kernel == "" && (c.Initrd != "" || c.Append != "") {
		errs = append(errs, errors.New("an initrd or kernel command line without a kernel"))
	}
	seen := map[int]bool{}
	for _, f := range c.Forwards {
		if f.Guest <= 0 || f.Guest > 65535 {
			errs = append(errs, fmt.Errorf("forward: guest port %d out of range", f.Guest))
		}
		if f.Host < 0 || f.Host > 65535 {
			errs = append(errs, fmt.Errorf("forward: host port %d out of range", f.Host))
		}
		if seen[f.Guest] {
			errs = append(errs, fmt.Errorf("forward: guest port %d forwarded twice", f.Guest))
		}
		seen[f.Guest] = true
	}
	for _, d := range c.DataDisks {
		if d.File == "" || d.Format == "" {
			errs = append(errs, fmt.Errorf("data disk %q: file and format are required", d.File))
		}
	}
	paths := append([]string{c.Disk, c.SerialLog, c.QMPSocket, c.UEFICode, c.UEFIVars, c.Kernel, c.Initrd}, c.CDROMs...)
	for _, d := range c.DataDisks {
		paths = append(paths, d.File)
	}
	for _, p := range paths {
		if strings.ContainsAny(p, "\n\x00") {
			errs = append(errs, fmt.Errorf("path %q: newlines are not supported", p))
		}
	}
	return errors.Join(errs...)
}

// Args returns QEMU's command line (without the binary). It is pure: it
// touches nothing. Every forward needs a host port, and Accel must be set
// (Start resolves both).
func (c *Config) Args() ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Accel == "" {
		return nil, errors.New("no accelerator chosen")
	}
	a := []string{}
	if c.Name != "" {
		a = append(a, "-name", c.Name)
	}
	a = append(a, "-machine", c.machine(), "-accel", string(c.Accel))
	if c.Accel == AccelKVM {
		a = append(a, "-cpu", "host")
	} else {
		a = append(a, "-cpu", "max")
	}
	a = append(a,
		"-m", strconv.Itoa(c.memory()),
		"-smp", strconv.Itoa(c.cpus()),
	)
	if c.Firmware == FirmwareUEFI {
		code := c.UEFICode
		if code == "" {
			code = DefaultUEFICode
		}
		if c.UEFIVars == "" {
			return nil, errors.New("uefi: no writable variable store (UEFIVars)")
		}
		a = append(a,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+esc(code),
			"-drive", "if=pflash,format=raw,unit=1,file="+esc(c.UEFIVars),
		)
	}
	cache := c.DiskCache
	if cache == "" {
		cache = "writeback"
	}
	a = append(a, "-drive", fmt.Sprintf("file=%s,format=%s,if=virtio,cache=%s,discard=unmap,detect-zeroes=unmap", esc(c.Disk), c.diskFormat(), cache))
	for _, d := range c.DataDisks {
		a = append(a, "-drive", fmt.Sprintf("file=%s,format=%s,if=virtio,cache=writeback,discard=unmap", esc(d.File), d.Format))
	}
	a = append(a, c.seedArgs()...)
	if c.Snapshot {
		a = append(a, "-snapshot")
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Append != "" {
			a = append(a, "-append", c.Append)
		}
	}
	netdev := "user,id=net0"
	for _, f := range c.Forwards {
		if f.Host == 0 {
			return nil, fmt.Errorf("forward of guest port %d: no host port allocated", f.Guest)
		}
		netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", f.Host, f.Guest)
	}
	a = append(a,
		"-netdev", netdev,
		"-device", "virtio-net-pci,netdev=net0",
		"-device", "virtio-rng-pci",
		"-display", "none",
		"-monitor", "none",
	)
	if c.SerialLog != "" {
		chardev := "file,id=serial0,path=" + esc(c.SerialLog)
		if c.serialAppend {
			chardev += ",append=on"
		}
		a = append(a, "-chardev", chardev, "-serial", "chardev:serial0")
	} else {
		a = append(a, "-serial", "none")
	}
	if c.QMPSocket != "" {
		a = append(a, "-qmp", "unix:"+esc(c.QMPSocket)+",server=on,wait=off")
	}
	a = append(a, c.ExtraArgs...)
	return a, nil
}

// seedArgs attach the CDROMs on the seed bus.
func (c *Config) seedArgs() []string {
	if len(c.CDROMs) == 0 {
		return nil
	}
	var a []string
	bus := c.SeedBusUsed()
	switch bus {
	case SeedSATA, SeedIDE:
		if bus == SeedIDE || c.machine() == MachineQ35 {
			// The machine's own controller: q35's AHCI, pc's PIIX IDE.
			for i, cd := range c.CDROMs {
				a = append(a, "-drive", fmt.Sprintf("file=%s,format=raw,if=ide,index=%d,media=cdrom,readonly=on", esc(cd), i))
			}
			return a
		}
		a = append(a, "-device", "ahci,id=seedahci")
	case SeedSCSI:
		a = append(a, "-device", "virtio-scsi-pci,id=seedscsi")
	case SeedPVSCSI:
		a = append(a, "-device", "pvscsi,id=seedscsi")
	case SeedVirtio:
		for _, cd := range c.CDROMs {
			a = append(a, "-drive", fmt.Sprintf("file=%s,format=raw,if=virtio,readonly=on", esc(cd)))
		}
		return a
	}
	for i, cd := range c.CDROMs {
		id := fmt.Sprintf("seed%d", i)
		a = append(a, "-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=%s,media=cdrom,readonly=on", esc(cd), id))
		if bus == SeedSATA {
			a = append(a, "-device", fmt.Sprintf("ide-cd,drive=%s,bus=seedahci.%d", id, i))
		} else {
			a = append(a, "-device", fmt.Sprintf("scsi-cd,drive=%s,bus=seedscsi.0,scsi-id=%d,lun=0", id, i))
		}
	}
	return a
}

// esc escapes a value for QEMU's comma-separated option syntax.
// DataDisk is a further disk of the guest: a file and its format (raw,
// qcow2).
type DataDisk struct{ File, Format string }

func esc(s string) string { return strings.ReplaceAll(s, ",", ",,") }
