package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/builder/template"
	"github.com/ecs-image/ecs-image/testenv"
)

const planTemplate = `
name: plantest
base:
  file: base.qcow2
outputs: [qcow2, vmdk]
stages:
  - name: one
    mode: boot
    provisioners:
      - type: shell
        inline: ["echo one"]
  - name: two
    provisioners:
      - type: file
        source: motd
        destination: /etc/motd
variants:
  prod:
    production: true
    outputs: [qcow2]
    stages:
      - name: prod-extra
        mode: boot
        provisioners:
          - type: shell
            inline: ["echo prod"]
  dev:
    stages:
      - name: dev-extra
        mode: boot
        provisioners:
          - type: shell
            inline: ["echo dev"]
`

func resetPlanFlags(t *testing.T) {
	t.Cleanup(func() {
		for _, f := range []string{"json", "base-digest", "no-chroot"} {
			fl := planCmd.Flags().Lookup(f)
			fl.Value.Set(fl.DefValue)
			fl.Changed = false
		}
	})
}

func TestPlanCLI(t *testing.T) {
	resetPlanFlags(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "motd"), []byte("hi\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "base.qcow2"), []byte("x"), 0o644)
	tmpl := filepath.Join(dir, "t.yml")
	os.WriteFile(tmpl, []byte(planTemplate), 0o644)
	digest := "sha256:" + strings.Repeat("ab", 32)

	code, out, errs := runEnvCLI(t, "plan", tmpl, "--base-digest", digest, "--json")
	if code != 0 {
		t.Fatalf("plan --json: exit %d: %s", code, errs)
	}
	var p planOutput
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if p.Name != "plantest" || p.BaseDigest != digest || len(p.Jobs) != 2 {
		t.Fatalf("plan %+v", p)
	}
	dev, prod := p.Jobs[0], p.Jobs[1]
	if dev.Variant != "dev" || prod.Variant != "prod" || !prod.Production || dev.Production {
		t.Fatalf("jobs %+v", p.Jobs)
	}
	if strings.Join(dev.Outputs, ",") != "qcow2,vmdk" || strings.Join(prod.Outputs, ",") != "qcow2" {
		t.Fatalf("outputs dev %v prod %v", dev.Outputs, prod.Outputs)
	}
	if len(dev.Stages) != 3 || len(prod.Stages) != 3 {
		t.Fatalf("stages dev %d prod %d", len(dev.Stages), len(prod.Stages))
	}
	// Shared stages have the same keys in every variant; the chain links.
	for i := 0; i < 2; i++ {
		if dev.Stages[i].Key != prod.Stages[i].Key || !dev.Stages[i].Shared {
			t.Errorf("shared stage %d: dev %+v prod %+v", i, dev.Stages[i], prod.Stages[i])
		}
	}
	if dev.Stages[2].Key == prod.Stages[2].Key || dev.Stages[2].Shared || dev.Stages[2].Name != "dev-extra" {
		t.Errorf("variant stages: %+v %+v", dev.Stages[2], prod.Stages[2])
	}
	for _, j := range p.Jobs {
		if !strings.HasPrefix(j.Stages[0].Parent, "base:") || j.Stages[0].Mode.String() != "boot" {
			t.Errorf("%s: first stage %+v", j.Variant, j.Stages[0])
		}
		for i := 1; i < len(j.Stages); i++ {
			if j.Stages[i].Parent != j.Stages[i-1].Key {
				t.Errorf("%s: stage %d parent %s", j.Variant, i, j.Stages[i].Parent)
			}
		}
		if len(j.GeneraliseKey) != 32 {
			t.Errorf("%s: generalise key %q", j.Variant, j.GeneraliseKey)
		}
		// Generalised in a chroot on a host that can chroot, else in the
		// offline helper; the mode is part of the key.
		want := template.ModeOffline
		if builder.ChrootUsable() == nil {
			want = template.ModeChroot
		}
		if j.GeneraliseMode != want {
			t.Errorf("%s: generalise mode %s, want %s", j.Variant, j.GeneraliseMode, want)
		}
	}
	if len(p.Matrix) != 2 || p.Matrix[0]["variant"] != "dev" || p.Matrix[1]["variant"] != "prod" {
		t.Errorf("matrix %v", p.Matrix)
	}

	// Another base digest: other keys. A changed uploaded file: the stage
	// that uploads it and those after it change, the first does not.
	_, out2, _ := runEnvCLI(t, "plan", tmpl, "--base-digest", "sha256:"+strings.Repeat("cd", 32), "--json")
	var p2 planOutput
	json.Unmarshal([]byte(out2), &p2)
	if p2.Jobs[0].Stages[0].Key == dev.Stages[0].Key {
		t.Error("base digest does not change the keys")
	}
	os.WriteFile(filepath.Join(dir, "motd"), []byte("changed\n"), 0o644)
	_, out3, _ := runEnvCLI(t, "plan", tmpl, "--base-digest", digest, "--json")
	var p3 planOutput
	json.Unmarshal([]byte(out3), &p3)
	if p3.Jobs[0].Stages[0].Key != dev.Stages[0].Key || p3.Jobs[0].Stages[1].Key == dev.Stages[1].Key || p3.Jobs[0].Stages[2].Key == dev.Stages[2].Key {
		t.Errorf("changed file: keys %+v", p3.Jobs[0].Stages)
	}

	// --no-chroot: the generalisation in the helper, under another key.
	_, out4, _ := runEnvCLI(t, "plan", tmpl, "--base-digest", digest, "--json", "--no-chroot")
	var p4 planOutput
	json.Unmarshal([]byte(out4), &p4)
	if g := p4.Jobs[0]; g.GeneraliseMode != template.ModeOffline || (dev.GeneraliseMode == template.ModeChroot && g.GeneraliseKey == dev.GeneraliseKey) {
		t.Errorf("--no-chroot: generalise %s %s (without: %s %s)", g.GeneraliseMode, g.GeneraliseKey, dev.GeneraliseMode, dev.GeneraliseKey)
	}
	planCmd.Flags().Set("no-chroot", "false")

	// Table: one line per stage and the generalisation, per variant.
	planCmd.Flags().Set("json", "false")
	code, out, _ = runEnvCLI(t, "plan", tmpl, "--base-digest", digest)
	if code != 0 || len(strings.Split(strings.TrimSpace(out), "\n")) != 1+2*4 || !strings.Contains(out, "prod-extra") {
		t.Errorf("table (exit %d):\n%s", code, out)
	}

	// Bad digest: exit 2.
	if code, _, _ := runEnvCLI(t, "plan", tmpl, "--base-digest", "md5:00"); code != exitUsage {
		t.Errorf("--base-digest md5:00: exit %d", code)
	}
}

func TestPlanResolvesLocalBase(t *testing.T) {
	resetPlanFlags(t)
	qi := testenv.Tool(t, "qemu-img", "make deps")
	dir := t.TempDir()
	t.Setenv("ECS_IMAGE_CACHE", filepath.Join(dir, "cache"))
	os.WriteFile(filepath.Join(dir, "motd"), []byte("hi\n"), 0o644)
	if out, err := exec.Command(qi, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	tmpl := filepath.Join(dir, "t.yml")
	os.WriteFile(tmpl, []byte(planTemplate), 0o644)
	code, out, errs := runEnvCLI(t, "plan", tmpl, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var p planOutput
	json.Unmarshal([]byte(out), &p)
	data, _ := os.ReadFile(filepath.Join(dir, "base.qcow2"))
	sum := sha256.Sum256(data)
	if p.BaseDigest != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Fatalf("base digest %s", p.BaseDigest)
	}
}
