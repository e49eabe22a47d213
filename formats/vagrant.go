package formats

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
)

// VagrantInsecurePublicKey is Vagrant's well-known insecure public key
// (keys/vagrant.pub in Vagrant). `vagrant up` logs in with its private half
// and replaces it with a fresh key pair on first boot.
const VagrantInsecurePublicKey = "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key"

// VagrantProvisionScript is the POSIX shell script (run as root in the
// guest) that gives a dev/test image Vagrant's conventions: a `vagrant`
// user (password "vagrant") with the insecure public key and passwordless
// sudo. The builder runs it for dev/test variants that emit a Vagrant box;
// it never belongs in a production image (see CheckVariant).
var VagrantProvisionScript = `#!/bin/sh
# Vagrant base box conventions (dev/test variants only).
set -eu
if ! id vagrant >/dev/null 2>&1; then
  useradd --create-home --user-group --shell /bin/bash vagrant
fi
echo 'vagrant:vagrant' | chpasswd
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
printf '%s\n' '` + VagrantInsecurePublicKey + `' >/home/vagrant/.ssh/authorized_keys
chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys
chmod 0600 /home/vagrant/.ssh/authorized_keys
install -d -m 0755 /etc/sudoers.d
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' >/etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
if command -v visudo >/dev/null 2>&1; then visudo -cf /etc/sudoers.d/vagrant >/dev/null; fi
# Vagrant connects by IP: skip reverse DNS, which stalls logins without DNS.
if [ -d /etc/ssh/sshd_config.d ]; then
  printf 'UseDNS no\n' >/etc/ssh/sshd_config.d/10-vagrant.conf
fi
`

// vagrantMetadata is a box's metadata.json.
type vagrantMetadata struct {
	Provider    string `json:"provider"`
	Format      string `json:"format,omitempty"`
	VirtualSize int64  `json:"virtual_size,omitempty"` // GiB, rounded up
}

func vagrantfile(provider string, o Options, extra string) []byte {
	return []byte(fmt.Sprintf(`# Vagrantfile shipped inside the %s box (%s provider).
# The appliance gets its configuration from env.yml, not from /vagrant:
# the default synced folder is disabled.
Vagrant.configure("2") do |config|
%s  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :%s do |p|
    p.cpus = %d
    p.memory = %d
  end
end
`, rubyString(o.Product), provider, extra, provider, o.CPUs, o.MemoryMiB))
}

func rubyString(s string) string {
	return strings.NewReplacer("\n", " ", "#", "").Replace(s)
}

// writeVagrantLibvirt writes a vagrant-libvirt box: metadata.json,
// Vagrantfile and box.img (compressed qcow2) in a tar.gz.
func writeVagrantLibvirt(ctx context.Context, j *job) error {
	img, err := j.compressedQcow2(ctx)
	if err != nil {
		return err
	}
	meta, _ := json.MarshalIndent(vagrantMetadata{Provider: "libvirt", Format: "qcow2", VirtualSize: roundUp(j.in.VirtualSize, gib) / gib}, "", "  ")
	files := []tarFile{
		{name: "metadata.json", data: append(meta, '\n')},
		{name: "Vagrantfile", data: vagrantfile("libvirt", j.opts, "")},
		{name: "box.img", path: img},
	}
	return writeTar(ctx, j, j.out, tar.FormatUSTAR, files, boxGzipWriter)
}

// writeVagrantVirtualBox writes a VirtualBox box: box.ovf, box.mf,
// box-disk001.vmdk, metadata.json and Vagrantfile in a tar.gz.
func writeVagrantVirtualBox(ctx context.Context, j *job) error {
	const disk = "box-disk001.vmdk"
	vmdk, _, err := j.streamVMDK(ctx, 1)
	if err != nil {
		return err
	}
	mac := boxMAC(j.base)
	p := ovfParams{Name: j.base, Product: j.opts.Product, Vendor: j.opts.Vendor, Version: j.opts.Version,
		CPUs: j.opts.CPUs, MemoryMiB: j.opts.MemoryMiB, DiskFile: disk,
		SystemType: "virtualbox-2.2", ControllerType: 20, ControllerSubType: "AHCI", NICSubType: "E1000", MAC: mac}
	meta, _ := json.MarshalIndent(vagrantMetadata{Provider: "virtualbox"}, "", "  ")
	extra := []tarFile{
		{name: "metadata.json", data: append(meta, '\n')},
		{name: "Vagrantfile", data: vagrantfile("virtualbox", j.opts, fmt.Sprintf("  config.vm.base_mac = %q\n", mac))},
	}
	return writeOVFTar(ctx, j, j.out, "box.ovf", "box.mf", p, vmdk, disk, tar.FormatUSTAR, extra, boxGzipWriter)
}

// boxMAC derives a stable VirtualBox MAC (OUI 08:00:27) from the box name.
func boxMAC(name string) string {
	h := sha256.Sum256([]byte(name))
	return "080027" + strings.ToUpper(hex.EncodeToString(h[:3]))
}
