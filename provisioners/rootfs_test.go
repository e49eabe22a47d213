package provisioners

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestDebianImageCheck(t *testing.T) {
	c := &Containers{Images: []ContainerImage{
		{Debian: &DebianImage{Packages: []string{"redis-server"}, Cmd: []string{"redis-server"}}, Tags: []string{"ecs/redis:local"}},
		{Debian: &DebianImage{Packages: []string{"bad name"}}, Tags: []string{"x:1"}},
		{Debian: &DebianImage{Packages: []string{"memcached"}, Cmd: []string{"memcached"}}},
		{Debian: &DebianImage{Packages: []string{"a"}, Cmd: []string{"a"}}, Ref: "redis:7"},
	}}
	errs := c.Check(t.TempDir())
	var got []string
	for _, e := range errs {
		got = append(got, e.Field+": "+e.Msg)
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{"images[1].debian.packages[0]", "images[1].debian.cmd", "images[2].tags: required with debian", "images[3]: give one of path, ref and debian"} {
		if !strings.Contains(all, want) {
			t.Errorf("missing %q in\n%s", want, all)
		}
	}
	if strings.Contains(all, "images[0]") {
		t.Errorf("images[0] refused:\n%s", all)
	}
	if d := c.Images[0].Debian; d.Suite != "trixie" || d.Mirror != DefaultDebianMirror || c.Images[0].Name != "ecs_redis_local.tar" {
		t.Errorf("defaults: %+v %s", d, c.Images[0].Name)
	}
	a := c.Images[0].Debian.mmdebstrapArgs("/o.tar")
	if strings.Join(a[len(a)-3:], " ") != "trixie /o.tar "+DefaultDebianMirror || a[0] != "--variant=essential" {
		t.Errorf("mmdebstrap args: %q", a)
	}
	same := &DebianImage{Suite: "trixie", Mirror: DefaultDebianMirror, Packages: []string{"redis-server"}}
	if same.rootfsKey() != c.Images[0].Debian.rootfsKey() {
		t.Error("same packages, different rootfs key")
	}
}

// TestRootfsLayer: the layer has no "./" names and no device nodes.
func TestRootfsLayer(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "rootfs.tar")
	f, _ := os.Create(in)
	tw := tar.NewWriter(f)
	for _, h := range []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666},
		{Name: "./usr/bin/x", Typeflag: tar.TypeReg, Mode: 0o755, Size: 2},
		{Name: "./usr/bin/y", Typeflag: tar.TypeLink, Linkname: "./usr/bin/x"},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("hi"))
		}
	}
	tw.Close()
	f.Close()
	out := filepath.Join(dir, "layer.tar")
	if err := rootfsLayer(in, out, nil); err != nil {
		t.Fatal(err)
	}
	g, _ := os.Open(out)
	defer g.Close()
	tr := tar.NewReader(g)
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name+">"+h.Linkname)
	}
	if got := strings.Join(names, " "); got != "dev/> usr/bin/x> usr/bin/y>usr/bin/x" {
		t.Errorf("layer: %s", got)
	}
}

// TestDebianImageBuild builds a real image with mmdebstrap (root, the
// package mirror, a minute or two): ECS_IT_DEBIAN_IMAGE=1.
func TestDebianImageBuild(t *testing.T) {
	if os.Getenv("ECS_IT_DEBIAN_IMAGE") != "1" {
		t.Skip("ECS_IT_DEBIAN_IMAGE=1 builds a redis image from Debian packages (root, mirror)")
	}
	im := ContainerImage{Debian: &DebianImage{Packages: []string{"redis-server", "memcached"}, Cmd: []string{"redis-server"}, Ports: []int{6379},
		Keep: []string{"/usr/bin/redis-server", "/usr/bin/memcached"}}, Tags: []string{"ecs/redis:local"}}
	c := &Containers{Images: []ContainerImage{im}}
	if errs := c.Check(t.TempDir()); len(errs) > 0 {
		t.Fatal(errs)
	}
	im = c.Images[0]
	dir := t.TempDir()
	out, err := debianImage(context.Background(), &im, dir, func(s string) { t.Log(s) })
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.Cmd[0] != "redis-server" || imageID(out, "docker-archive") == "" {
		t.Errorf("config: %+v", cf.Config)
	}
	fi, _ := os.Stat(out)
	t.Logf("%s: %d MiB", out, fi.Size()>>20)
	// The slim root file system runs both programs (as the template's
	// images do: redis as root, memcached as nobody).
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %v %v", layers, err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	untar := exec.Command("tar", "-x", "-C", root)
	untar.Stdin = rc
	if msg, err := untar.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, msg)
	}
	for _, args := range [][]string{{"/usr/bin/redis-server", "--version"}, {"/usr/bin/memcached", "-V"}, {"/usr/bin/memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", "0", "-h"}} {
		msg, err := exec.Command("chroot", append([]string{root}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("chroot %s: %v\n%s", strings.Join(args, " "), err, msg)
		}
		t.Logf("%s: %s", strings.Join(args, " "), firstLine(string(msg)))
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// slimFixture writes a merged-/usr root file system tarball whose
// /usr/bin/prog is the host's /usr/bin/true with the host's libc and
// dynamic loader, beside files a slim layer drops.
func slimFixture(t *testing.T, dir string, withLibc bool) string {
	t.Helper()
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Skipf("host file for the fixture: %v", err)
		}
		return b
	}
	trueBin, libc, ld := read("/usr/bin/true"), read("/lib/x86_64-linux-gnu/libc.so.6"), read("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
	in := filepath.Join(dir, "rootfs.tar")
	f, err := os.Create(in)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	dirH := func(n string) *tar.Header { return &tar.Header{Name: "./" + n, Typeflag: tar.TypeDir, Mode: 0o755} }
	link := func(n, to string) *tar.Header {
		return &tar.Header{Name: "./" + n, Typeflag: tar.TypeSymlink, Linkname: to, Mode: 0o777}
	}
	type ent struct {
		h    *tar.Header
		data []byte
	}
	file := func(n string, mode int64, data []byte) ent {
		return ent{&tar.Header{Name: "./" + n, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}, data}
	}
	status := "Package: redis-server\nStatus: install ok installed\nVersion: 5:8.0.2-3\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
	ents := []ent{{h: dirH("")}, {h: link("bin", "usr/bin")}, {h: link("lib", "usr/lib")}, {h: link("lib64", "usr/lib64")},
		{h: dirH("dev/")}, {h: &tar.Header{Name: "./dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}},
		{h: dirH("etc/")}, file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")),
		{h: dirH("etc/redis/")}, file("etc/redis/redis.conf", 0o640, []byte("port 6379\n")),
		{h: link("etc/redis/dangling.conf", "/etc/nowhere.conf")},
		{h: dirH("usr/")}, {h: dirH("usr/bin/")}, file("usr/bin/prog", 0o755, trueBin),
		{h: &tar.Header{Name: "./usr/bin/prog2", Typeflag: tar.TypeLink, Linkname: "./usr/bin/prog"}},
		file("usr/bin/perl", 0o755, []byte("#!junk\n")),
		{h: dirH("usr/lib/")}, {h: dirH("usr/lib/x86_64-linux-gnu/")},
		file("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", 0o755, ld),
		{h: dirH("usr/lib64/")}, {h: link("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")},
		{h: dirH("usr/share/")}, {h: dirH("usr/share/perl/")}, file("usr/share/perl/x.pm", 0o644, []byte("1;\n")),
		{h: dirH("var/")}, {h: dirH("var/lib/")}, {h: dirH("var/lib/dpkg/")}, file("var/lib/dpkg/status", 0o644, []byte(status)),
	}
	if withLibc {
		ents = append(ents, file("usr/lib/x86_64-linux-gnu/libc.so.6", 0o755, libc))
	}
	for _, e := range ents {
		if err := tw.WriteHeader(e.h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return in
}

func TestRootfsLayerKeep(t *testing.T) {
	dir := t.TempDir()
	in := slimFixture(t, dir, true)
	out := filepath.Join(dir, "layer.tar")
	if err := rootfsLayer(in, out, []string{"/bin/prog2", "/etc/redis"}); err != nil {
		t.Fatal(err)
	}
	g, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	tr := tar.NewReader(g)
	var names []string
	var packages string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
		if h.Name == packagesFile {
			b, _ := io.ReadAll(tr)
			packages = string(b)
		}
	}
	want := "bin lib lib64 etc/ etc/passwd etc/redis/ etc/redis/redis.conf etc/redis/dangling.conf usr/ usr/bin/ usr/bin/prog usr/bin/prog2 " +
		"usr/lib/ usr/lib/x86_64-linux-gnu/ usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 usr/lib64/ usr/lib64/ld-linux-x86-64.so.2 " +
		"usr/share/ usr/lib/x86_64-linux-gnu/libc.so.6 usr/share/ecs-image/ " + packagesFile
	if got := strings.Join(names, " "); got != want {
		t.Errorf("slim layer:\n got %s\nwant %s", got, want)
	}
	if packages != "redis-server 5:8.0.2-3\n" {
		t.Errorf("%s: %q", packagesFile, packages)
	}
	// The slim root file system runs its program.
	if os.Geteuid() != 0 {
		t.Skip("running the slim root file system needs root (chroot)")
	}
	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	if msg, err := exec.Command("tar", "-xf", out, "-C", root).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, msg)
	}
	if msg, err := exec.Command("chroot", root, "/bin/prog2").CombinedOutput(); err != nil {
		t.Errorf("chroot %s /bin/prog2: %v\n%s", root, err, msg)
	}
}

func TestRootfsLayerKeepErrors(t *testing.T) {
	dir := t.TempDir()
	in := slimFixture(t, dir, false)
	for keep, want := range map[string]string{
		"/usr/bin/prog":  "/usr/bin/prog needs libc.so.6, which is in none of",
		"/usr/bin/redis": "keep: /usr/bin/redis: not in the root file system",
	} {
		out := filepath.Join(dir, "layer.tar")
		err := rootfsLayer(in, out, []string{keep})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("keep %s: %v, want %q", keep, err, want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("keep %s: %s written despite the error", keep, out)
		}
	}
}
