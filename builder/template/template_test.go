package template

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/provisioners"
	"github.com/ecs-image/ecs-image/testenv"
)

// TestBadTemplates checks every template in testdata/bad: it must be
// rejected with exactly the problems listed in the .want file beside it
// (each message line starts with the wanted line; absolute paths of the
// corpus directory are shown relative).
func TestBadTemplates(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yml")
	if err != nil || len(files) < 15 {
		t.Fatalf("corpus: %v (%d files)", err, len(files))
	}
	absDir, _ := filepath.Abs("testdata/bad")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yml") + ".want")
			if err != nil {
				t.Fatal(err)
			}
			_, err = Load(f)
			if err == nil {
				t.Fatal("template accepted")
			}
			if !IsError(err) {
				t.Fatalf("error is not a *Error: %T %v", err, err)
			}
			got := strings.ReplaceAll(err.Error(), absDir+"/", "")
			got = strings.ReplaceAll(got, "testdata/bad/", "")
			gl := strings.Split(got, "\n")
			wl := strings.Split(strings.TrimSpace(string(want)), "\n")
			if len(gl) != len(wl) {
				t.Fatalf("%d problems, want %d:\n%s", len(gl), len(wl), got)
			}
			for i := range wl {
				if !strings.HasPrefix(gl[i], wl[i]) {
					t.Errorf("problem %d:\n got: %s\nwant: %s", i, gl[i], wl[i])
				}
			}
		})
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodTemplate = `
name: small
base:
  file: base.qcow2
disk_size: 4G
memory: 1024
stages:
  - name: files
    provisioners:
      - type: file
        source: motd
        destination: /etc/motd
        mode: "0644"
  - name: tools
    provisioners:
      - type: packages
        packages: [jq]
      - type: shell
        inline: ["echo hi > /root/hi"]
        env: {GREETING: hello}
variants:
  dev:
    stages:
      - name: dev-tools
        provisioners:
          - type: packages
            packages: [strace]
  prod:
    production: true
    env: {MODE: prod}
    stages:
      - name: hardening
        provisioners:
          - type: file
            content: "prod\n"
            destination: /etc/ecs-variant
outputs: [qcow2, vmdk]
`

func TestGoodTemplate(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "base.qcow2", "x")
	writeFile(t, dir, "motd", "hello\n")
	tp, err := Load(writeFile(t, dir, "t.yml", goodTemplate))
	if err != nil {
		t.Fatal(err)
	}
	if tp.Memory != 1024 || tp.CPUs != DefaultCPUs || tp.DiskSizeBytes() != 4<<30 || tp.SSHTimeout != DefaultSSHTimeout {
		t.Errorf("defaults: %+v", tp)
	}
	if tp.Base.File != filepath.Join(dir, "base.qcow2") {
		t.Errorf("base file %q not resolved against the template's directory", tp.Base.File)
	}
	if tp.Stages[0].NeedsBoot() || !tp.Stages[1].NeedsBoot() {
		t.Error("files stage must be offline, tools stage booted")
	}
	p, err := tp.Plan("prod")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range p.Stages {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != "files,tools,hardening" || !p.Production || p.Vars["MODE"] != "prod" || p.Vars["ECS_IMAGE_PRODUCTION"] != "true" {
		t.Errorf("prod plan: %v %+v", names, p)
	}
	p, err = tp.Plan("")
	if err != nil || len(p.Stages) != 2 || p.Production {
		t.Errorf("default plan: %v %+v", err, p)
	}
	if _, err := tp.Plan("staging"); err == nil || !strings.Contains(err.Error(), `no variant "staging" (variants: dev, prod)`) {
		t.Errorf("unknown variant: %v", err)
	}
}

// TestVagrantStage: a dev plan that emits a box gets the vagrant stage last,
// running formats.VagrantProvisionScript; other plans do not, and a
// production variant asking for a box is refused.
func TestVagrantStage(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "base.qcow2", "x")
	writeFile(t, dir, "motd", "hello\n")
	src := strings.Replace(goodTemplate, "          - type: packages\n            packages: [strace]\n",
		"          - type: packages\n            packages: [strace]\n    outputs: [qcow2, vagrant-libvirt]\n", 1)
	tp, err := Load(writeFile(t, dir, "t.yml", src))
	if err != nil {
		t.Fatal(err)
	}
	p, err := tp.Plan("dev")
	if err != nil {
		t.Fatal(err)
	}
	last := p.Stages[len(p.Stages)-1]
	if last.Name != VagrantStageName || !last.NeedsBoot() {
		t.Fatalf("dev plan's last stage = %q, want the booted vagrant stage", last.Name)
	}
	sh, ok := last.Provisioners[0].P.(*provisioners.Shell)
	if !ok || len(sh.Inline) != 1 || sh.Inline[0] != formats.VagrantProvisionScript {
		t.Errorf("vagrant stage does not run formats.VagrantProvisionScript: %+v", last.Provisioners[0].P)
	}
	if p, err := tp.Plan("prod"); err != nil || p.Stages[len(p.Stages)-1].Name == VagrantStageName {
		t.Errorf("prod plan: %v", err)
	}
	bad := strings.Replace(goodTemplate, "outputs: [qcow2, vmdk]", "outputs: [qcow2, vagrant-libvirt]", 1)
	btp, err := Load(writeFile(t, dir, "bad.yml", bad))
	if err == nil {
		_, err = btp.Plan("prod")
	}
	if err == nil || !strings.Contains(err.Error(), "vagrant-libvirt") {
		t.Errorf("production variant with a box accepted: %v", err)
	}
}

// TestRepoTemplates validates the templates shipped in templates/.
func TestRepoTemplates(t *testing.T) {
	tp, err := Load("../../templates/test-small.yml")
	if err != nil {
		t.Fatal(err)
	}
	if len(tp.Stages) != 2 || !tp.Stages[0].NeedsBoot() || tp.Stages[1].NeedsBoot() {
		t.Errorf("test-small: want a booted then a file-only stage")
	}
	// `make test` builds both; a bare `go test` outside CI skips the rest.
	testenv.File(t, "../../bin/ecs-agent", "ecs-appliance.yml needs it: make build")
	for _, f := range []string{"ecs-standin.tar", "pdfas-standin.tar", "mocca-standin.tar"} {
		testenv.File(t, "../../templates/files/images/"+f, "ecs-appliance.yml needs the ECS stand-in images: make templates/files/images/ecs-standin.tar")
	}
	tp, err = Load("../../templates/ecs-appliance.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"dev", "test", "prod"} {
		p, err := tp.Plan(v)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		shared := len(tp.Stages)
		want := shared + 1 // one variant stage
		if v == "dev" {    // emits a Vagrant box: the vagrant stage is appended
			want++
		}
		if p.Shared != shared || len(p.Stages) != want {
			t.Errorf("%s: %d stages (%d shared)", v, len(p.Stages), p.Shared)
		}
	}
	if p, _ := tp.Plan(""); p.Variant != "prod" || !p.Production {
		t.Errorf("default variant: %+v", p)
	}
}

// kernel: appends the kernel stage (chroot; check, install, purge) after
// the variant's stages; a variant's kernel replaces the template's.
func TestKernelStage(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "base.qcow2", "x")
	writeFile(t, dir, "motd", "hello\n")
	src := "kernel: generic\n" + strings.Replace(goodTemplate, "    outputs: [qcow2, vagrant-libvirt]\n", "", 1)
	src = strings.Replace(src, "  prod:\n", "  prod:\n    kernel: cloud\n", 1)
	tp, err := Load(writeFile(t, dir, "t.yml", src))
	if err != nil {
		t.Fatal(err)
	}
	for variant, flavour := range map[string]string{"dev": "generic", "prod": "cloud"} {
		p, err := tp.Plan(variant)
		if err != nil {
			t.Fatal(err)
		}
		last := p.Stages[len(p.Stages)-1]
		if last.Name != "kernel-"+flavour || last.Mode != ModeChroot || len(last.Provisioners) != 3 {
			t.Fatalf("%s: last stage %+v", variant, last)
		}
		pk := last.Provisioners[1].P.(*provisioners.Packages)
		if want := map[string]string{"generic": "linux-image-amd64", "cloud": "linux-image-cloud-amd64"}[flavour]; len(pk.Packages) != 1 || pk.Packages[0] != want {
			t.Errorf("%s: installs %v", variant, pk.Packages)
		}
		if !strings.Contains(last.Provisioners[1].Canonical(), "linux-image") {
			t.Errorf("%s: the packages node (the stage key) does not name the kernel", variant)
		}
	}
	// The purge: the other flavour's installed kernels, nothing else.
	for flavour, want := range map[string]string{
		"generic": "purge -y linux-image-6.1.0-50-cloud-amd64 linux-image-cloud-amd64",
		"cloud":   "purge -y linux-image-6.1.0-50-amd64 linux-image-amd64",
	} {
		st, err := KernelStage(flavour)
		if err != nil {
			t.Fatal(err)
		}
		bin := t.TempDir()
		writeFile(t, bin, "dpkg-query", "#!/bin/sh\nprintf 'installed linux-image-6.1.0-50-amd64\\ninstalled linux-image-6.1.0-50-cloud-amd64\\nconfig-files linux-image-6.1.0-40-amd64\\ninstalled linux-image-amd64\\ninstalled linux-image-cloud-amd64\\n'\n")
		writeFile(t, bin, "apt-get", "#!/bin/sh\necho \"$*\" > \""+bin+"/args\"\n")
		writeFile(t, bin, "ls", "#!/bin/sh\ntrue\n")
		for _, f := range []string{"dpkg-query", "apt-get", "ls"} {
			os.Chmod(filepath.Join(bin, f), 0o755)
		}
		script := st.Provisioners[2].P.(*provisioners.Shell).Inline[0]
		cmd := exec.Command("/bin/sh", "-ec", script)
		cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", flavour, err, out)
		}
		got, _ := os.ReadFile(filepath.Join(bin, "args"))
		if strings.TrimSpace(string(got)) != want {
			t.Errorf("%s: apt-get %q, want %q", flavour, got, want)
		}
	}
	if _, err := KernelStage("rt"); err == nil {
		t.Error("kernel rt accepted")
	}
}
