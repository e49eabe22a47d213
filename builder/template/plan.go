package template

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
	"go.yaml.in/yaml/v3"
)

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
