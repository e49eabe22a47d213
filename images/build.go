package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/sirupsen/logrus"
)

// geteuid is os.Geteuid, replaceable in tests.
var geteuid = os.Geteuid

// BuildBase builds (or takes from the cache) the base described by opts and
// returns it. It needs root and mmdebstrap (or debootstrap), sfdisk, mke2fs,
// chroot and qemu-img.
func BuildBase(ctx context.Context, c *Cache, opts BuildOptions) (*Base, error) {
	r, err := NewRecipe(opts)
	if err != nil {
		return nil, err
	}
	tool, err := bootstrapTool(opts.Bootstrap)
	if err != nil {
		return nil, err
	}
	if filepath.Base(tool) == "debootstrap" {
		r.Bootstrap = "debootstrap"
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	key := r.Key()
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if e, err := c.Lookup(key); err != nil {
		return nil, err
	} else if e != nil {
		logrus.Infof("base %s/%s (%s%s) from cache: %s", r.Distro, r.Suite, formatSize(r.Size), r.kernelNote(), c.Path(e))
		return baseFromEntry(c, e, "", r.Distro), nil
	}
	if geteuid() != 0 {
		return nil, errors.New("base build needs root (it runs mmdebstrap, chroot and writes root-owned files into the disk image); run it as root, or use 'ecs-image base fetch' to download a cloud image instead")
	}
	tools, err := findBuildTools(tool)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	c.RemoveStale("build-" + key + "-")
	tmp, err := c.TempDir("build-" + key + "-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := safeRemoveAll(tmp); err != nil {
			logrus.Errorf("cleaning up %s: %v", tmp, err)
		}
	}()
	b := &builder{r: r, tools: tools, tmp: tmp, root: filepath.Join(tmp, "root")}
	qcow, err := b.run(ctx)
	if err != nil {
		return nil, err
	}
	e, err := c.Commit(key, r.Source(), "qcow2", qcow)
	if err != nil {
		return nil, err
	}
	logrus.Infof("base %s/%s%s built in %s: %s", r.Distro, r.Suite, r.kernelNote(), time.Since(start).Round(time.Second), c.Path(e))
	return baseFromEntry(c, e, "", r.Distro), nil
}

func baseFromEntry(c *Cache, e *Entry, name, distro string) *Base {
	user := "debian"
	if distro == "ubuntu" {
		user = "ubuntu"
	}
	return &Base{Name: name, Path: c.Path(e), Format: e.Format, Digest: e.Digest, User: user, Firmware: "bios", Arch: "amd64"}
}

type buildTools struct {
	bootstrap string // mmdebstrap or debootstrap path
	mm        bool
}

// bootstrapTool finds the bootstrap program: want is "mmdebstrap",
// "debootstrap" or "" for mmdebstrap with debootstrap as fallback.
func bootstrapTool(want string) (string, error) {
	switch want {
	case "", "mmdebstrap", "debootstrap":
	default:
		return "", &InputError{Field: "--bootstrap", Msg: fmt.Sprintf("%q: want mmdebstrap or debootstrap", want)}
	}
	for _, name := range []string{"mmdebstrap", "debootstrap"} {
		if want != "" && want != name {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	if want != "" {
		return "", fmt.Errorf("base build: %s not found (apt-get install %s)", want, want)
	}
	return "", errors.New("base build needs mmdebstrap or debootstrap (apt-get install mmdebstrap)")
}

func findBuildTools(bootstrap string) (*buildTools, error) {
	t := &buildTools{bootstrap: bootstrap, mm: filepath.Base(bootstrap) == "mmdebstrap"}
	for tool, pkg := range map[string]string{"sfdisk": "fdisk", "mke2fs": "e2fsprogs", "chroot": "coreutils", "qemu-img": "qemu-utils"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("base build needs %s (apt-get install %s)", tool, pkg)
		}
	}
	return t, nil
}

type builder struct {
	r     *Recipe
	tools *buildTools
	tmp   string
	root  string
	uuid  string
}

func (b *builder) run(ctx context.Context) (string, error) {
	phases := []struct {
		name string
		f    func(context.Context) error
	}{
		{"bootstrap root filesystem", b.bootstrap},
		{"configure system", b.configure},
		{"install boot loader files", b.bootFiles},
		{"make disk image", b.disk},
	}
	for i, p := range phases {
		t := time.Now()
		logrus.Infof("base build [%d/%d] %s", i+1, len(phases)+1, p.name)
		if err := p.f(ctx); err != nil {
			return "", fmt.Errorf("base build: %s: %w", p.name, err)
		}
		if err := ctx.Err(); err != nil {
			return "", err
		}
		logrus.Infof("base build [%d/%d] %s: done in %s", i+1, len(phases)+1, p.name, time.Since(t).Round(time.Second))
	}
	t := time.Now()
	logrus.Infof("base build [%d/%d] convert to compressed qcow2", len(phases)+1, len(phases)+1)
	out := filepath.Join(b.tmp, "disk.qcow2")
	if _, err := qemuimg.Run(ctx, "convert", "-f", "raw", "-O", "qcow2", "-c", "-m", "4", "-W",
		filepath.Join(b.tmp, "disk.raw"), out); err != nil {
		return "", fmt.Errorf("base build: convert: %w", err)
	}
	if _, err := Inspect(ctx, out, "qcow2"); err != nil {
		return "", fmt.Errorf("base build: %w", err)
	}
	logrus.Infof("base build [%d/%d] convert: done in %s", len(phases)+1, len(phases)+1, time.Since(t).Round(time.Second))
	return out, nil
}

func (b *builder) bootstrap(ctx context.Context) error {
	if !b.tools.mm {
		return b.debootstrap(ctx)
	}
	args := []string{"--mode=root", "--variant=minbase", "--format=directory",
		"--components=" + strings.Join(b.r.Components, ","),
		"--include=" + strings.Join(b.r.Packages, ","),
		"--aptopt=Acquire::Retries \"3\"",
		// No fsync per file: the tree is thrown away on failure anyway.
		"--dpkgopt=force-unsafe-io",
	}
	if b.r.Keyring != "" {
		args = append(args, "--keyring="+b.r.Keyring)
	}
	args = append(args, b.r.Suite, b.root, b.r.Mirror)
	return runLogged(ctx, "mmdebstrap", b.tools.bootstrap, args...)
}

// debootstrap makes a minimal system with debootstrap, then installs the
// recipe's packages with apt inside it (debootstrap's own --include cannot
// resolve virtual packages, e.g. python3-cryptography's dependencies).
func (b *builder) debootstrap(ctx context.Context) error {
	args := []string{"--variant=minbase", "--components=" + strings.Join(b.r.Components, ",")}
	if b.r.Keyring != "" {
		args = append(args, "--keyring="+b.r.Keyring)
	}
	args = append(args, b.r.Suite, b.root, b.r.Mirror)
	if err := runLogged(ctx, "debootstrap", b.tools.bootstrap, args...); err != nil {
		return err
	}
	unmount, err := mountChroot(b.root)
	defer unmount()
	if err != nil {
		return err
	}
	// No service starts inside the chroot.
	policy := filepath.Join(b.root, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return err
	}
	defer os.Remove(policy)
	apt := []string{b.root, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "Acquire::Retries=3"}
	if err := runLogged(ctx, "apt-get", "chroot", append(apt, "update")...); err != nil {
		return err
	}
	install := append(append(apt, "install", "-y", "--no-install-recommends", "-o", "Dpkg::Options::=--force-unsafe-io"), b.r.Packages...)
	if err := runLogged(ctx, "apt-get", "chroot", install...); err != nil {
		return err
	}
	return runLogged(ctx, "apt-get", "chroot", append(apt, "clean")...)
}

// configure writes the system configuration that makes the tree a
// bootable cloud image.
func (b *builder) configure(ctx context.Context) error {
	u, err := newUUID()
	if err != nil {
		return err
	}
	b.uuid = u
	hostname := b.r.Distro
	files := map[string]string{
		"etc/hostname": hostname + "\n",
		"etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\t" + hostname + "\n" +
			"::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
		"etc/fstab": "# <file system> <mount point> <type> <options> <dump> <pass>\n" +
			"UUID=" + u + "\t/\text4\terrors=remount-ro\t0\t1\n",
		"etc/locale.gen":     "en_US.UTF-8 UTF-8\nC.UTF-8 UTF-8\n",
		"etc/default/locale": "LANG=C.UTF-8\n",
		// Datasources an ECS appliance can meet; None last so that a boot
		// without any seed still finishes.
		"etc/cloud/cloud.cfg.d/90_ecs_image.cfg": "# Written by ecs-image base build.\n" +
			"datasource_list: [NoCloud, ConfigDrive, OpenStack, Ec2, GCE, Azure, None]\n" +
			// Keep the 127.0.1.1 line of /etc/hosts in step with the
			// hostname cloud-init sets (sudo complains otherwise).
			"manage_etc_hosts: localhost\n",
		// Host keys are removed from the image; generate them at boot when
		// cloud-init did not (e.g. cloud-init disabled).
		"etc/systemd/system/ssh-hostkeys.service": "[Unit]\nDescription=Generate missing SSH host keys\n" +
			"Before=ssh.service\nConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key\n\n" +
			"[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n[Install]\nWantedBy=ssh.service\n",
		"etc/machine-id": "",
		// Identify the build for `base inspect` and for humans.
		"etc/ecs-image-base": fmt.Sprintf("distro=%s\nsuite=%s\nmirror=%s\n%srecipe=%d\nbuilt=%s\n",
			b.r.Distro, b.r.Suite, b.r.Mirror, kernelLine(b.r.Kernel), b.r.Version, time.Now().UTC().Format(time.RFC3339)),
	}
	if !UsesNetworkd(b.r.Distro, b.r.Suite) {
		// Network: loopback here; cloud-init writes the NIC's DHCP config
		// (interfaces.d/50-cloud-init) from the datasource or its fallback.
		// With networkd, cloud-init writes netplan's configuration.
		files["etc/network/interfaces"] = "# Written by ecs-image base build.\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n"
	}
	for name, content := range files {
		p := filepath.Join(b.root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		os.Remove(p) // may be a symlink (e.g. resolv.conf)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	wants := filepath.Join(b.root, "etc/systemd/system/ssh.service.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	if err := os.Symlink("../ssh-hostkeys.service", filepath.Join(wants, "ssh-hostkeys.service")); err != nil && !os.IsExist(err) {
		return err
	}
	// No host identity in a base: SSH host keys, resolv.conf of the build
	// host, D-Bus machine id, apt caches.
	keys, _ := filepath.Glob(filepath.Join(b.root, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	for _, p := range []string{"etc/resolv.conf", "var/lib/dbus/machine-id"} {
		if err := os.Remove(filepath.Join(b.root, p)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if UsesNetworkd(b.r.Distro, b.r.Suite) {
		// systemd-resolved's stub, which it keeps up to date from networkd.
		if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(b.root, "etc/resolv.conf")); err != nil {
			return err
		}
	}
	for _, dir := range []string{"var/cache/apt/archives", "var/lib/apt/lists"} {
		ents, _ := filepath.Glob(filepath.Join(b.root, dir, "*"))
		for _, e := range ents {
			if fi, err := os.Lstat(e); err == nil && fi.Mode().IsRegular() {
				os.Remove(e)
			}
		}
	}
	old, _ := filepath.Glob(filepath.Join(b.root, "boot/*.dpkg-bak"))
	for _, p := range old {
		os.Remove(p)
	}
	if UsesNetworkd(b.r.Distro, b.r.Suite) {
		// Debian leaves systemd-networkd disabled; cloud-init's netplan
		// configuration needs it (Debian's cloud images enable it too).
		// systemctl enable works on the file system alone.
		if err := runLogged(ctx, "systemctl", "chroot", b.root, "systemctl", "enable", "systemd-networkd.service", "systemd-resolved.service"); err != nil {
			return err
		}
	}
	return runLogged(ctx, "locale-gen", "chroot", b.root, "locale-gen")
}

// kernelLine is the kernel flavour's line of /etc/ecs-image-base (none for
// the generic kernel, whose bases stay byte for byte what they were).
func kernelLine(kernel string) string {
	if kernel == "" {
		return ""
	}
	return "kernel=" + kernel + "\n"
}
