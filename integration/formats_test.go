//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/boottest"
	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/testenv"
)

// Formats tests: real qemu-img, real QEMU boots of converted disks, real
// Vagrant + vagrant-libvirt + libvirtd, real gpg, real versitygw.

// cmdRun runs a command and fails the test on error, returning its output.
func cmdRun(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestFormatsBoot converts the base image to raw, vmdk, ova and vhdx and
// boots raw, the OVA (whose disk is the vmdk output, byte for byte: one
// boot covers both) and vhdx with `ecs-image test`, unmodified, until
// cloud-init has finished. The input is the base uncompressed, as a
// build's chain is (its base is an uncompressed copy): the stream VMDK is
// then read straight from the image file, not through a raw copy
// (formats/chain.go; the compressed case is the raw copy, as raw's).
func TestFormatsBoot(t *testing.T) {
	base := baseImage(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "base.qcow2")
	cmdRun(t, dir, nil, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", base, in)
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	ecsImage(t, "convert", in, "-f", "raw,vmdk,ova,vhdx", "-d", out)
	x := filepath.Join(dir, "ova")
	os.Mkdir(x, 0o755)
	cmdRun(t, x, nil, "tar", "-xf", filepath.Join(out, "base.ova"))
	if got, want := fileSHA256(t, filepath.Join(x, "base-disk1.vmdk")), fileSHA256(t, filepath.Join(out, "base.vmdk")); got != want {
		t.Fatalf("the OVA's disk differs from the vmdk output (%s vs %s): booting the OVA does not cover the vmdk", got, want)
	}
	os.RemoveAll(x)
	for _, tc := range []struct{ file, format string }{{"base.raw", "raw"}, {"base.ova", "ova/vmdk"}, {"base.vhdx", "vhdx"}} {
		t.Run(tc.file, func(t *testing.T) {
			p := filepath.Join(out, tc.file)
			rep := ecsImage(t, "test", p, "--json", "--no-https", "--memory", "1024", "--timeout", "12m",
				"--ready-marker", boottest.CloudInitDone)
			var r struct {
				Format string `json:"format"`
				State  string `json:"state"`
				OK     bool   `json:"ok"`
			}
			if err := json.Unmarshal([]byte(rep), &r); err != nil || !r.OK || r.State != "ready" || r.Format != tc.format {
				t.Errorf("ecs-image test %s: %v, want ok, ready, format %s:\n%s", tc.file, err, tc.format, rep)
			}
			t.Logf("ecs-image test %s:\n%s", tc.file, rep)
		})
	}
}

// TestFormatsReleasePublish drives the CLI: convert, release (signed with a
// gpg-made key), verify with gpg and sha256sum, publish to file:// and to a
// real versitygw over s3://, download and compare.
func TestFormatsReleasePublish(t *testing.T) {
	base := baseImage(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "release")
	os.Mkdir(out, 0o755)
	in := filepath.Join(dir, "ecs-it.qcow2")
	os.Symlink(base, in)
	ecsImage(t, "convert", in, "-f", "qcow2,ova,vmdk", "-d", out)
	os.WriteFile(filepath.Join(out, "ecs-it.build.json"), []byte(`{"template":"ecs-it","variant":"dev","base":{"name":"debian-12","digest":"sha256:00"},"packages":["jq\t1.6"]}`), 0o644)

	gh := t.TempDir()
	genv := []string{"GNUPGHOME=" + gh}
	t.Cleanup(func() { exec.Command("gpgconf", "--homedir", gh, "--kill", "gpg-agent").Run() })
	cmdRun(t, gh, genv, "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "pw", "--quick-gen-key", "ECS IT <it@example.org>", "ed25519", "sign", "0")
	key := filepath.Join(dir, "key.asc")
	os.WriteFile(key, []byte(cmdRun(t, gh, genv, "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "pw", "--armor", "--export-secret-keys")), 0o600)
	pub := filepath.Join(dir, "key.pub.asc")
	os.WriteFile(pub, []byte(cmdRun(t, gh, genv, "gpg", "--armor", "--export")), 0o644)
	pass := filepath.Join(dir, "pass")
	os.WriteFile(pass, []byte("pw\n"), 0o600)

	ecsImage(t, "release", out, "--key", key, "--key-passphrase-file", pass, "--git-revision", "it-rev")
	cmdRun(t, out, genv, "gpg", "--batch", "--verify", "SHA256SUMS.asc", "SHA256SUMS")
	cmdRun(t, out, nil, "sha256sum", "--strict", "-c", "SHA256SUMS")
	var m struct {
		Variant     string `json:"variant"`
		GitRevision string `json:"git_revision"`
		Artifacts   []struct {
			Name, Format string
		} `json:"artifacts"`
	}
	data, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err := json.Unmarshal(data, &m); err != nil || m.Variant != "dev" || m.GitRevision != "it-rev" || len(m.Artifacts) != 3 {
		t.Fatalf("manifest.json: %v\n%s", err, data)
	}

	// file://
	dst := filepath.Join(dir, "published")
	ecsImage(t, "publish", out, "--to", "file://"+dst, "--verify-key", pub)
	cmdRun(t, dst, genv, "gpg", "--batch", "--verify", "SHA256SUMS.asc", "SHA256SUMS")
	cmdRun(t, dst, nil, "sha256sum", "--strict", "-c", "SHA256SUMS")

	// s3:// against versitygw
	endpoint, root := startVersityGW(t)
	o := ecsImage(t, "publish", out, "--to", "s3://releases/ecs/it", "--endpoint", endpoint)
	if !strings.Contains(o, "6 uploaded, 0 already there") {
		t.Fatalf("first publish: %s", o)
	}
	o = ecsImage(t, "publish", out, "--to", "s3://releases/ecs/it", "--endpoint", endpoint)
	if !strings.Contains(o, "0 uploaded, 6 already there") {
		t.Fatalf("re-publish: %s", o)
	}
	// The posix backend stores objects as files: check them like a downloader.
	obj := filepath.Join(root, "releases", "ecs", "it")
	cmdRun(t, obj, genv, "gpg", "--batch", "--verify", "SHA256SUMS.asc", "SHA256SUMS")
	cmdRun(t, obj, nil, "sha256sum", "--strict", "-c", "SHA256SUMS")

	// A tampered artifact is refused before anything is uploaded.
	f, _ := os.OpenFile(filepath.Join(out, "ecs-it.vmdk"), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("x"))
	f.Close()
	_, errOut, err := ecsImageRun("publish", out, "--to", "file://"+filepath.Join(dir, "other"))
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(errOut, "ecs-it.vmdk: SHA-256 mismatch") {
		t.Fatalf("publishing a tampered release: %v\n%s", err, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "other", "manifest.json")); err == nil {
		t.Fatal("tampered release published a manifest")
	}
}

// startVersityGW starts versitygw (posix backend) on a loopback port with
// credentials in the environment; returns the endpoint and the backend dir.
func startVersityGW(t *testing.T) (string, string) {
	t.Helper()
	bin := testenv.Tool(t, "versitygw", "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "releases"), 0o755)
	cmd := exec.Command(bin, "--access", "itkey", "--secret", "itsecret", "--port", addr, "--quiet", "posix", "--sidecar", t.TempDir(), root)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i > 150 {
			t.Fatal("versitygw did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "itkey")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "itsecret")
	t.Setenv("AWS_REGION", "us-east-1")
	return "http://" + addr, root
}

// vagrantReady boots a standalone copy of base once with a NoCloud seed
// whose cloud-config runs formats.VagrantProvisionScript (the same script
// the builder runs for dev/test variants) and enables DHCP on every NIC
// via systemd-networkd, then powers off. The result is a dev image with
// Vagrant's conventions, made with real cloud-init.
func vagrantReady(t *testing.T, base, dir string) string {
	t.Helper()
	img := filepath.Join(dir, "ecs-vagrant.qcow2")
	cmdRun(t, dir, nil, "qemu-img", "convert", "-O", "qcow2", base, img)
	var ud strings.Builder
	ud.WriteString("#cloud-config\nmanage_etc_hosts: true\nwrite_files:\n")
	ud.WriteString("  - path: /etc/systemd/network/80-ecs-dhcp.network\n    content: |\n      [Match]\n      Name=en* eth*\n      [Network]\n      DHCP=yes\n")
	ud.WriteString("  - path: /root/vagrant-setup.sh\n    permissions: \"0700\"\n    content: |\n")
	for _, l := range strings.Split(strings.TrimRight(formats.VagrantProvisionScript, "\n"), "\n") {
		ud.WriteString("      " + l + "\n")
	}
	ud.WriteString("runcmd:\n  - [sh, /root/vagrant-setup.sh]\n  - [systemctl, enable, systemd-networkd]\n  - [sh, -c, 'echo ECS-VAGRANT-PREP-DONE > /dev/ttyS0']\n")
	ud.WriteString("power_state:\n  mode: poweroff\n  timeout: 60\n  condition: true\n")
	os.WriteFile(filepath.Join(dir, "user-data"), []byte(ud.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "meta-data"), []byte("instance-id: ecs-vagrant-prep\nlocal-hostname: ecs-vagrant\n"), 0o644)
	seed := filepath.Join(dir, "seed.iso")
	cmdRun(t, dir, nil, "cloud-localds", seed, filepath.Join(dir, "user-data"), filepath.Join(dir, "meta-data"))
	serial := filepath.Join(dir, "prep-serial.log")
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	start := time.Now()
	// No NIC: nothing here needs a network, and the image must not keep a
	// NIC-specific network config from this boot.
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2", "-display", "none", "-no-reboot",
		"-drive", "file="+img+",if=virtio,format=qcow2", "-drive", "file="+seed+",if=virtio,format=raw,readonly=on",
		"-nic", "none", "-serial", "file:"+serial)
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(serial)
		t.Fatalf("prep boot: %v %s\n%s", err, out, tail(log, 40))
	}
	log, _ := os.ReadFile(serial)
	if !bytes.Contains(log, []byte("ECS-VAGRANT-PREP-DONE")) {
		t.Fatalf("prep boot powered off without running the Vagrant script:\n%s", tail(log, 60))
	}
	t.Logf("vagrant-ready image prepared in %s", time.Since(start).Round(time.Second))
	return img
}

func tail(b []byte, n int) string {
	lines := strings.Split(string(b), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// libvirtNetns starts virtlogd and libvirtd (no systemd here) inside a
// fresh network namespace: the vagrant-libvirt management network
// (192.168.121.0/24), its dnsmasq and the VM's SSH traffic then exist only
// inside this test's namespace. It returns the command prefix to run
// clients in that namespace.
func libvirtNetns(t *testing.T) []string {
	t.Helper()
	for _, b := range []string{"libvirtd", "virtlogd", "vagrant", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("%s not installed (make deps-vagrant)", b)
		}
	}
	if exec.Command("virsh", "-c", "qemu:///system", "version").Run() == nil {
		t.Fatal("a libvirtd is already running; this test runs its own inside a network namespace")
	}
	ns := fmt.Sprintf("ecs-formats-%d", os.Getpid())
	cmdRun(t, "", nil, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	cmdRun(t, "", nil, "ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	logs := t.TempDir()
	var procs []*exec.Cmd
	for _, d := range []string{"virtlogd", "libvirtd"} {
		c := exec.Command("ip", "netns", "exec", ns, d)
		f, _ := os.Create(filepath.Join(logs, d+".log"))
		c.Stdout, c.Stderr = f, f
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, c)
	}
	t.Cleanup(func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Process.Kill()
			procs[i].Wait()
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(logs, "libvirtd.log"))
			t.Logf("libvirtd log:\n%s", tail(b, 30))
		}
	})
	for i := 0; exec.Command("virsh", "-c", "qemu:///system", "version").Run() != nil; i++ {
		if i > 60 {
			t.Fatal("libvirtd did not come up")
		}
		time.Sleep(500 * time.Millisecond)
	}
	return []string{"ip", "netns", "exec", ns}
}

// TestFormatsVagrantLibvirt is the slow proof that a vagrant-libvirt box
// works: box checks, `vagrant box add --checksum`, `vagrant validate`,
// `vagrant up` (libvirt driver qemu: TCG), `vagrant ssh -c true`,
// `vagrant destroy -f`, and the VM's pool volume gone.
func TestFormatsVagrantLibvirt(t *testing.T) {
	if _, err := exec.LookPath("vagrant"); err != nil {
		t.Fatal("vagrant not installed (make deps-vagrant)")
	}
	base := baseImage(t)
	dir := t.TempDir()
	img := vagrantReady(t, base, dir)
	box := filepath.Join(dir, "ecs-dev.libvirt.box")
	ecsImage(t, "convert", img, "-f", "vagrant-libvirt", "--variant", "dev", "--memory", "1024", "-o", box)
	// Production variants never get a box.
	if _, e, err := ecsImageRun("convert", img, "-f", "vagrant-libvirt", "--variant", "production", "-o", box+".prod"); exitCode(err) != 2 || !strings.Contains(e, `not from the production variant "production"`) {
		t.Fatalf("convert -f vagrant-libvirt --variant production: %v, want exit 2 naming the variant:\n%s", err, e)
	}
	if _, err := os.Stat(box + ".prod"); !os.IsNotExist(err) {
		t.Errorf("a refused production box was written: %v", err)
	}

	// Box checks: gzip integrity (Vagrant itself misses corruption) and
	// metadata.json against qemu-img info of box.img.
	cmdRun(t, dir, nil, "gzip", "-t", box)
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	cmdRun(t, x, nil, "tar", "-xzf", box)
	var meta struct {
		Provider    string `json:"provider"`
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual_size"`
	}
	mb, _ := os.ReadFile(filepath.Join(x, "metadata.json"))
	json.Unmarshal(mb, &meta)
	var qi struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	json.Unmarshal([]byte(cmdRun(t, x, nil, "qemu-img", "info", "--output=json", "box.img")), &qi)
	if meta.Provider != "libvirt" || meta.Format != qi.Format || meta.VirtualSize != (qi.VirtualSize+(1<<30)-1)>>30 {
		t.Fatalf("metadata.json %s vs qemu-img info %+v", mb, qi)
	}
	os.RemoveAll(x)

	ns := libvirtNetns(t)
	vhome := filepath.Join(dir, "vagrant.d")
	venv := []string{"VAGRANT_HOME=" + vhome, "VAGRANT_CHECKPOINT_DISABLE=1", "VAGRANT_DEFAULT_PROVIDER=libvirt"}
	sum := fileSHA256(t, box)
	const boxName = "ecs-it/dev"
	cmdRun(t, dir, venv, "vagrant", "box", "add", "--name", boxName, "--provider", "libvirt", "--checksum", sum, "--checksum-type", "sha256", box)
	// A wrong checksum is refused.
	if out, err := exec.Command("env", append(venv, "vagrant", "box", "add", "--name", "ecs-it/bad", "--provider", "libvirt", "--checksum", strings.Repeat("0", 64), "--checksum-type", "sha256", box)...).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "checksum") || !strings.Contains(string(out), strings.Repeat("0", 64)) || !strings.Contains(string(out), sum) {
		t.Fatalf("vagrant box add with a wrong checksum: %v, want a checksum mismatch naming both digests:\n%s", err, out)
	}

	proj := filepath.Join(dir, "project")
	os.Mkdir(proj, 0o755)
	os.WriteFile(filepath.Join(proj, "Vagrantfile"), []byte(`Vagrant.configure("2") do |config|
  config.vm.box = "`+boxName+`"
  config.vm.boot_timeout = 900
  config.vm.provider :libvirt do |lv|
    lv.driver = "qemu"          # TCG: no KVM here
    lv.memory = 1024
    lv.cpus = 2
    lv.cpu_mode = "custom"
    lv.cpu_model = "qemu64"
    lv.graphics_type = "none"
    lv.video_type = "none"
  end
end
`), 0o644)
	cmdRun(t, proj, venv, "vagrant", "validate")

	pool := func() string {
		return cmdRun(t, proj, nil, "virsh", "-c", "qemu:///system", "vol-list", "default")
	}
	var destroyed bool
	t.Cleanup(func() {
		if !destroyed {
			args := append(append(append([]string{}, ns[1:]...), "env"), venv...)
			c := exec.Command(ns[0], append(args, "vagrant", "destroy", "-f")...)
			c.Dir = proj
			c.Run()
		}
		// The box's base volume and the box itself.
		out, _ := exec.Command("virsh", "-c", "qemu:///system", "vol-list", "default").Output()
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 && strings.Contains(f[0], "ecs-it-VAGRANTSLASH-dev") {
				exec.Command("virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", f[0]).Run()
			}
		}
	})
	inNS := func(args ...string) string {
		t.Helper()
		return cmdRun(t, proj, venv, ns[0], append(ns[1:], args...)...)
	}
	start := time.Now()
	inNS("vagrant", "up", "--provider", "libvirt")
	t.Logf("vagrant up: %s", time.Since(start).Round(time.Second))
	if !strings.Contains(pool(), "project_default.img") {
		t.Fatalf("no VM volume in the pool:\n%s", pool())
	}
	inNS("vagrant", "ssh", "-c", "true")
	if o := inNS("vagrant", "ssh", "-c", "sudo -n id -u"); !strings.Contains(o, "0") {
		t.Fatalf("passwordless sudo: %q", o)
	}
	inNS("vagrant", "destroy", "-f")
	destroyed = true
	if p := pool(); strings.Contains(p, "project_default.img") {
		t.Fatalf("vagrant destroy left the VM volume:\n%s", p)
	}
	cmdRun(t, proj, venv, "vagrant", "box", "remove", "--force", boxName)
}

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}
