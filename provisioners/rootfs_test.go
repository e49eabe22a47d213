package provisioners

import (
	"archive/tar"
	"context"
	"os"
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
	if err := rootfsLayer(in, out); err != nil {
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
	im := ContainerImage{Debian: &DebianImage{Packages: []string{"redis-server"}, Cmd: []string{"redis-server"}, Ports: []int{6379}}, Tags: []string{"ecs/redis:local"}}
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
}
