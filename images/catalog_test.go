package images

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuiltinCatalog(t *testing.T) {
	c, err := ParseCatalog("builtin", builtinCatalog)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ubuntu-xenial", "ubuntu-bionic", "ubuntu-focal", "ubuntu-jammy", "ubuntu-noble", "debian-12", "debian-13"} {
		e := c.Lookup(name)
		if e == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if e.Format != "qcow2" || e.Arch != "amd64" || e.Firmware == "" || e.User == "" || !strings.HasPrefix(e.Checksum, "file:https://") {
			t.Errorf("%s: %+v", name, e)
		}
	}
	if e := c.Lookup("jammy"); e == nil || e.Name != "ubuntu-jammy" {
		t.Errorf("alias jammy: %+v", e)
	}
	if c.Lookup("nonexistent") != nil {
		t.Error("lookup of unknown name succeeded")
	}
}

func TestCatalogErrors(t *testing.T) {
	good := "  - name: mine\n    url: https://example.org/x.qcow2\n    checksum: sha256:" + strings.Repeat("a", 64) + "\n    format: qcow2\n    user: debian\n"
	cases := []struct{ doc, want string }{
		{"bases:\n" + good, ""},
		{"bases:\n" + strings.Replace(good, "format: qcow2", "format: vmdk", 1), "f.yml:5:13: bases[0] (mine).format"},
		{"bases:\n" + strings.Replace(good, "sha256:", "md5:", 1), "bases[0] (mine).checksum"},
		{"bases:\n" + strings.Replace(good, "https://example.org", "ftp://example.org", 1), "f.yml:3:10: bases[0] (mine).url"},
		{"bases:\n" + good + "    colour: blue\n", "f.yml:7:5: bases[0].colour: unknown field"},
		{"bases:\n" + good + good, "bases[1] (mine).name: \"mine\" is already used"},
		{"bases:\n" + strings.Replace(good, "name: mine", "name: Mine!", 1), "f.yml:2:11: bases[0] (Mine!).name"},
		{"images: []\n", "f.yml:1:1: images: unknown key"},
		{"bases: {}\n", "bases: want a list"},
		{"bases:\n  - [1, 2]\n", "bases[0]: want a mapping"},
		{"bases: [\n", "f.yml"},
	}
	for _, tc := range cases {
		_, err := ParseCatalog("f.yml", []byte(tc.doc))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.doc, err)
			}
			continue
		}
		var ce *CatalogError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
	}
}

func TestUserCatalogMerge(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "catalog.yml")
	os.WriteFile(p, []byte(`bases:
  - name: debian-12
    url: http://mirror.example.org/debian-12.qcow2
    checksum: file:http://mirror.example.org/SHA512SUMS
    format: qcow2
    user: admin
  - name: site-base
    url: file:///srv/images/site.qcow2
    checksum: sha256:`+strings.Repeat("b", 64)+`
    format: qcow2
    firmware: uefi
    user: ecs
`), 0o644)
	t.Setenv("ECS_IMAGE_CATALOG", p)
	c, err := LoadCatalog()
	if err != nil {
		t.Fatal(err)
	}
	if e := c.Lookup("debian-12"); e == nil || e.User != "admin" || e.Origin != p {
		t.Errorf("override: %+v", e)
	}
	if e := c.Lookup("site-base"); e == nil || e.Firmware != "uefi" {
		t.Errorf("added: %+v", e)
	}
	if c.Lookup("ubuntu-noble") == nil {
		t.Error("built-in entries lost")
	}
	t.Setenv("ECS_IMAGE_CATALOG", filepath.Join(dir, "missing.yml"))
	if _, err := LoadCatalog(); err == nil {
		t.Error("missing explicit catalog accepted")
	}
}

func TestCacheDir(t *testing.T) {
	t.Setenv("ECS_IMAGE_CACHE", "/x/cache")
	if got := CacheDir(); got != "/x/cache" {
		t.Errorf("ECS_IMAGE_CACHE: %s", got)
	}
	t.Setenv("ECS_IMAGE_CACHE", "")
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	if got := CacheDir(); got != "/xdg/ecs-image" {
		t.Errorf("XDG_CACHE_HOME: %s", got)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := CacheDir(); got != "/home/u/.cache/ecs-image" {
		t.Errorf("HOME: %s", got)
	}
}

func TestResolve(t *testing.T) {
	img := testImage(t)
	s := newServer(t, map[string][]byte{"/ubuntu-test.qcow2": img, "/SUMS": []byte(sha256hex(img) + "  ubuntu-test.qcow2\n")})
	cat, err := ParseCatalog("t.yml", []byte("bases:\n  - name: testbase\n    url: "+s.URL+"/ubuntu-test.qcow2\n    checksum: file:"+s.URL+"/SUMS\n    format: qcow2\n    firmware: uefi\n    user: tester\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := testCache(t)
	b, err := Resolve(context.Background(), "testbase", ResolveOptions{Cache: c, Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	if b.Name != "testbase" || b.User != "tester" || b.Firmware != "uefi" || b.Format != "qcow2" || b.Digest != "sha256:"+sha256hex(img) || b.Info == nil {
		t.Errorf("catalog base: %+v", b)
	}
	b, err = Resolve(context.Background(), s.URL+"/ubuntu-test.qcow2", ResolveOptions{Cache: c, Checksum: "sha256:" + sha256hex(img)})
	if err != nil {
		t.Fatal(err)
	}
	if b.User != "ubuntu" || b.Firmware != "bios" || !strings.HasPrefix(b.Path, c.Dir) {
		t.Errorf("URL base: %+v", b)
	}
	local := writeTemp(t, img)
	b, err = Resolve(context.Background(), local, ResolveOptions{Cache: c, User: "me"})
	if err != nil {
		t.Fatal(err)
	}
	if b.Path != local || b.User != "me" || b.Digest != "sha256:"+sha256hex(img) {
		t.Errorf("local base: %+v", b)
	}
	_, err = Resolve(context.Background(), "no-such-base", ResolveOptions{Cache: c, Catalog: cat})
	var ie *InputError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "testbase") {
		t.Errorf("unknown name: %v", err)
	}
	_, err = Resolve(context.Background(), s.URL+"/ubuntu-test.qcow2", ResolveOptions{Cache: c})
	if !errors.As(err, &ie) {
		t.Errorf("URL without checksum: %v", err)
	}
}

func TestRecipe(t *testing.T) {
	r, err := NewRecipe(BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Suite != "bookworm" || r.Mirror != DefaultMirror || r.Size != 4<<30 || r.Distro != "debian" {
		t.Errorf("defaults: %+v", r)
	}
	has := func(r *Recipe, p string) bool {
		for _, q := range r.Packages {
			if q == p {
				return true
			}
		}
		return false
	}
	for _, p := range []string{"linux-image-amd64", "cloud-init", "openssh-server", "cloud-guest-utils", "sudo", "dbus", "locales", "grub-pc-bin"} {
		if !has(r, p) {
			t.Errorf("package %s missing", p)
		}
	}
	r2, _ := NewRecipe(BuildOptions{Mirror: "http://mirror.example.org/debian/"})
	if r2.Mirror != "http://mirror.example.org/debian" || r2.Key() == r.Key() {
		t.Errorf("mirror change must change the key: %+v", r2)
	}
	r3, _ := NewRecipe(BuildOptions{Suite: "bookworm", Size: 4 << 30, Mirror: DefaultMirror})
	if r3.Key() != r.Key() {
		t.Error("same inputs, different key")
	}
	for _, p := range []string{"ifupdown", "isc-dhcp-client"} {
		if !has(r, p) {
			t.Errorf("bookworm: package %s missing", p)
		}
	}
	tr, err := NewRecipe(BuildOptions{Suite: "trixie"})
	if err != nil {
		t.Fatal(err)
	}
	if !has(tr, "netplan.io") || !has(tr, "systemd-resolved") || has(tr, "ifupdown") || has(tr, "isc-dhcp-client") || tr.Key() == r.Key() {
		t.Errorf("trixie recipe (netplan and networkd, no ifupdown): %v", tr.Packages)
	}
	u, err := NewRecipe(BuildOptions{Suite: "jammy"})
	if err != nil {
		t.Fatal(err)
	}
	if u.Distro != "ubuntu" || !has(u, "linux-image-virtual") || has(u, "linux-image-amd64") || strings.Join(u.Components, ",") != "main,universe" || u.Mirror != DefaultUbuntuMirror {
		t.Errorf("ubuntu recipe: %+v", u)
	}
	// The cloud kernel: its own key, linux-image-cloud-amd64 instead of
	// linux-image-amd64; the generic kernel named explicitly is the default.
	c, err := NewRecipe(BuildOptions{Kernel: KernelCloud})
	if err != nil {
		t.Fatal(err)
	}
	if !has(c, "linux-image-cloud-amd64") || has(c, "linux-image-amd64") || c.Key() == r.Key() || c.Kernel != "cloud" {
		t.Errorf("cloud kernel recipe: %+v", c)
	}
	if g, _ := NewRecipe(BuildOptions{Kernel: KernelGeneric}); g.Key() != r.Key() || strings.Contains(g.Source(), "kernel") {
		t.Errorf("--kernel generic must be the default recipe: %s", g.Source())
	}
	for _, bad := range []BuildOptions{{Suite: "Bookworm;rm"}, {Mirror: "ftp://x"}, {Size: 1 << 30}, {Size: 4<<30 + 1}, {Packages: []string{"a b"}},
		{Kernel: "rt"}, {Suite: "jammy", Kernel: KernelCloud}} {
		if _, err := NewRecipe(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestBuildNeedsRoot(t *testing.T) {
	defer func(f func() int) { geteuid = f }(geteuid)
	geteuid = func() int { return 1000 }
	c := testCache(t)
	_, err := BuildBase(context.Background(), c, BuildOptions{})
	if err == nil || !strings.Contains(err.Error(), "needs root") {
		t.Fatalf("want a needs-root error, got %v", err)
	}
	assertEmptyCache(t, c)
}

func TestBuildCacheHit(t *testing.T) {
	defer func(f func() int) { geteuid = f }(geteuid)
	geteuid = func() int { return 1000 } // a cache hit needs no root
	c := testCache(t)
	r, err := NewRecipe(BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tool, err := bootstrapTool(""); err == nil && strings.HasSuffix(tool, "/debootstrap") {
		r.Bootstrap = "debootstrap"
	}
	if err := os.MkdirAll(filepath.Join(c.Dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(c.Dir, "tmp", "built.qcow2")
	if err := os.WriteFile(img, testImage(t), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := c.Commit(r.Key(), r.Source(), "qcow2", img)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildBase(context.Background(), c, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Path != c.Path(e) || b.User != "debian" || b.Firmware != "bios" || b.Digest != e.Digest {
		t.Errorf("base %+v", b)
	}
	b, err = Resolve(context.Background(), "build", ResolveOptions{Cache: c})
	if err != nil || b.Path != c.Path(e) || b.Info == nil {
		t.Errorf("Resolve(build): %+v %v", b, err)
	}
	// Another mirror is another recipe: a miss (which needs root here).
	if _, err := BuildBase(context.Background(), c, BuildOptions{Mirror: "http://mirror.example.org/debian"}); err == nil || !strings.Contains(err.Error(), "needs root") {
		t.Errorf("other mirror: %v", err)
	}
}
