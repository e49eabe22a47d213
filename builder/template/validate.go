package template

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/images"
)

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

// SetVersion overrides the template's version (`ecs-image build --set
// version=V`), validated like the field: a bad value is an *Error at the
// version field.
func (t *Template) SetVersion(v string) error {
	if err := CheckVersion(v); err != nil {
		return &Error{Problems: []Problem{{File: t.File, Path: "version", Msg: "--set version=" + v + ": " + err.Error()}}}
	}
	t.Version = v
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
// stages: each provisioner's CheckProduction (e.g. a stack's images
// without a digest).
func checkProduction(d *decoder, path string, stages []Stage) {
	for i := range stages {
		for j, ps := range stages[i].Provisioners {
			if ps.P == nil {
				continue
			}
			pp := fmt.Sprintf("%s[%d].provisioners[%d]", path, i, j)
			for _, fe := range ps.P.CheckProduction() {
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
