package images

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/mountinfo"
	"github.com/ecs-image/ecs-image/qemuimg"
)

// BuildVersion is the version of the base build recipe. It is part of the
// cache key: bump it whenever the recipe's output changes.
const BuildVersion = 3

// Build defaults.
const (
	DefaultSuite  = "bookworm"
	DefaultMirror = "http://deb.debian.org/debian"
	DefaultSize   = 4 << 30
	// DefaultUbuntuMirror is used for Ubuntu suites when no mirror is given.
	DefaultUbuntuMirror = "http://archive.ubuntu.com/ubuntu"
)

// geteuid is os.Geteuid, replaceable in tests.
var geteuid = os.Geteuid

// partitionStart is the first sector of the root partition (1 MiB); GRUB's
// core.img lives in the gap after the MBR.
const partitionStart = 2048

// BuildOptions describe a base built from a package mirror.
type BuildOptions struct {
	// Suite is the Debian or Ubuntu suite (codename), e.g. "bookworm".
	Suite string
	// Mirror is the package mirror URL.
	Mirror string
	// Size is the virtual disk size in bytes.
	Size int64
	// Packages are extra packages to install on top of the recipe's.
	Packages []string
	// Keyring optionally names a keyring file for the mirror's Release
	// signature (mmdebstrap --keyring); default: the host's keyrings.
	Keyring string
	// Bootstrap is "mmdebstrap", "debootstrap" or "" (mmdebstrap when
	// installed, else debootstrap).
	Bootstrap string
	// Kernel is the kernel flavour: KernelGeneric ("" too) or KernelCloud
	// (Debian's linux-image-cloud-amd64, the kernel of Debian's official
	// cloud images: no AHCI, no VMware drivers).
	Kernel string
}

// Kernel flavours of a base build.
const (
	KernelGeneric = "generic"
	KernelCloud   = "cloud"
)

// Recipe is the normalised input of a build; its JSON is the cache key.
type Recipe struct {
	Version    int      `json:"version"`
	Distro     string   `json:"distro"`
	Suite      string   `json:"suite"`
	Mirror     string   `json:"mirror"`
	Components []string `json:"components"`
	Size       int64    `json:"size"`
	Packages   []string `json:"packages"`
	Keyring    string   `json:"keyring,omitempty"`
	// Network is "networkd-enabled" for the suites that use netplan and
	// systemd-networkd (UsesNetworkd), "" (ifupdown) otherwise; it keeps
	// their cache keys apart from earlier builds of the same packages.
	Network string `json:"network,omitempty"`
	// Bootstrap is set to "debootstrap" when that is used; mmdebstrap (the
	// default) leaves it empty.
	Bootstrap string `json:"bootstrap,omitempty"`
	// Kernel is "cloud" for Debian's cloud kernel; the generic kernel (the
	// default) leaves it empty, so that its key stays what it was.
	Kernel string `json:"kernel,omitempty"`
}

// ubuntuSuites are the Ubuntu codenames the recipe knows.
var ubuntuSuites = map[string]bool{
	"xenial": true, "bionic": true, "focal": true, "jammy": true, "noble": true,
	"oracular": true, "plucky": true, "questing": true,
}

// DistroOf tells whether suite is an Ubuntu or a Debian suite.
func DistroOf(suite string) string {
	if ubuntuSuites[suite] {
		return "ubuntu"
	}
	return "debian"
}

// NewRecipe validates opts and fills in defaults.
func NewRecipe(opts BuildOptions) (*Recipe, error) {
	r := &Recipe{Version: BuildVersion, Suite: opts.Suite, Mirror: opts.Mirror, Size: opts.Size, Keyring: opts.Keyring}
	if r.Suite == "" {
		r.Suite = DefaultSuite
	}
	if !validName(r.Suite) {
		return nil, &InputError{Field: "--suite", Msg: fmt.Sprintf("%q is not a suite codename (e.g. bookworm, jammy)", r.Suite)}
	}
	r.Distro = DistroOf(r.Suite)
	if UsesNetworkd(r.Distro, r.Suite) {
		r.Network = "networkd-enabled"
	}
	switch opts.Kernel {
	case "", KernelGeneric:
	case KernelCloud:
		if r.Distro != "debian" {
			return nil, &InputError{Field: "--kernel", Msg: fmt.Sprintf("cloud: Debian suites only (%s bases get Ubuntu's linux-image-virtual)", r.Suite)}
		}
		r.Kernel = KernelCloud
	default:
		return nil, &InputError{Field: "--kernel", Msg: fmt.Sprintf("%q: want generic or cloud", opts.Kernel)}
	}
	if r.Mirror == "" {
		r.Mirror = DefaultMirror
		if r.Distro == "ubuntu" {
			r.Mirror = DefaultUbuntuMirror
		}
	}
	if !strings.HasPrefix(r.Mirror, "http://") && !strings.HasPrefix(r.Mirror, "https://") &&
		!strings.HasPrefix(r.Mirror, "file:/") {
		return nil, &InputError{Field: "--mirror", Msg: fmt.Sprintf("%q: want an http://, https:// or file:/ URL", r.Mirror)}
	}
	r.Mirror = strings.TrimRight(r.Mirror, "/")
	if r.Size == 0 {
		r.Size = DefaultSize
	}
	if r.Size < 2<<30 || r.Size > 2<<40 {
		return nil, &InputError{Field: "--size", Msg: fmt.Sprintf("%s: want between 2G and 2T", formatSize(r.Size))}
	}
	if r.Size%(1<<20) != 0 {
		return nil, &InputError{Field: "--size", Msg: "must be a whole number of MiB"}
	}
	pk := map[string]bool{}
	for _, p := range append(basePackages(r.Distro, r.Suite, r.Kernel), opts.Packages...) {
		if !validName(p) {
			return nil, &InputError{Field: "--package", Msg: fmt.Sprintf("%q is not a package name", p)}
		}
		pk[p] = true
	}
	for p := range pk {
		r.Packages = append(r.Packages, p)
	}
	sort.Strings(r.Packages)
	r.Components = []string{"main"}
	if r.Distro == "ubuntu" {
		r.Components = []string{"main", "universe"}
	}
	return r, nil
}

func (r *Recipe) kernelNote() string {
	if r.Kernel == "" {
		return ""
	}
	return ", " + r.Kernel + " kernel"
}

// Key is the cache index key of the recipe.
func (r *Recipe) Key() string { return Key(r.Source()) }

// Source describes the recipe for the cache index.
func (r *Recipe) Source() string {
	b, _ := json.Marshal(r)
	return "build:" + string(b)
}

// KernelPackage is the kernel package of a base build: Debian's generic
// kernel (linux-image-amd64) or its cloud kernel (linux-image-cloud-amd64),
// Ubuntu's linux-image-virtual.
func KernelPackage(distro, kernel string) string {
	switch {
	case distro == "ubuntu":
		return "linux-image-virtual"
	case kernel == KernelCloud:
		return "linux-image-cloud-amd64"
	}
	return "linux-image-amd64"
}

func basePackages(distro, suite, kernel string) []string {
	p := []string{
		"systemd-sysv", "udev", "dbus", "sudo", "locales", "openssh-server",
		"cloud-init", "cloud-guest-utils", "e2fsprogs", "ca-certificates", "netbase",
		"grub-pc-bin", "initramfs-tools", "iproute2",
	}
	if UsesNetworkd(distro, suite) {
		// cloud-init renders netplan for systemd-networkd (DNS through
		// systemd-resolved), as Debian's own trixie cloud images do.
		p = append(p, "netplan.io", "systemd-resolved")
	} else {
		p = append(p, "ifupdown", "isc-dhcp-client")
	}
	p = append(p, KernelPackage(distro, kernel))
	if distro == "ubuntu" && suite != "xenial" {
		// Ubuntu's cloud-init renders network config for netplan.
		p = append(p, "netplan.io")
	}
	return p
}

// ifupdownSuites are the Debian suites whose base keeps ifupdown and
// isc-dhcp-client. From trixie on, cloud-init's fallback network config
// asks for DHCPv6 too (cloud-init 24.1), which ifupdown's dhclient -6 waits
// for until networking.service times out (5 min) where no DHCPv6 server
// answers (QEMU's user network, many sites): the base uses netplan and
// systemd-networkd there instead.
var ifupdownSuites = map[string]bool{"buster": true, "bullseye": true, "bookworm": true}

// UsesNetworkd reports whether the base of a Debian suite configures the
// network with netplan and systemd-networkd (else ifupdown).
func UsesNetworkd(distro, suite string) bool {
	return distro == "debian" && !ifupdownSuites[suite]
}

func validName(s string) bool {
	if s == "" || len(s) > 100 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// InputError is bad input (a flag or catalog field); the CLI exits 2.
type InputError struct {
	Field string
	Msg   string
}

func (e *InputError) Error() string { return e.Field + ": " + e.Msg }

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

// mountChroot mounts /proc, /sys and a private /dev/pts instance in root
// (debootstrap made the /dev nodes). The returned function unmounts them.
func mountChroot(root string) (func(), error) {
	var mounted []string
	unmount := func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			if err := syscall.Unmount(mounted[i], syscall.MNT_DETACH); err != nil {
				logrus.Warnf("unmount %s: %v", mounted[i], err)
			}
		}
		mounted = nil
	}
	for _, m := range []struct{ fstype, dir, data string }{
		{"proc", "proc", ""},
		{"sysfs", "sys", ""},
		{"devpts", "dev/pts", "newinstance,ptmxmode=0666,mode=620"},
	} {
		dir := filepath.Join(root, m.dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return unmount, err
		}
		if err := syscall.Mount(m.fstype, dir, m.fstype, syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, m.data); err != nil {
			return unmount, fmt.Errorf("mount %s on %s: %w", m.fstype, dir, err)
		}
		mounted = append(mounted, dir)
	}
	return unmount, nil
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

// grubModules are built into core.img: enough to find the root file system
// by UUID and read /boot/grub/grub.cfg and the modules next to it.
var grubModules = []string{"biosdisk", "part_msdos", "ext2", "search", "search_fs_uuid", "configfile", "normal", "echo"}

func (b *builder) bootFiles(ctx context.Context) error {
	libDir := filepath.Join(b.root, "usr/lib/grub/i386-pc")
	if _, err := os.Stat(filepath.Join(libDir, "boot.img")); err != nil {
		return fmt.Errorf("the root file system has no GRUB i386-pc files (package grub-pc-bin): %w", err)
	}
	grubDir := filepath.Join(b.root, "boot/grub")
	if err := os.MkdirAll(filepath.Join(grubDir, "i386-pc"), 0o755); err != nil {
		return err
	}
	mods, _ := filepath.Glob(filepath.Join(libDir, "*"))
	for _, m := range mods {
		if !strings.HasSuffix(m, ".mod") && !strings.HasSuffix(m, ".lst") {
			continue
		}
		if err := atomicfile.Copy(m, filepath.Join(grubDir, "i386-pc", filepath.Base(m)), 0o644); err != nil {
			return err
		}
	}
	cmdline := "root=UUID=" + b.uuid + " ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"
	cfg := fmt.Sprintf(`# Written by ecs-image base build. The kernel and initrd are the symlinks
# the kernel packages keep up to date in /.
set timeout=0
set default=0
insmod serial
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
insmod part_msdos
insmod ext2
insmod gzio
search --no-floppy --fs-uuid --set=root %[1]s
menuentry '%[2]s %[3]s' {
	linux /vmlinuz %[4]s
	initrd /initrd.img
}
`, b.uuid, strings.ToUpper(b.r.Distro[:1])+b.r.Distro[1:], b.r.Suite, cmdline)
	if err := os.WriteFile(filepath.Join(grubDir, "grub.cfg"), []byte(cfg), 0o644); err != nil {
		return err
	}
	early := fmt.Sprintf("search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n", b.uuid)
	if err := os.WriteFile(filepath.Join(b.root, "tmp/ecs-early.cfg"), []byte(early), 0o644); err != nil {
		return err
	}
	// The guest's own grub-mkimage, so core.img matches its modules.
	args := append([]string{b.root, "grub-mkimage", "-O", "i386-pc", "-d", "/usr/lib/grub/i386-pc",
		"-c", "/tmp/ecs-early.cfg", "-p", "/boot/grub", "-o", "/tmp/ecs-core.img"}, grubModules...)
	if err := runCmd(ctx, "chroot", args...); err != nil {
		return err
	}
	for _, f := range []string{"core.img"} {
		if err := os.Rename(filepath.Join(b.root, "tmp/ecs-"+f), filepath.Join(b.tmp, f)); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(b.root, "tmp/ecs-early.cfg"))
	return atomicfile.Copy(filepath.Join(libDir, "boot.img"), filepath.Join(b.tmp, "boot.img"), 0o644)
}

// disk lays out the raw disk: an MBR partition table (sfdisk), an ext4
// file system filled from the root tree (mke2fs -d, at the partition's
// offset, no loop device), GRUB's boot.img in the MBR's code area and
// core.img in the gap before the partition.
func (b *builder) disk(ctx context.Context) error {
	// mke2fs -d would copy whatever is mounted in the tree (/proc, /sys).
	if m, err := mountsUnder(b.root); err != nil {
		return err
	} else if len(m) > 0 {
		return fmt.Errorf("file systems still mounted in the root tree: %s", strings.Join(m, ", "))
	}
	raw := filepath.Join(b.tmp, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	if err := f.Truncate(b.r.Size); err != nil {
		f.Close()
		return err
	}
	f.Close()
	table := fmt.Sprintf("label: dos\nunit: sectors\n\nstart=%d, type=83, bootable\n", partitionStart)
	cmd := exec.CommandContext(ctx, "sfdisk", "--no-reread", "--no-tell-kernel", "-q", raw)
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sfdisk: %v: %s", err, strings.TrimSpace(string(out)))
	}
	offset := int64(partitionStart) * 512
	blocks := (b.r.Size - offset) / 4096
	if err := runCmd(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-U", b.uuid,
		"-d", b.root, "-E", fmt.Sprintf("offset=%d", offset), raw, strconv.FormatInt(blocks, 10)); err != nil {
		return err
	}
	bootImg, err := os.ReadFile(filepath.Join(b.tmp, "boot.img"))
	if err != nil {
		return err
	}
	core, err := os.ReadFile(filepath.Join(b.tmp, "core.img"))
	if err != nil {
		return err
	}
	if len(bootImg) != 512 {
		return fmt.Errorf("boot.img: %d bytes, want 512", len(bootImg))
	}
	if len(core) > (partitionStart-1)*512 {
		return fmt.Errorf("core.img: %d bytes do not fit before the partition", len(core))
	}
	f, err = os.OpenFile(raw, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// The first 440 bytes only: the partition table and disk signature
	// that sfdisk wrote stay intact. boot.img loads core.img from sector 1.
	if _, err := f.WriteAt(bootImg[:440], 0); err != nil {
		return err
	}
	if _, err := f.WriteAt(core, 512); err != nil {
		return err
	}
	var sig [2]byte
	if _, err := f.ReadAt(sig[:], 510); err == nil && binary.LittleEndian.Uint16(sig[:]) != 0xaa55 {
		return errors.New("MBR boot signature missing after sfdisk")
	}
	return f.Close()
}

// kernelLine is the kernel flavour's line of /etc/ecs-image-base (none for
// the generic kernel, whose bases stay byte for byte what they were).
func kernelLine(kernel string) string {
	if kernel == "" {
		return ""
	}
	return "kernel=" + kernel + "\n"
}

func newUUID() (string, error) {
	var u [16]byte
	f, err := os.Open("/dev/urandom")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.ReadFull(f, u[:]); err != nil {
		return "", err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// command makes an exec.Cmd in its own process group; cancelling ctx sends
// SIGTERM to the whole group (so mmdebstrap can unmount and apt/dpkg stop),
// then SIGKILL after a grace period.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	return cmd
}

func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// runCmd runs a command, returning its output in the error on failure.
func runCmd(ctx context.Context, name string, args ...string) error {
	cmd := command(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	killGroup(cmd)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(lastLines(string(out), 15)))
	}
	return nil
}

// runLogged runs a long command, logging its output line by line.
func runLogged(ctx context.Context, label, name string, args ...string) error {
	cmd := command(ctx, name, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			logrus.WithField("cmd", label).Info(line)
			tail = append(tail, line)
			if len(tail) > 15 {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	killGroup(cmd)
	pw.Close()
	<-done
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %v: %s", label, err, strings.Join(tail, "\n"))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// safeRemoveAll removes dir after unmounting anything still mounted below
// it (an interrupted mmdebstrap may leave /proc, /sys or /dev mounts in the
// chroot). It refuses to remove when a mount cannot be detached, so that a
// leftover bind mount never makes it delete host files.
func safeRemoveAll(dir string) error {
	dir = filepath.Clean(dir)
	for attempt := 0; attempt < 3; attempt++ {
		mounts, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(mounts) == 0 {
			return os.RemoveAll(dir)
		}
		// Deepest first.
		sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
		for _, m := range mounts {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				logrus.Warnf("unmount %s: %v", m, err)
			}
		}
	}
	return fmt.Errorf("file systems still mounted under %s; not removing it", dir)
}

func mountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m.Point)
		}
	}
	return out, nil
}
