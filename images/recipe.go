package images

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
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
