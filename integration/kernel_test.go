//go:build integration

package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 21: bases as they come. A base with Debian's cloud kernel (no
// AHCI) goes through a booted build stage (the
// build seed is a read-only virtio disk) and `ecs-image test` of the
// artifact with its seed on a CD-ROM the kernel can read; the cloud
// kernel's qcow2 is refused by the driver check (libvirt q35's SATA
// CD-ROM), and `kernel: generic` makes one that reads its seed there. The
// generic bookworm base goes through the same in TestBuildSmall (booted
// stage) and TestMachineTestCommandBareBase (`ecs-image test`), the
// Debian 13 base in TestAppliance (the appliance is built on it).
func TestBaseKernels(t *testing.T) {
	t.Run("cloud", func(t *testing.T) {
		base := strings.TrimSpace(ecsImage(t, "base", "build", "--kernel", "cloud"))
		dir := t.TempDir()
		tmpl := writeKernelTemplate(t, dir, base, "cloud-amd64", `
  cloud:
    outputs: [vhdx]
  cloud-qcow2:
    outputs: [qcow2]
  generic:
    kernel: generic
    outputs: [qcow2]
`)
		out := filepath.Join(dir, "out")
		ecsImage(t, "build", tmpl, "-o", out, "--variant", "cloud")
		// Hyper-V generation 1's DVD is on IDE: the cloud kernel has
		// ata_piix, so QEMU's i440fx IDE CD-ROM emulates it.
		vmtestPasses(t, filepath.Join(out, "kernels-cloud.vhdx"), "--machine", "pc")

		// qcow2 runs on libvirt q35, whose CD-ROM is SATA: refused, with
		// the missing driver and the fix.
		_, errOut, err := ecsImageRun("build", tmpl, "-o", filepath.Join(dir, "refused"), "--variant", "cloud-qcow2")
		if code := exitCode(err); code != 2 || !strings.Contains(errOut, "no ahci driver") || !strings.Contains(errOut, "kernel: generic") {
			t.Errorf("cloud kernel to qcow2: exit %d\n%s", code, lastLines(errOut, 15))
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "refused", "*")); len(m) > 0 {
			t.Errorf("a refused build wrote %v", m)
		}

		// kernel: generic swaps the kernel (a chroot stage after the
		// booted one); the seed on q35's SATA CD-ROM is read.
		ecsImage(t, "build", tmpl, "-o", out, "--variant", "generic")
		m := readManifest(t, filepath.Join(out, "kernels-generic.build.json"))
		pk := strings.Join(m.Packages, "\n")
		if !strings.Contains(pk, "linux-image-amd64\t") || strings.Contains(pk, "cloud-amd64") {
			t.Errorf("kernel: generic left the packages:\n%s", grepLines(pk, "linux-image"))
		}
		vmtestPasses(t, filepath.Join(out, "kernels-generic.qcow2"))
	})
}

// writeKernelTemplate writes a template on base with one booted stage that
// checks the running kernel's name, and the given variants.
func writeKernelTemplate(t *testing.T, dir, base, kernelSuffix, variants string) string {
	t.Helper()
	p := filepath.Join(dir, "kernels.yml")
	src := `name: kernels
base:
  file: ` + base + `
memory: 1024
stages:
  - name: booted
    mode: boot
    provisioners:
      - type: shell
        inline:
          - uname -r > /etc/ecs-build-kernel
          - 'case "$(uname -r)" in *` + kernelSuffix + `) ;; *) echo "booted $(uname -r), want *` + kernelSuffix + `"; exit 1 ;; esac'
variants:` + variants
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// vmtestPasses runs `ecs-image test ARTIFACT --no-https` (a bare image: the
// seed creates a user, cloud-init's final line is the ready marker) and
// wants a pass with cloud-init's NoCloud datasource.
func vmtestPasses(t *testing.T, artifact string, args ...string) {
	t.Helper()
	out, errOut, err := ecsImageRun(append([]string{"test", artifact, "--no-https", "--json", "--memory", "1024", "--timeout", "15m"}, args...)...)
	var rep struct {
		OK           bool    `json:"ok"`
		Machine      string  `json:"machine"`
		SeedBus      string  `json:"seed_bus"`
		Datasource   string  `json:"datasource"`
		ReadySeconds float64 `json:"ready_seconds"`
		Error        string  `json:"error"`
	}
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || err != nil || !rep.OK || rep.Datasource != "DataSourceNoCloud" {
		t.Fatalf("ecs-image test %s %v: %v\n%s\n%s", filepath.Base(artifact), args, err, out, lastLines(errOut, 20))
	}
	t.Logf("%s on %s, seed on %s: cloud-init done after %.1fs (%s)", filepath.Base(artifact), rep.Machine, rep.SeedBus, rep.ReadySeconds, rep.Datasource)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
