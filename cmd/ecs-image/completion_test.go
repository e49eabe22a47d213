package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// complete runs `ecs-image __complete ARGS...` (what the shell scripts
// call) and returns the completions (descriptions cut off) and the
// directive line.
func complete(t *testing.T, args ...string) ([]string, string) {
	t.Helper()
	code, out, errs := runEnvCLI(t, append([]string{"__complete"}, args...)...)
	if code != exitOK {
		t.Fatalf("__complete %v: exit %d\n%s", args, code, errs)
	}
	var comps []string
	directive := ""
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, ":") {
			directive = l
			continue
		}
		name, _, _ := strings.Cut(l, "\t")
		comps = append(comps, name)
	}
	return comps, directive
}

func TestCompleteFormats(t *testing.T) {
	comps, dir := complete(t, "convert", "in.qcow2", "-f", "")
	for _, want := range []string{"qcow2", "raw", "vmdk", "ova", "vhdx", "vhd", "gce", "ami", "vagrant-libvirt", "vagrant-virtualbox"} {
		if !slices.Contains(comps, want) {
			t.Errorf("convert -f: %q missing from %v", want, comps)
		}
	}
	if dir != ":6" { // NoSpace | NoFileComp
		t.Errorf("directive %q", dir)
	}
	comps, _ = complete(t, "convert", "in.qcow2", "-f", "raw,vh")
	if !slices.Equal(comps, []string{"raw,vhd", "raw,vhdx"}) {
		t.Errorf("convert -f raw,vh: %v", comps)
	}
	comps, _ = complete(t, "convert", "in.qcow2", "--format=raw,r")
	if len(comps) != 0 {
		t.Errorf("a format already given is offered again: %v", comps)
	}
}

func TestCompleteBaseNames(t *testing.T) {
	t.Setenv("ECS_IMAGE_CATALOG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir()) // no user catalog
	comps, dir := complete(t, "base", "fetch", "")
	if !slices.Contains(comps, "debian-12") || dir != ":4" {
		t.Fatalf("base fetch: %v %s", comps, dir)
	}
	comps, _ = complete(t, "base", "fetch", "debian-12", "")
	if len(comps) != 0 {
		t.Errorf("second argument: %v", comps)
	}
	// The user's catalog adds names.
	cat := filepath.Join(t.TempDir(), "catalog.yml")
	if err := os.WriteFile(cat, []byte("bases:\n  - name: mybase-1\n    url: https://example.org/b.qcow2\n    format: qcow2\n    arch: amd64\n    firmware: bios\n    user: debian\n    checksum: sha256:"+strings.Repeat("a", 64)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ECS_IMAGE_CATALOG", cat)
	comps, _ = complete(t, "base", "fetch", "my")
	if !slices.Equal(comps, []string{"mybase-1"}) {
		t.Errorf("user catalog: %v", comps)
	}
}

func TestCompleteVariants(t *testing.T) {
	comps, dir := complete(t, "build", "../../templates/ecs-appliance.yml", "--variant", "")
	if len(comps) < 2 || !slices.Contains(comps, "prod") || dir != ":4" {
		t.Fatalf("build --variant: %v %s", comps, dir)
	}
	comps, _ = complete(t, "build", "../../templates/ecs-appliance.yml", "--variant", "pr")
	if !slices.Equal(comps, []string{"prod"}) {
		t.Errorf("--variant pr: %v", comps)
	}
	// A template with other problems still completes its variants.
	tpl := filepath.Join(t.TempDir(), "t.yml")
	os.WriteFile(tpl, []byte("base: {name: nowhere}\nbogus_key: 1\nvariants:\n  alpha: {}\n  beta: {production: true}\n"), 0o644)
	comps, _ = complete(t, "build", tpl, "--variant", "")
	if !slices.Equal(comps, []string{"alpha", "beta"}) {
		t.Errorf("lenient: %v", comps)
	}
	comps, _ = complete(t, "build", "--variant", "")
	if len(comps) != 0 {
		t.Errorf("no template: %v", comps)
	}
}

func TestCompleteTemplatePaths(t *testing.T) {
	for _, cmd := range [][]string{{"build", ""}, {"validate", ""}, {"env", "validate", ""}} {
		comps, dir := complete(t, cmd...)
		if !slices.Equal(comps, []string{"yml", "yaml"}) || dir != ":8" { // FilterFileExt
			t.Errorf("%v: %v %s", cmd, comps, dir)
		}
	}
	comps, dir := complete(t, "validate", "a.yml", "")
	if len(comps) != 0 || dir != ":4" {
		t.Errorf("second argument: %v %s", comps, dir)
	}
}

func TestCompleteFixedValues(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"build", "t.yml", "--accel", ""}, []string{"auto", "kvm", "tcg"}},
		{[]string{"build", "t.yml", "--set", ""}, []string{"version="}},
		{[]string{"cidata", "--format", ""}, []string{"nocloud", "config-2", "vfat"}},
		{[]string{"--log-level", ""}, []string{"trace", "debug", "info", "warn", "error"}},
		{[]string{"base", "inspect", "--format", ""}, []string{"qcow2", "raw"}},
	} {
		if comps, _ := complete(t, c.args...); !slices.Equal(comps, c.want) {
			t.Errorf("%v: %v, want %v", c.args, comps, c.want)
		}
	}
}
