// Package builder turns a template into a provisioned, generalised disk
// image: a multistep pipeline (steps.go lists it) that boots the base under
// QEMU with a build-time cidata seed, runs the provisioners of each stage
// over SSH, caches every stage as a qcow2 overlay, places files of file-only
// stages offline with a small helper VM, generalises and compacts the result.
package builder

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ecs-image/ecs-image/env"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/provisioners"
)

// Problem is one finding about a template, with its position; it prints
// like an env.yml problem (FILE:LINE:COL: field.path: message).
type Problem = env.Problem

// TemplateError lists every problem of an invalid template.
type TemplateError struct{ Problems []Problem }

func (e *TemplateError) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

// IsTemplateError reports whether err is (or wraps) a *TemplateError.
func IsTemplateError(err error) bool {
	var te *TemplateError
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

// LoadTemplate reads and validates the template at path.
func LoadTemplate(path string) (*Template, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &TemplateError{[]Problem{{File: path, Msg: cleanPathErr(err)}}}
	}
	return ParseTemplate(path, data)
}

func cleanPathErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// ParseTemplate parses and validates a template in full: every problem is
// reported (as a *TemplateError) before anything runs.
func ParseTemplate(file string, data []byte) (*Template, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, col, msg := env.SyntaxErrorAt(data, err)
		return nil, &TemplateError{[]Problem{{File: file, Line: line, Column: col, Msg: "YAML syntax error: " + msg}}}
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, &TemplateError{[]Problem{{File: file, Line: 1, Column: 1, Msg: "template is not a mapping"}}}
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
		return nil, &TemplateError{d.problems}
	}
	return t, nil
}

// check validates the decoded template's values.
func (t *Template) check(d *decoder) {
	if t.Name == "" {
		t.Name = strings.TrimSuffix(filepath.Base(t.File), filepath.Ext(t.File))
	} else if !nameRe().MatchString(t.Name) {
		d.at("name", "%q: want lower-case letters, digits and dashes", t.Name)
	}
	if _, ok := d.nodes["version"]; !ok {
		t.Version = DefaultVersion
	} else if err := CheckVersion(t.Version); err != nil {
		d.at("version", "%v", err)
	}
	t.checkBase(d)
	if t.DiskSize != "" {
		n, err := images.ParseSize(t.DiskSize)
		switch {
		case err != nil:
			d.at("disk_size", "%v", err)
		case n < 1<<30:
			d.at("disk_size", "%s is too small (at least 1G)", t.DiskSize)
		default:
			t.diskSize = n
		}
	}
	if _, ok := d.nodes["memory"]; !ok {
		t.Memory = DefaultMemory
	} else if t.Memory < 256 || t.Memory > 1<<20 {
		d.at("memory", "%d MiB: want 256..1048576", t.Memory)
	}
	if _, ok := d.nodes["cpus"]; !ok {
		t.CPUs = DefaultCPUs
	} else if t.CPUs < 1 || t.CPUs > 64 {
		d.at("cpus", "%d: want 1..64", t.CPUs)
	}
	switch t.Firmware {
	case "":
		t.Firmware = "auto"
	case "auto", "bios", "uefi":
	default:
		d.at("firmware", "%q: want auto, bios or uefi", t.Firmware)
	}
	switch t.Accel {
	case "":
		t.Accel = "auto"
	case "auto", "kvm", "tcg":
	default:
		d.at("accel", "%q: want auto, kvm or tcg", t.Accel)
	}
	if t.SSHTimeout == 0 {
		t.SSHTimeout = DefaultSSHTimeout
	}
	if t.ShutdownTimeout == 0 {
		t.ShutdownTimeout = DefaultShutdownTimeout
	}
	names := map[string]string{}
	t.checkStages(d, "stages", t.Stages, names)
	variantNames := make([]string, 0, len(t.Variants))
	for name := range t.Variants {
		variantNames = append(variantNames, name)
	}
	sort.Strings(variantNames)
	for _, name := range variantNames {
		v := t.Variants[name]
		p := "variants." + name
		if !nameRe().MatchString(name) {
			d.add(d.keys[p], p, "variant name %q: want lower-case letters, digits and dashes", name)
		}
		if v == nil {
			d.at(p, "want a mapping, got null")
			continue
		}
		vn := map[string]string{}
		for k, v := range names {
			vn[k] = v
		}
		t.checkStages(d, p+".stages", v.Stages, vn)
		for k := range v.Env {
			if !envRe().MatchString(k) {
				d.add(d.keys[p+".env."+k], p+".env."+k, "%q is not a valid environment variable name", k)
			}
		}
		t.checkOutputs(d, p+".outputs", v.Outputs)
		checkKernel(d, p+".kernel", v.Kernel)
		if v.Production {
			checkProductionOutputs(d, p+".outputs", v.Outputs, name)
			checkProduction(d, "stages", t.Stages)
			checkProduction(d, p+".stages", v.Stages)
		}
	}
	checkKernel(d, "kernel", t.Kernel)
	if len(t.Stages) == 0 && len(t.Variants) == 0 {
		d.at("stages", "required: at least one stage")
	}
	if t.DefaultVariant != "" {
		if _, ok := t.Variants[t.DefaultVariant]; !ok {
			d.at("default_variant", "no variant %q (variants: %s)", t.DefaultVariant, strings.Join(variantNames, ", "))
		}
	}
	if len(t.Outputs) == 0 {
		t.Outputs = []string{"qcow2"}
	}
	t.checkOutputs(d, "outputs", t.Outputs)
	for _, name := range variantNames {
		if v := t.Variants[name]; v.Production && len(v.Outputs) == 0 {
			checkProductionOutputs(d, "outputs", t.Outputs, name) // inherited
		}
	}
	for i, c := range t.Generalise.Commands {
		if strings.TrimSpace(c) == "" {
			d.at(fmt.Sprintf("generalise.commands[%d]", i), "empty command")
		}
	}
}

// CheckVersion validates a product version (the template's version, or
// its override on the command line).
func CheckVersion(v string) error {
	if !versionRe().MatchString(v) {
		return fmt.Errorf("%q: want 1 to 64 letters, digits and . + ~ _ - starting with a letter or digit (e.g. 1.4.0)", v)
	}
	return nil
}

// Kernel flavours of the template's kernel field.
const (
	KernelGeneric = "generic"
	KernelCloud   = "cloud"
)

func checkKernel(d *decoder, path, k string) {
	switch k {
	case "", KernelGeneric, KernelCloud:
	default:
		d.at(path, "%q: want generic (Debian's linux-image-amd64) or cloud (linux-image-cloud-amd64)", k)
	}
}

var envRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })

func (t *Template) checkBase(d *decoder) {
	b := &t.Base
	if _, ok := d.nodes["base"]; !ok {
		d.at("base", "required: catalog, url (with checksum) or file")
		return
	}
	set := 0
	for _, s := range []string{b.Catalog, b.URL, b.File} {
		if s != "" {
			set++
		}
	}
	switch {
	case set == 0:
		d.at("base", "give one of catalog, url (with checksum) or file")
	case set > 1:
		d.at("base", "give only one of catalog, url or file")
	case b.URL != "":
		if !strings.HasPrefix(b.URL, "https://") && !strings.HasPrefix(b.URL, "http://") && !strings.HasPrefix(b.URL, "file://") {
			d.at("base.url", "%q: want an http(s):// or file:// URL", b.URL)
		}
		if b.Checksum == "" {
			d.at("base.checksum", "required with url (sha256:<hex>)")
		} else if !sumRe().MatchString(b.Checksum) {
			d.at("base.checksum", "%q: want sha256:<64 hex digits>", b.Checksum)
		}
	case b.File != "":
		if !filepath.IsAbs(b.File) {
			b.File = filepath.Join(t.Dir, b.File)
		}
		if fi, err := os.Stat(b.File); err != nil {
			d.at("base.file", "%s: %s", b.File, cleanPathErr(err))
		} else if !fi.Mode().IsRegular() {
			d.at("base.file", "%s is not a regular file", b.File)
		}
	case b.Catalog == "build" || strings.HasPrefix(b.Catalog, "build:"):
		// The base built from a package mirror (images.BuildBase).
	case b.Catalog != "":
		if cat, err := images.LoadCatalog(); err == nil && cat.Lookup(b.Catalog) == nil {
			d.at("base.catalog", "unknown base %q (known: build, %s)", b.Catalog, strings.Join(cat.Names(), ", "))
		}
	}
	if b.Checksum != "" && b.URL == "" {
		d.at("base.checksum", "only used with url")
	}
}

func (t *Template) checkStages(d *decoder, path string, stages []Stage, names map[string]string) {
	for i := range stages {
		s := &stages[i]
		p := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case s.Name == "":
			d.at(p+".name", "required")
		case !nameRe().MatchString(s.Name):
			d.at(p+".name", "%q: want lower-case letters, digits and dashes", s.Name)
		case names[s.Name] != "":
			d.at(p+".name", "stage %q is already defined at %s", s.Name, names[s.Name])
		default:
			n := d.nodes[p+".name"]
			names[s.Name] = fmt.Sprintf("line %d", n.Line)
		}
		if len(s.Provisioners) == 0 {
			d.at(p+".provisioners", "required: at least one provisioner")
		}
		for j := range s.Provisioners {
			ps := &s.Provisioners[j]
			pp := fmt.Sprintf("%s.provisioners[%d]", p, j)
			if ps.P == nil {
				continue
			}
			if s.Mode == ModeChroot {
				if why := ps.P.Requires().NeedsRunningSystem(); why != "" {
					d.at(pp, "cannot run in a chroot (stage mode chroot): %s", why)
				}
			}
			for _, fe := range ps.P.Check(t.Dir) {
				fp := pp
				if fe.Field != "" {
					fp = pp + "." + fe.Field
				}
				d.at(fp, "%s", fe.Msg)
			}
		}
	}
}

// checkProduction reports what a production variant must not build from
// stages (provisioners with a CheckProduction method: e.g. a stack's
// images without a digest).
func checkProduction(d *decoder, path string, stages []Stage) {
	for i := range stages {
		for j, ps := range stages[i].Provisioners {
			pc, ok := ps.P.(interface {
				CheckProduction() []provisioners.FieldError
			})
			if !ok {
				continue
			}
			pp := fmt.Sprintf("%s[%d].provisioners[%d]", path, i, j)
			for _, fe := range pc.CheckProduction() {
				fp := pp
				if fe.Field != "" {
					fp = pp + "." + fe.Field
				}
				d.at(fp, "production variant: %s", fe.Msg)
			}
		}
	}
}

func (t *Template) checkOutputs(d *decoder, path string, outs []string) {
	seen := map[string]bool{}
	for i, o := range outs {
		p := fmt.Sprintf("%s[%d]", path, i)
		_, err := formats.Lookup(o)
		switch {
		case err != nil:
			d.at(p, "%v", err)
		case seen[o]:
			d.at(p, "%q is listed twice", o)
		}
		seen[o] = true
	}
}

// checkProductionOutputs applies the production rule
// (formats.CheckProduction) to each output of a production variant.
func checkProductionOutputs(d *decoder, path string, outs []string, variant string) {
	for i, o := range outs {
		if err := formats.CheckProduction(variant, true, []string{o}); err != nil {
			d.at(fmt.Sprintf("%s[%d]", path, i), "%v", err)
		}
	}
}

// Plan is what one build runs: the template's shared stages plus the
// variant's, with the variant's flags.
type Plan struct {
	Template   *Template
	Variant    string // "" for none
	Production bool
	Stages     []Stage
	// Shared is how many of Stages are the template's shared stages.
	Shared  int
	Outputs []string
	// Kernel is the kernel flavour the plan installs ("": the base's).
	Kernel string
	// Vars are exported to shell provisioners.
	Vars map[string]string
}

// Plan resolves the stages of variant ("" → the default variant).
func (t *Template) Plan(variant string) (*Plan, error) {
	if variant == "" {
		variant = t.DefaultVariant
	}
	if variant == "" && len(t.Stages) == 0 && len(t.Variants) == 1 {
		for n := range t.Variants {
			variant = n
		}
	}
	p := &Plan{Template: t, Variant: variant, Outputs: t.Outputs, Kernel: t.Kernel, Vars: map[string]string{}}
	p.Stages = append(p.Stages, t.Stages...)
	p.Shared = len(p.Stages)
	if variant != "" {
		v, ok := t.Variants[variant]
		if !ok {
			names := make([]string, 0, len(t.Variants))
			for n := range t.Variants {
				names = append(names, n)
			}
			sort.Strings(names)
			list := "the template defines no variants"
			if len(names) > 0 {
				list = "variants: " + strings.Join(names, ", ")
			}
			return nil, fmt.Errorf("no variant %q (%s)", variant, list)
		}
		p.Stages = append(p.Stages, v.Stages...)
		p.Production = v.Production
		if len(v.Outputs) > 0 {
			p.Outputs = v.Outputs
		}
		if v.Kernel != "" {
			p.Kernel = v.Kernel
		}
		for k, val := range v.Env {
			p.Vars[k] = val
		}
	}
	if err := formats.CheckProduction(variant, p.Production, p.Outputs); err != nil {
		return nil, fmt.Errorf("%s: %w", t.File, err)
	}
	if len(p.Stages) == 0 {
		return nil, fmt.Errorf("%s: no stages to build (variant %q)", t.File, variant)
	}
	if p.Kernel != "" {
		st, err := KernelStage(p.Kernel)
		if err != nil {
			return nil, err
		}
		p.Stages = append(p.Stages, st)
	}
	if !p.Production && len(formats.NonProduction(p.Outputs)) > 0 {
		st, err := vagrantStage()
		if err != nil {
			return nil, err
		}
		p.Stages = append(p.Stages, st)
	}
	p.Vars["ECS_IMAGE_VARIANT"] = variant
	p.Vars["ECS_IMAGE_PRODUCTION"] = strconv.FormatBool(p.Production)
	p.Vars["ECS_IMAGE_TEMPLATE"] = t.Name
	return p, nil
}

// VagrantStageName names the stage the builder appends to a dev/test plan
// that emits a Vagrant box: it gives the image Vagrant's conventions
// (formats.VagrantProvisionScript). Production plans never get it.
const VagrantStageName = "vagrant"

// vagrantStage is the booted stage that runs formats.VagrantProvisionScript;
// its node is hashed into the stage key like a template's own stage.
func vagrantStage() (Stage, error) {
	sh := &provisioners.Shell{Inline: []string{formats.VagrantProvisionScript}}
	var n yaml.Node
	if err := n.Encode(map[string]any{"type": "shell", "inline": sh.Inline}); err != nil {
		return Stage{}, err
	}
	return Stage{Name: VagrantStageName, Provisioners: []ProvisionerSpec{{Type: "shell", P: sh, Node: &n}}}, nil
}

// kernelPackages are the kernel flavours' Debian metapackages.
var kernelPackages = map[string]string{KernelGeneric: "linux-image-amd64", KernelCloud: "linux-image-cloud-amd64"}

// KernelStage is the stage the builder appends (after the variant's stages)
// for the template's kernel field: in a chroot when the host can, it
// installs the flavour's Debian kernel and purges the other flavour's
// kernels, so that the image, its initramfs and the stages after it boot
// the new kernel. The running-kernel question of linux-base is answered
// for a booted fallback. Debian images only.
func KernelStage(flavour string) (Stage, error) {
	pkg, ok := kernelPackages[flavour]
	if !ok {
		return Stage{}, fmt.Errorf("kernel %q: want generic or cloud", flavour)
	}
	// The other flavour's packages: the cloud kernel's names end in
	// -cloud-amd64; the generic kernel's are the other linux-image-*-amd64.
	match := `case "$p" in *-cloud-amd64) ;; *) continue ;; esac`
	if flavour == KernelCloud {
		match = `case "$p" in *-cloud-amd64) continue ;; esac`
	}
	check := `. /etc/os-release
if [ "$ID" != debian ]; then echo "kernel: ` + flavour + `: Debian images only (this image is $PRETTY_NAME)" >&2; exit 1; fi
echo 'linux-base linux-base/removing-running-kernel boolean false' | debconf-set-selections`
	purge := `old=
for p in $(dpkg-query -W -f '${db:Status-Status} ${Package}\n' 'linux-image-*' 2>/dev/null | awk '$1 == "installed" && $2 ~ /-amd64$/ {print $2}'); do
  ` + match + `
  old="$old $p"
done
if [ -n "$old" ]; then apt-get purge -y $old; fi
ls /boot/vmlinuz-*`
	specs := []struct {
		typ  string
		p    provisioners.Provisioner
		node map[string]any
	}{
		{"shell", &provisioners.Shell{Inline: []string{check}}, map[string]any{"type": "shell", "inline": []string{check}}},
		{"packages", &provisioners.Packages{Packages: []string{pkg}}, map[string]any{"type": "packages", "packages": []string{pkg}}},
		{"shell", &provisioners.Shell{Inline: []string{purge}}, map[string]any{"type": "shell", "inline": []string{purge}}},
	}
	st := Stage{Name: KernelStagePrefix + flavour, Mode: ModeChroot}
	for _, sp := range specs {
		var n yaml.Node
		if err := n.Encode(sp.node); err != nil {
			return Stage{}, err
		}
		st.Provisioners = append(st.Provisioners, ProvisionerSpec{Type: sp.typ, P: sp.p, Node: &n})
	}
	return st, nil
}

// KernelStagePrefix starts the name of the stage KernelStage makes.
const KernelStagePrefix = "kernel-"

// VarsFor returns the variables stage i's shell provisioners see: shared
// stages only see ECS_IMAGE_TEMPLATE (so that every variant shares their
// cache entries), variant stages also the variant's variables.
func (p *Plan) VarsFor(i int) map[string]string {
	if i < p.Shared {
		return map[string]string{"ECS_IMAGE_TEMPLATE": p.Template.Name}
	}
	return p.Vars
}
