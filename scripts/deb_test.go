package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

// TestDebPackage builds the binaries and the .deb (scripts/deb.sh, as
// make deb does) and checks its control fields and contents.
func TestDebPackage(t *testing.T) {
	testenv.Tool(t, "dpkg-deb", "Debian's dpkg")
	bin, out := t.TempDir(), t.TempDir()
	// As make build: the front program, the complete one in libexec/, the agent.
	for _, b := range [][]string{
		{"ecs-image", "-tags", "ecsfront", "../cmd/ecs-image"},
		{"libexec/ecs-image", "../cmd/ecs-image"},
		{"ecs-agent", "../cmd/ecs-agent"},
	} {
		cmd := exec.Command("go", append([]string{"build", "-o", filepath.Join(bin, b[0])}, b[1:]...)...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b[0], err, o)
		}
	}
	script, _ := filepath.Abs("deb.sh")
	cmd := exec.Command("bash", script, bin, out, "v1.2.3-4-gabcdef0-dirty")
	cmd.Dir = ".."
	o, err := cmd.Output()
	if err != nil {
		t.Fatalf("deb.sh: %v\n%s", err, o)
	}
	deb := strings.TrimSpace(string(o))
	if filepath.Base(deb) != "ecs-image_1.2.3+4+gabcdef0+dirty_amd64.deb" {
		t.Fatalf("deb.sh wrote %q", deb)
	}
	field := func(name string) string {
		v, err := exec.Command("dpkg-deb", "-f", deb, name).Output()
		if err != nil {
			t.Fatalf("dpkg-deb -f %s: %v", name, err)
		}
		return strings.TrimSpace(string(v))
	}
	if p, v, a := field("Package"), field("Version"), field("Architecture"); p != "ecs-image" || v != "1.2.3+4+gabcdef0+dirty" || a != "amd64" {
		t.Errorf("Package %q Version %q Architecture %q", p, v, a)
	}
	depends := field("Depends")
	for _, pkg := range []string{"qemu-system-x86", "qemu-utils", "qemu-system-common", "e2fsprogs", "fdisk", "mount", "mmdebstrap | debootstrap"} {
		if !strings.Contains(", "+depends+",", ", "+pkg+",") {
			t.Errorf("Depends %q lacks %s", depends, pkg)
		}
	}
	if !strings.Contains(field("Maintainer"), "<") || field("Description") == "" {
		t.Error("Maintainer or Description missing")
	}
	list, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	contents := map[string]string{} // path → mode/owner column
	for _, l := range strings.Split(string(list), "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 {
			contents[strings.TrimPrefix(f[5], ".")] = f[0] + " " + f[1]
		}
	}
	for p, mode := range map[string]string{
		"/usr/bin/ecs-image":                                  "-rwxr-xr-x root/root",
		"/usr/lib/ecs-image/ecs-image":                        "-rwxr-xr-x root/root",
		"/usr/lib/ecs-image/ecs-agent":                        "-rwxr-xr-x root/root",
		"/usr/share/man/man1/ecs-image.1.gz":                  "-rw-r--r-- root/root",
		"/usr/share/man/man1/ecs-image-build.1.gz":            "-rw-r--r-- root/root",
		"/usr/share/man/man1/ecs-image-base-fetch.1.gz":       "-rw-r--r-- root/root",
		"/usr/share/man/man1/ecs-agent.1.gz":                  "-rw-r--r-- root/root",
		"/usr/share/bash-completion/completions/ecs-image":    "-rw-r--r-- root/root",
		"/usr/share/zsh/vendor-completions/_ecs-image":        "-rw-r--r-- root/root",
		"/usr/share/fish/vendor_completions.d/ecs-image.fish": "-rw-r--r-- root/root",
		"/usr/share/doc/ecs-image/README.md.gz":               "-rw-r--r-- root/root",
	} {
		if got, ok := contents[p]; !ok {
			t.Errorf("%s missing from the package", p)
		} else if got != mode {
			t.Errorf("%s: %s, want %s", p, got, mode)
		}
	}
	for p := range contents {
		if strings.Contains(p, "__gendocs") || strings.Contains(p, "__complete") {
			t.Errorf("hidden command documented: %s", p)
		}
	}

	// Unpacked, /usr/bin/ecs-image runs version itself and executes
	// /usr/lib/ecs-image/ecs-image for the other commands.
	root := t.TempDir()
	if o, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, o)
	}
	for _, args := range [][]string{{"version"}, {"build", "--help"}} {
		o, err := exec.Command(filepath.Join(root, "usr/bin/ecs-image"), args...).CombinedOutput()
		if err != nil || !strings.Contains(string(o), "ecs-image") {
			t.Errorf("/usr/bin/ecs-image %s: %v\n%s", strings.Join(args, " "), err, o)
		}
	}

	// The man page is a man page of the command.
	page, err := exec.Command("sh", "-c", "dpkg-deb --fsys-tarfile "+deb+" | tar -xOf - ./usr/share/man/man1/ecs-image-build.1.gz | gzip -dc").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{".TH \"ECS-IMAGE-BUILD\" \"1\"", "--variant", ".SH SEE ALSO"} {
		if !strings.Contains(string(page), w) {
			t.Errorf("ecs-image-build.1 lacks %q:\n%.400s", w, page)
		}
	}
}

// TestDebVersion: git describe versions map to Debian versions that sort
// right.
func TestDebVersion(t *testing.T) {
	testenv.Tool(t, "dpkg", "Debian's dpkg")
	debver := func(v string) string {
		o, err := exec.Command("bash", "deb.sh", "--debian-version", v).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(o))
	}
	order := []string{"abcdef0", "v0.9.0", "v1.0.0", "v1.0.0-2-gabcdef0", "v1.0.0-10-g0123456", "v1.1.0"}
	for i := 1; i < len(order); i++ {
		a, b := debver(order[i-1]), debver(order[i])
		if err := exec.Command("dpkg", "--compare-versions", a, "lt", b).Run(); err != nil {
			t.Errorf("%s (%s) does not sort before %s (%s)", order[i-1], a, order[i], b)
		}
	}
}
