package builder

import (
	"archive/tar"
	"context"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/images"
	"github.com/ecs-image/ecs-image/qemuimg"
	"github.com/ecs-image/ecs-image/release"
)

func versionTemplate(t *testing.T, version string) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, dir, "base.qcow2", "x")
	v := ""
	if version != "" {
		v = "version: " + version + "\n"
	}
	return writeFile(t, dir, "v.yml", "name: v\n"+v+"base:\n  file: base.qcow2\nstages:\n  - name: one\n    provisioners:\n      - type: shell\n        inline: [\"true\"]\n")
}

// TestTemplateVersion: the version field, its default, YAML numbers kept
// as written, and the --set override validated like the field.
func TestTemplateVersion(t *testing.T) {
	for in, want := range map[string]string{"": template.DefaultVersion, "1.4.0": "1.4.0", "1.10": "1.10", "2026.12.1-rc.1+git.abc": "2026.12.1-rc.1+git.abc", `"7"`: "7"} {
		tp, err := template.Load(versionTemplate(t, in))
		if err != nil {
			t.Fatalf("version %q: %v", in, err)
		}
		if tp.Version != want {
			t.Errorf("version %q: got %q, want %q", in, tp.Version, want)
		}
	}
	for _, bad := range []string{"", "-1", "1.0 beta", "1/2", "a$b", strings.Repeat("1", 65), "é"} {
		if template.CheckVersion(bad) == nil {
			t.Errorf("template.CheckVersion(%q) accepted", bad)
		}
	}

	run := func(override string) (*validated, error) {
		var out validated
		state := new(multistep.BasicStateBag)
		(&stepValidate{Template: versionTemplate(t, "1.0.0"), Version: override, Log: quietLog(), Out: &out}).Run(context.Background(), state)
		if err, ok := state.GetOk("error"); ok {
			return &out, err.(error)
		}
		return &out, nil
	}
	if b, err := run(""); err != nil || b.tmpl.Version != "1.0.0" || b.plan == nil || b.plan.Template != b.tmpl {
		t.Fatalf("no override: %v", err)
	}
	if b, err := run("1.0.1"); err != nil || b.tmpl.Version != "1.0.1" {
		t.Fatalf("override: %v %q", err, b.tmpl.Version)
	}
	if _, err := run("1.0 beta"); !template.IsError(err) || !strings.Contains(err.Error(), `version: --set version=1.0 beta: "1.0 beta": want`) {
		t.Fatalf("bad override: %v", err)
	}
}

// TestVersionReachesOutputs: the template's version is the OVA's OVF
// product version, the build manifest's version and the release
// manifest's (ecs-image release reads the build manifest).
func TestVersionReachesOutputs(t *testing.T) {
	testenv.Tool(t, "qemu-img", "make deps")
	tp, err := template.Load(versionTemplate(t, "1.4.0-rc.2"))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := tp.Plan("")
	if err != nil {
		t.Fatal(err)
	}
	b := &buildState{validated: validated{tmpl: tp, plan: plan}, fetchedBase: fetchedBase{base: &images.Base{Name: "debian-12", Digest: "sha256:00"}}}

	dir := t.TempDir()
	in := filepath.Join(dir, "in.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", in, "8M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	arts, err := formats.Emit(context.Background(), &qemuimg.Info{Path: in, Format: "qcow2", VirtualSize: 8 << 20}, out, "v", []string{"ova"}, b.compactStep().Formats)
	if err != nil {
		t.Fatal(err)
	}
	if got := ovfVersion(t, arts[0].Path); got != "1.4.0-rc.2" {
		t.Errorf("OVF product version %q, want 1.4.0-rc.2", got)
	}

	m := b.manifest()
	m.Files = []ArtifactFile{{Format: "ova", Path: "v.ova", Size: arts[0].Size}}
	data, err := manifestJSON(m)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil || raw["version"] != "1.4.0-rc.2" {
		t.Fatalf("build manifest version %v (%v)", raw["version"], err)
	}
	if err := os.WriteFile(filepath.Join(out, "v.build.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	rm, err := release.Make(context.Background(), out, release.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rm.Version != "1.4.0-rc.2" {
		t.Errorf("release manifest version %q", rm.Version)
	}
	var rj map[string]any
	if err := json.Unmarshal(mustReadFile(t, filepath.Join(out, release.ManifestFile)), &rj); err != nil || rj["version"] != "1.4.0-rc.2" {
		t.Errorf("manifest.json version %v (%v)", rj["version"], err)
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ovfVersion returns the product version of the OVF descriptor in an OVA.
func ovfVersion(t *testing.T, ova string) string {
	t.Helper()
	f, err := os.Open(ova)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no .ovf in %s: %v", ova, err)
		}
		if !strings.HasSuffix(h.Name, ".ovf") {
			continue
		}
		raw, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		var env struct {
			Version string `xml:"VirtualSystem>ProductSection>Version"`
		}
		if err := xml.Unmarshal(raw, &env); err != nil {
			t.Fatal(err)
		}
		return env.Version
	}
}

func quietLog() *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}
