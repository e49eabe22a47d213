// Package template is the build template language: the YAML template
// decoded strictly (unknown keys, duplicate keys and wrong kinds are
// problems at FILE:LINE:COL, and every problem is reported before anything
// runs), its validation (names, base, disk size, stages and their modes,
// variants, outputs and the production rule), and the plan of one variant
// (the shared stages, the variant's, and the stages the builder appends:
// the kernel flavour and Vagrant's conventions). Package builder runs
// the plan.
package template

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ecs-image/ecs-image/env"
	"github.com/ecs-image/ecs-image/provisioners"
)

// Problem is one finding about a template, with its position; it prints
// like an env.yml problem (FILE:LINE:COL: field.path: message).
type Problem = env.Problem

// Error lists every problem of an invalid template.
type Error struct{ Problems []Problem }

func (e *Error) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

// IsError reports whether err is (or wraps) a *Error.
func IsError(err error) bool {
	var te *Error
	return errors.As(err, &te)
}

// Template defaults.
const (
	DefaultMemory          = 2048
	DefaultCPUs            = 2
	DefaultSSHTimeout      = 10 * time.Minute
	DefaultShutdownTimeout = 3 * time.Minute
)

// Template is a validated build template.
type Template struct {
	// File is the template's path; Dir its directory (relative paths in
	// the template are resolved against Dir).
	File string `yaml:"-"`
	Dir  string `yaml:"-"`
	// Raw is the template's content (hashed into the build manifest).
	Raw []byte `yaml:"-"`

	// Name names the artifacts (default: the file name without extension).
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// Version is the product version of the built image (e.g. 1.4.0): the
	// OVF product version, the build manifest's and the release's
	// "version". Default "0"; `ecs-image build --set version=...`
	// overrides it.
	Version string `yaml:"version"`
	// Base is the image the build starts from.
	Base Base `yaml:"base"`
	// DiskSize is the virtual size of the built disk, e.g. "20G" (default:
	// the base's size). Disks only grow.
	DiskSize string `yaml:"disk_size"`
	// Memory of the build VM in MiB (default 2048); CPUs (default 2).
	Memory int `yaml:"memory"`
	CPUs   int `yaml:"cpus"`
	// Firmware is auto (the base's), bios or uefi.
	Firmware string `yaml:"firmware"`
	// Accel is auto (KVM when it works, else TCG), kvm or tcg.
	Accel string `yaml:"accel"`
	// SSHTimeout bounds boot to SSH (default 10m); ShutdownTimeout the
	// ACPI shutdown before QEMU is killed (default 3m).
	SSHTimeout      time.Duration `yaml:"ssh_timeout"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Stages are shared by every variant, in order.
	Stages []Stage `yaml:"stages"`
	// Variants add stages on top of the shared ones.
	Variants map[string]*Variant `yaml:"variants"`
	// DefaultVariant is built when --variant is not given (default: none,
	// i.e. only the shared stages; or the only variant).
	DefaultVariant string `yaml:"default_variant"`
	// Outputs are format names (default [qcow2]).
	Outputs []string `yaml:"outputs"`
	// Generalise configures the final clean-up.
	Generalise Generalise `yaml:"generalise"`
	// Kernel swaps the image's kernel flavour (Debian): "generic" installs
	// linux-image-amd64 in place of the cloud kernel, "cloud" the reverse;
	// "" keeps the base's. See KernelStage.
	Kernel string `yaml:"kernel"`

	diskSize int64
}

// Base names the base image: a catalog name, a URL with a checksum, or a
// local file.
type Base struct {
	Catalog  string `yaml:"catalog"`
	URL      string `yaml:"url"`
	Checksum string `yaml:"checksum"`
	File     string `yaml:"file"`
	// User overrides the base's default cloud-init user (informational;
	// the build uses its own user).
	User string `yaml:"user"`
}

// Stage is a named, ordered list of provisioners; each stage is cached as a
// qcow2 overlay on the previous one.
type Stage struct {
	Name string `yaml:"name"`
	// Mode is where the provisioners run: auto (the default), boot
	// (always the booted image) or chroot (the build host, chrooted into
	// the disk; booted when the host cannot). See Mode.
	Mode         Mode              `yaml:"mode"`
	Provisioners []ProvisionerSpec `yaml:"provisioners"`
}

// ChrootDefault reports whether the stage runs in a chroot when its mode
// is auto: every provisioner does the same there as in the booted image.
func (s *Stage) ChrootDefault() bool {
	for _, p := range s.Provisioners {
		if p.P == nil || !p.P.Requires().ChrootSafe() {
			return false
		}
	}
	return true
}

// NeedsBoot reports whether any provisioner of the stage needs a booted
// guest; a stage that only places files is applied offline.
func (s *Stage) NeedsBoot() bool {
	for _, p := range s.Provisioners {
		if p.P != nil && p.P.Requires().NeedsBoot() {
			return true
		}
	}
	return false
}

// ProvisionerSpec is one provisioner: its type and decoded configuration.
type ProvisionerSpec struct {
	Type string
	P    provisioners.Provisioner
	// Node is the provisioner's mapping (hashed into the stage key).
	Node *yaml.Node
}

// Canonical renders the provisioner's mapping without comments or
// styles (aliases expanded): what the stage key hashes, so that
// reformatting a template does not change keys.
func (s *ProvisionerSpec) Canonical() string {
	n := s.Node
	if n == nil {
		return ""
	}
	var strip func(*yaml.Node) *yaml.Node
	strip = func(n *yaml.Node) *yaml.Node {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			return strip(n.Alias)
		}
		c := &yaml.Node{Kind: n.Kind, Tag: n.ShortTag(), Value: n.Value}
		for _, ch := range n.Content {
			c.Content = append(c.Content, strip(ch))
		}
		return c
	}
	data, err := yaml.Marshal(strip(n))
	if err != nil {
		return n.Value
	}
	return string(data)
}

func (s *ProvisionerSpec) decodeNode(d *decoder, n *yaml.Node, path string) {
	s.Node = n
	if n.Kind != yaml.MappingNode {
		d.add(n, path, "want a mapping with a type, got %s", kindName(n))
		return
	}
	var typ *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "type" {
			typ = n.Content[i+1]
		}
	}
	if typ == nil {
		d.add(n, join(path, "type"), "required (one of: %s)", strings.Join(provisioners.Types(), ", "))
		return
	}
	s.Type = typ.Value
	s.P = provisioners.New(typ.Value)
	if s.P == nil {
		d.add(typ, join(path, "type"), "unknown provisioner type %q (known: %s)", typ.Value, strings.Join(provisioners.Types(), ", "))
		return
	}
	d.decodeStruct(n, reflect.ValueOf(s.P).Elem(), path, "type")
}

// Variant adds stages and flags to the shared stages.
type Variant struct {
	Stages []Stage `yaml:"stages"`
	// Production marks a production variant: formats that must not be
	// built for production (Vagrant boxes) are refused, and the guest sees
	// ECS_IMAGE_PRODUCTION=true.
	Production bool `yaml:"production"`
	// Env are extra variables exported to shell provisioners.
	Env map[string]string `yaml:"env"`
	// Outputs replace the template's outputs for this variant.
	Outputs []string `yaml:"outputs"`
	// Kernel replaces the template's kernel for this variant.
	Kernel string `yaml:"kernel"`
}

// Generalise configures the built-in clean-up that makes the image safe to
// clone: it runs last, offline in the helper VM.
type Generalise struct {
	// Enabled (default true).
	Enabled *bool `yaml:"enabled"`
	// KeepLogs keeps /var/log content (default false: truncated).
	KeepLogs bool `yaml:"keep_logs"`
	// Fstrim discards free blocks so the image compacts well (default true).
	Fstrim *bool `yaml:"fstrim"`
	// Commands are extra shell commands run in the image (chroot) before
	// the clean-up.
	Commands []string `yaml:"commands"`
}

// On reports whether generalisation runs.
func (g Generalise) On() bool { return g.Enabled == nil || *g.Enabled }

// Trim reports whether free blocks are discarded.
func (g Generalise) Trim() bool { return g.Fstrim == nil || *g.Fstrim }

// DiskSizeBytes is the parsed disk_size (0: the base's size).
func (t *Template) DiskSizeBytes() int64 { return t.diskSize }

// DefaultVersion is the product version of a template without one.
const DefaultVersion = "0"

var (
	nameRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`) })
	// versionRe: a version as Debian, semver and OVF readers take it
	// (1.4.0, 2026.12.1, 1.4.0-rc.1, 1.4.0+git.abc123, 1.4~beta1).
	versionRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}$`) })
	sumRe     = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^(sha256:)?[0-9a-f]{64}$|^sha512:[0-9a-f]{128}$`) })
)

// Load reads and validates the template at path.
func Load(path string) (*Template, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{[]Problem{{File: path, Msg: cleanPathErr(err)}}}
	}
	return Parse(path, data)
}

func cleanPathErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// Parse parses and validates a template in full: every problem is
// reported (as a *Error) before anything runs.
func Parse(file string, data []byte) (*Template, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, col, msg := env.SyntaxErrorAt(data, err)
		return nil, &Error{[]Problem{{File: file, Line: line, Column: col, Msg: "YAML syntax error: " + msg}}}
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, &Error{[]Problem{{File: file, Line: 1, Column: 1, Msg: "template is not a mapping"}}}
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		abs = file
	}
	t := &Template{File: file, Dir: filepath.Dir(abs), Raw: data}
	d := &decoder{file: file, nodes: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}}
	d.decode(doc.Content[0], reflect.ValueOf(t).Elem(), "")
	t.check(d)
	if len(d.problems) > 0 {
		sort.SliceStable(d.problems, func(i, j int) bool {
			a, b := d.problems[i], d.problems[j]
			if a.Line != b.Line {
				return a.Line < b.Line
			}
			return a.Column < b.Column
		})
		return nil, &Error{d.problems}
	}
	return t, nil
}
