package formats

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeModules writes a kernel modules directory: builtin drivers listed in
// modules.builtin, modules in modules.dep with their files.
func fakeModules(t *testing.T, version string, builtin, modules []string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "lib", "modules", version)
	var b, d strings.Builder
	for _, m := range builtin {
		b.WriteString("kernel/drivers/" + m + ".ko\n")
	}
	for _, m := range modules {
		rel := "kernel/drivers/x/" + m
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, rel), []byte("ko"), 0o644); err != nil {
			t.Fatal(err)
		}
		d.WriteString(rel + ": kernel/drivers/x/dep.ko\n")
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(b.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(d.String()), 0o644)
	return dir
}

// Debian's generic kernel (linux-image-amd64): everything, some built in.
var genericModules = []string{"virtio_pci.ko", "virtio_blk.ko", "virtio_scsi.ko", "ahci.ko", "ata_piix.ko", "mptspi.ko",
	"vmw_pvscsi.ko", "hv_vmbus.ko", "hv_storvsc.ko", "nvme.ko", "xen-blkfront.ko", "sd_mod.ko", "sr_mod.ko", "isofs.ko"}

// Debian's cloud kernel (linux-image-cloud-amd64, 6.1.0-50): read from a
// real image — no ahci, no mptspi; nvme built in; modules xz-compressed in
// later releases.
var cloudModules = []string{"virtio_pci.ko", "virtio_blk.ko", "virtio_scsi.ko.xz", "ata_piix.ko", "vmw_pvscsi.ko",
	"hv_vmbus.ko", "hv_storvsc.ko", "xen-blkfront.ko", "sd_mod.ko", "sr_mod.ko", "isofs.ko"}

func TestReadKernelDrivers(t *testing.T) {
	dir := fakeModules(t, "6.1.0-50-cloud-amd64", []string{"nvme/host/nvme"}, cloudModules)
	// A module listed in modules.dep whose file is gone does not count.
	os.WriteFile(filepath.Join(dir, "modules.dep"), append(must(os.ReadFile(filepath.Join(dir, "modules.dep"))), "kernel/drivers/ata/ahci.ko:\n"...), 0o644)
	k, err := ReadKernelDrivers(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != "6.1.0-50-cloud-amd64" {
		t.Errorf("version %q", k.Version)
	}
	for name, want := range map[string]bool{"nvme": true, "xen_blkfront": true, "xen-blkfront": true, "virtio_scsi": true, "ahci": false, "mptspi": false, "ata_piix": true} {
		if k.Has(name) != want {
			t.Errorf("Has(%s) = %v", name, !want)
		}
	}
	if got := strings.Join(k.Present([]string{"ahci", "ata_piix", "nvme"}), ","); got != "ata_piix,nvme" {
		t.Errorf("Present = %s", got)
	}
	if _, err := ReadKernelDrivers(filepath.Join(t.TempDir(), "6.1.0-1-amd64")); err == nil || !strings.Contains(err.Error(), "6.1.0-1-amd64") {
		t.Errorf("missing directory: %v", err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestCheckDrivers(t *testing.T) {
	generic, err := ReadKernelDrivers(fakeModules(t, "6.1.0-50-amd64", []string{"scsi/sd_mod"}, genericModules))
	if err != nil {
		t.Fatal(err)
	}
	cloud, err := ReadKernelDrivers(fakeModules(t, "6.1.0-50-cloud-amd64", []string{"nvme/host/nvme"}, cloudModules))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckDrivers(generic, Names()); err != nil {
		t.Errorf("generic kernel: %v", err)
	}
	for _, ok := range []string{"vhdx", "vhd", "gce", "ami", "vagrant-libvirt"} {
		if err := CheckDrivers(cloud, []string{ok}); err != nil {
			t.Errorf("cloud kernel, %s: %v", ok, err)
		}
	}
	err = CheckDrivers(cloud, []string{"qcow2", "ova", "vhdx"})
	if !IsDriverError(err) {
		t.Fatalf("cloud kernel, qcow2+ova: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"the image's kernel 6.1.0-50-cloud-amd64 lacks drivers",
		"qcow2 on KVM/libvirt q35 (virt-manager's default): no ahci driver (the seed CD-ROM on SATA (AHCI), CONFIG_SATA_AHCI)",
		"ova on VMware/VirtualBox, the OVA's LSI Logic controller, SATA CD-ROM: no mptspi driver (the boot disk on LSI Logic parallel SCSI, CONFIG_FUSION_SPI)",
		"kernel: generic",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "i440fx") || strings.Contains(msg, "vhdx") {
		t.Errorf("message names what the kernel has:\n%s", msg)
	}
	// A kernel without sr_mod cannot read any seed CD-ROM.
	noSR, _ := ReadKernelDrivers(fakeModules(t, "x", nil, []string{"virtio_pci.ko", "virtio_blk.ko", "ahci.ko", "ata_piix.ko", "isofs.ko", "sd_mod.ko"}))
	if err := CheckDrivers(noSR, []string{"qcow2"}); err == nil || strings.Count(err.Error(), "no sr_mod driver") != 2 {
		t.Errorf("no sr_mod: %v", err)
	}
}

// Every format says where it runs, and every driver of the table names its
// kernel option.
func TestHypervisorTable(t *testing.T) {
	for _, n := range Names() {
		if len(Hypervisors(n)) == 0 {
			t.Errorf("format %s: no hypervisors", n)
		}
		for _, h := range Hypervisors(n) {
			if h.Disk.Name == "" || len(h.Disk.Drivers) == 0 {
				t.Errorf("%s/%s: no disk controller", n, h.Name)
			}
			if h.CDROM != nil && h.CDROM.SeedBus == "" && !strings.Contains(h.Name, "Hyper-V") {
				t.Errorf("%s/%s: a CD-ROM controller ecs-image test cannot emulate", n, h.Name)
			}
		}
	}
	for _, d := range AllDrivers() {
		if driverConfig[d] == "" {
			t.Errorf("driver %s: no kernel option", d)
		}
	}
}
