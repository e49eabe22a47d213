package formats

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/vmdkstream/grainstore"
)

func requireQemuImg(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img not installed (apt-get install qemu-utils)")
	}
}

// testImage writes a qcow2 whose virtual size is not MiB-aligned and whose
// content has random data at several offsets.
func testImage(t testing.TB, dir string, size int64, dataMiB int) string {
	t.Helper()
	requireQemuImg(t)
	raw := filepath.Join(dir, "src.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, mib)
	for i := 0; i < dataMiB; i++ {
		if _, err := rand.Read(buf); err != nil {
			t.Fatal(err)
		}
		off := int64(i) * (size / int64(dataMiB+1))
		if _, err := f.WriteAt(buf, off/512*512); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt([]byte("last sector"), size-512); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	q := filepath.Join(dir, "in.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, q)
	os.Remove(raw)
	return q
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type qinfo struct {
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	ClusterSize    int64  `json:"cluster-size"`
	FormatSpecific struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	} `json:"format-specific"`
}

func info(t testing.TB, path, format string) qinfo {
	t.Helper()
	var qi qinfo
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", "-f", format, path)), &qi); err != nil {
		t.Fatal(err)
	}
	if qi.Format != format {
		t.Fatalf("%s: qemu-img info says format %q, want %q", path, qi.Format, format)
	}
	return qi
}

// same asserts that img (format) has the input's content; a larger img must
// be zero past the input's end (qemu-img compare's default).
func same(t testing.TB, in, img, format string) {
	t.Helper()
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", format, in, img)
}

func check(t testing.TB, img, format string) {
	t.Helper()
	run(t, "qemu-img", "check", "-f", format, img)
}

func TestTable(t *testing.T) {
	want := []string{"ami", "gce", "ova", "qcow2", "raw", "vagrant-libvirt", "vagrant-virtualbox", "vhd", "vhdx", "vmdk"}
	if got := Names(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	exts := map[string]string{}
	for _, n := range Names() {
		f, err := Lookup(n)
		if err != nil || f.Name != n || f.write == nil || f.Ext == "" {
			t.Fatalf("Lookup(%q) = %+v, %v", n, f, err)
		}
		if prev, dup := exts[f.Ext]; dup {
			t.Errorf("formats %s and %s share extension %s", prev, n, f.Ext)
		}
		exts[f.Ext] = n
	}
	if _, err := Lookup("vdi"); !errors.Is(err, ErrUnknownFormat) || !IsBadInput(err) || !strings.Contains(err.Error(), "vmdk") {
		t.Fatalf("Lookup(vdi) error = %v", err)
	}
	if got := strings.Join(NonProduction([]string{"vagrant-libvirt", "ova", "vagrant-virtualbox", "nope"}), ","); got != "vagrant-libvirt,vagrant-virtualbox" {
		t.Fatalf("NonProduction = %s", got)
	}
	if err := CheckProduction("live", true, []string{"vagrant-virtualbox"}); err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), `"live"`) {
		t.Fatalf("CheckProduction(live, box) = %v", err)
	}
	if err := CheckProduction("dev", false, []string{"vagrant-virtualbox"}); err != nil {
		t.Fatalf("CheckProduction(dev) = %v", err)
	}
	if err := CheckVariant("production", []string{"qcow2", "vagrant-libvirt"}); err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), "vagrant-libvirt") {
		t.Fatalf("CheckVariant(production, box) = %v", err)
	}
	for _, v := range []string{"dev", "test", ""} {
		if err := CheckVariant(v, []string{"vagrant-libvirt"}); err != nil {
			t.Fatalf("CheckVariant(%q) = %v", v, err)
		}
	}
}

func TestInspectRefuses(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	ctx := context.Background()
	base := filepath.Join(dir, "base.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
	over := filepath.Join(dir, "over.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, over)
	text := filepath.Join(dir, "notes.txt")
	os.WriteFile(text, []byte("hello\n"), 0o644)
	for path, want := range map[string]string{
		over:                                "backing file",
		text:                                "not a disk image",
		filepath.Join(dir, "missing.qcow2"): "no such file",
		dir:                                 "not a regular file",
	} {
		_, err := Inspect(ctx, path)
		if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("Inspect(%s) = %v, want bad input naming the file and %q", path, err, want)
		}
	}
	img, err := Inspect(ctx, base)
	if err != nil || img.Format != "qcow2" || img.VirtualSize != 16*mib {
		t.Fatalf("Inspect(base) = %+v, %v", img, err)
	}
}

// TestEmitAll writes every format in one parallel run and checks each.
func TestEmitAll(t *testing.T) {
	dir := t.TempDir()
	const size = 100*mib + 1536 // not MiB-aligned: vhd/gce/ami must round up
	in := testImage(t, dir, size, 6)
	img, err := Inspect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	opts := Options{Product: "ECS <test> & co", Version: "1.2.3", CPUs: 3, MemoryMiB: 3072}
	arts, err := Emit(context.Background(), img, out, "ecs-1.2.3", Names(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(arts) != len(Names()) {
		t.Fatalf("got %d artifacts", len(arts))
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != len(Names()) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("output dir holds %v, want exactly the %d artifacts (no temporaries)", names, len(Names()))
	}
	path := func(f string) string {
		ff, _ := Lookup(f)
		return filepath.Join(out, "ecs-1.2.3"+ff.Ext)
	}

	t.Run("qcow2", func(t *testing.T) {
		p := path("qcow2")
		qi := info(t, p, "qcow2")
		var d struct {
			Compat string `json:"compat"`
		}
		json.Unmarshal(qi.FormatSpecific.Data, &d)
		if qi.VirtualSize != size || d.Compat != "1.1" {
			t.Fatalf("qcow2: size %d compat %q", qi.VirtualSize, d.Compat)
		}
		check(t, p, "qcow2")
		same(t, in, p, "qcow2")
	})
	t.Run("raw", func(t *testing.T) {
		p := path("raw")
		if qi := info(t, p, "raw"); qi.VirtualSize != size {
			t.Fatalf("raw size %d", qi.VirtualSize)
		}
		same(t, in, p, "raw")
	})
	t.Run("vmdk", func(t *testing.T) {
		p := path("vmdk")
		checkStreamVMDK(t, p, size, true)
		same(t, in, p, "vmdk")
	})
	t.Run("vhdx", func(t *testing.T) {
		p := path("vhdx")
		if qi := info(t, p, "vhdx"); qi.VirtualSize != size || qi.ClusterSize != 1<<20 {
			t.Fatalf("vhdx size %d, block size %d (want 1 MiB)", qi.VirtualSize, qi.ClusterSize)
		}
		check(t, p, "vhdx")
		same(t, in, p, "vhdx")
	})
	t.Run("vhd", func(t *testing.T) {
		p := path("vhd")
		cur, typ := vhdFooter(t, p)
		if cur%mib != 0 || cur != roundUp(size, mib) || typ != 2 {
			t.Fatalf("vhd footer: current size %d (want %d, MiB-aligned), disk type %d (want 2 fixed)", cur, roundUp(size, mib), typ)
		}
		st, _ := os.Stat(p)
		if st.Size() != cur+512 {
			t.Fatalf("fixed vhd file is %d bytes, want data %d + 512-byte footer", st.Size(), cur)
		}
		if qi := info(t, p, "vpc"); qi.VirtualSize != cur {
			t.Fatalf("qemu-img says vhd virtual size %d, footer %d", qi.VirtualSize, cur)
		}
		same(t, in, p, "vpc")
	})
	t.Run("ami", func(t *testing.T) {
		p := path("ami")
		checkStreamVMDK(t, p, roundUp(size, gib), false)
		same(t, in, p, "vmdk")
	})
	t.Run("gce", func(t *testing.T) {
		files := readTarGz(t, path("gce"), func(h *tar.Header) {
			if h.Format&tar.FormatGNU == 0 || h.Typeflag != tar.TypeGNUSparse {
				t.Errorf("gce: %s has tar format %v type %c, want an old-GNU sparse member", h.Name, h.Format, h.Typeflag)
			}
		})
		if len(files) != 1 || files[0].name != "disk.raw" {
			t.Fatalf("gce tar holds %v, want only disk.raw", names(files))
		}
		if files[0].size%gib != 0 {
			t.Fatalf("disk.raw is %d bytes, not whole GiB", files[0].size)
		}
		same(t, in, files[0].path, "raw")
		// GNU tar (what Google's guide uses) reads it the same.
		x := t.TempDir()
		run(t, "tar", "-xzf", path("gce"), "-C", x)
		same(t, in, filepath.Join(x, "disk.raw"), "raw")
		if st, _ := os.Stat(filepath.Join(x, "disk.raw")); st.Size() != files[0].size {
			t.Fatalf("GNU tar extracted %d bytes, archive/tar %d", st.Size(), files[0].size)
		}
		// Only the data regions are stored: the header's size field counts
		// the ~6 MiB of data, not the 1 GiB disk.
		f, _ := os.Open(path("gce"))
		defer f.Close()
		z, _ := gzip.NewReader(f)
		hdr := make([]byte, 512)
		io.ReadFull(z, hdr)
		var storedSize int64
		fmt.Sscanf(strings.TrimRight(string(hdr[124:136]), "\x00 "), "%o", &storedSize)
		if storedSize < 6*mib || storedSize > 8*mib {
			t.Fatalf("sparse member stores %d bytes, want the ~6 MiB of data", storedSize)
		}
	})
	t.Run("ova", func(t *testing.T) {
		files := readTar(t, path("ova"), false, func(h *tar.Header) {
			if h.Format != tar.FormatUSTAR {
				t.Errorf("ova: %s has tar format %v, want ustar", h.Name, h.Format)
			}
		})
		if got := strings.Join(names(files), ","); got != "ecs-1.2.3.ovf,ecs-1.2.3.mf,ecs-1.2.3-disk1.vmdk" {
			t.Fatalf("ova members %s: the descriptor must come first, then the manifest", got)
		}
		checkManifest(t, files)
		checkOVF(t, files[0].path, files[2], size, "vmx-13", "ECS &lt;test&gt; &amp; co", 3, 3072)
		checkStreamVMDK(t, files[2].path, size, true)
		same(t, in, files[2].path, "vmdk")
	})
	t.Run("vagrant-libvirt", func(t *testing.T) {
		p := path("vagrant-libvirt")
		run(t, "gzip", "-t", p)
		files := readTarGz(t, p, nil)
		if got := strings.Join(names(files), ","); got != "metadata.json,Vagrantfile,box.img" {
			t.Fatalf("box members %s", got)
		}
		var meta map[string]any
		if err := json.Unmarshal(mustRead(t, files[0].path), &meta); err != nil {
			t.Fatal(err)
		}
		qi := info(t, files[2].path, "qcow2")
		if meta["provider"] != "libvirt" || meta["format"] != "qcow2" || meta["virtual_size"] != float64(roundUp(qi.VirtualSize, gib)/gib) {
			t.Fatalf("metadata.json %v vs qemu-img info virtual size %d", meta, qi.VirtualSize)
		}
		vf := string(mustRead(t, files[1].path))
		if !strings.Contains(vf, ":libvirt") || !strings.Contains(vf, "p.memory = 3072") {
			t.Fatalf("Vagrantfile:\n%s", vf)
		}
		check(t, files[2].path, "qcow2")
		same(t, in, files[2].path, "qcow2")
	})
	t.Run("vagrant-virtualbox", func(t *testing.T) {
		p := path("vagrant-virtualbox")
		run(t, "gzip", "-t", p)
		files := readTarGz(t, p, nil)
		if got := strings.Join(names(files), ","); got != "box.ovf,box.mf,box-disk001.vmdk,metadata.json,Vagrantfile" {
			t.Fatalf("box members %s", got)
		}
		checkManifest(t, files[:3])
		checkOVF(t, files[0].path, files[2], size, "virtualbox-2.2", "ECS &lt;test&gt; &amp; co", 3, 3072)
		if m := string(mustRead(t, files[3].path)); !strings.Contains(m, `"provider": "virtualbox"`) {
			t.Fatalf("metadata.json: %s", m)
		}
		vf := string(mustRead(t, files[4].path))
		if !strings.Contains(vf, `config.vm.base_mac = "080027`) {
			t.Fatalf("Vagrantfile lacks base_mac:\n%s", vf)
		}
		same(t, in, files[2].path, "vmdk")
	})
}

func checkStreamVMDK(t *testing.T, p string, size int64, hw bool) {
	t.Helper()
	qi := info(t, p, "vmdk")
	var d struct {
		CreateType string `json:"create-type"`
	}
	json.Unmarshal(qi.FormatSpecific.Data, &d)
	if qi.VirtualSize != size || d.CreateType != "streamOptimized" {
		t.Fatalf("%s: virtual size %d (want %d), create type %q", p, qi.VirtualSize, size, d.CreateType)
	}
	check(t, p, "vmdk")
	head := make([]byte, 4096)
	f, _ := os.Open(p)
	io.ReadFull(f, head)
	f.Close()
	if !bytes.Contains(head, []byte(`ddb.adapterType = "lsilogic"`)) {
		t.Errorf("%s: descriptor lacks lsilogic adapter", p)
	}
	if hw && !bytes.Contains(head, []byte(`ddb.virtualHWVersion = "13"`)) {
		t.Errorf("%s: descriptor lacks hardware version 13", p)
	}
}

// vhdFooter reads the VHD footer (the last 512 bytes): "conectix" cookie,
// current size at offset 48, disk type at offset 60.
func vhdFooter(t *testing.T, p string) (current int64, diskType uint32) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	foot := make([]byte, 512)
	if _, err := f.ReadAt(foot, st.Size()-512); err != nil {
		t.Fatal(err)
	}
	if string(foot[:8]) != "conectix" {
		t.Fatalf("vhd footer cookie %q", foot[:8])
	}
	return int64(binary.BigEndian.Uint64(foot[48:56])), binary.BigEndian.Uint32(foot[60:64])
}

type member struct {
	name string
	size int64
	path string // extracted copy
}

func names(ms []member) []string {
	var s []string
	for _, m := range ms {
		s = append(s, m.name)
	}
	return s
}

func readTarGz(t *testing.T, p string, hdr func(*tar.Header)) []member {
	return readTar(t, p, true, hdr)
}

// readTar extracts an archive with archive/tar into a temp dir.
func readTar(t *testing.T, p string, gz bool, hdr func(*tar.Header)) []member {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = bufio.NewReader(f)
	if gz {
		z, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = z
	}
	dir := t.TempDir()
	tr := tar.NewReader(r)
	var ms []member
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if hdr != nil {
			hdr(h)
		}
		if (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeGNUSparse) || strings.Contains(h.Name, "/") {
			t.Fatalf("%s: unexpected member %q type %c", p, h.Name, h.Typeflag)
		}
		out := filepath.Join(dir, h.Name)
		w, _ := os.Create(out)
		if _, err := io.Copy(w, tr); err != nil {
			t.Fatal(err)
		}
		w.Close()
		ms = append(ms, member{h.Name, h.Size, out})
	}
	return ms
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkManifest verifies the .mf (second member) lists SHA256 digests of the
// descriptor and the disk that match their content.
func checkManifest(t *testing.T, files []member) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(string(mustRead(t, files[1].path))), "\n")
	if len(lines) != 2 {
		t.Fatalf("manifest has %d lines", len(lines))
	}
	for i, m := range []member{files[0], files[2]} {
		sum := sha256.Sum256(mustRead(t, m.path))
		want := fmt.Sprintf("SHA256(%s)= %s", m.name, hex.EncodeToString(sum[:]))
		if lines[i] != want {
			t.Errorf("manifest line %q, want %q", lines[i], want)
		}
	}
}

func checkOVF(t *testing.T, ovfPath string, disk member, capacity int64, sysType, product string, cpus, mem int) {
	t.Helper()
	raw := mustRead(t, ovfPath)
	var env struct {
		XMLName    xml.Name `xml:"http://schemas.dmtf.org/ovf/envelope/1 Envelope"`
		References struct {
			File []struct {
				Href string `xml:"href,attr"`
				Size int64  `xml:"size,attr"`
			} `xml:"File"`
		} `xml:"References"`
		Disk struct {
			Capacity int64  `xml:"capacity,attr"`
			Format   string `xml:"format,attr"`
		} `xml:"DiskSection>Disk"`
		Product string `xml:"VirtualSystem>ProductSection>Product"`
		Version string `xml:"VirtualSystem>ProductSection>Version"`
		System  string `xml:"VirtualSystem>VirtualHardwareSection>System>VirtualSystemType"`
		Items   []struct {
			ResourceType    int    `xml:"ResourceType"`
			VirtualQuantity int    `xml:"VirtualQuantity"`
			Connection      string `xml:"Connection"`
			HostResource    string `xml:"HostResource"`
		} `xml:"VirtualSystem>VirtualHardwareSection>Item"`
	}
	if err := xml.Unmarshal(raw, &env); err != nil {
		t.Fatalf("descriptor is not valid XML: %v", err)
	}
	if len(env.References.File) != 1 || env.References.File[0].Href != disk.name || env.References.File[0].Size != disk.size {
		t.Fatalf("References %+v, want %s of %d bytes", env.References, disk.name, disk.size)
	}
	if env.Disk.Capacity != capacity || !strings.HasSuffix(env.Disk.Format, "#streamOptimized") {
		t.Fatalf("Disk %+v, want capacity %d", env.Disk, capacity)
	}
	if env.System != sysType || env.Version != "1.2.3" || !bytes.Contains(raw, []byte("<Product>"+product+"</Product>")) {
		t.Fatalf("system %q version %q product %q", env.System, env.Version, env.Product)
	}
	got := map[int]int{}
	for _, it := range env.Items {
		got[it.ResourceType] = it.VirtualQuantity
		if it.ResourceType == 10 && it.Connection != "VM Network" {
			t.Errorf("NIC connection %q", it.Connection)
		}
		if it.ResourceType == 17 && it.HostResource != "ovf:/disk/vmdisk1" {
			t.Errorf("disk host resource %q", it.HostResource)
		}
	}
	_, nic := got[10]
	_, dsk := got[17]
	if got[3] != cpus || got[4] != mem || !nic || !dsk {
		t.Fatalf("hardware items %v", got)
	}
}

// TestEmitCancel cancels a run mid-conversion: qemu-img is killed and no
// output or temporary file is left.
func TestEmitCancel(t *testing.T) {
	dir := t.TempDir()
	in := testImage(t, dir, 512*mib, 200)
	img, err := Inspect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(700*time.Millisecond, cancel)
	start := time.Now()
	_, err = Emit(ctx, img, out, "x", []string{"qcow2", "ova", "gce"}, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Emit after cancel = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("cancel took %s", d)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Fatalf("cancelled run left %v", entries)
	}
	if err := exec.Command("pgrep", "-f", "qemu-img convert -p -f qcow2 .*"+regexpQuote(in)).Run(); err == nil {
		t.Fatal("qemu-img still running after cancel")
	}
}

func regexpQuote(s string) string {
	return strings.NewReplacer(".", `\.`, "+", `\+`).Replace(s)
}

func TestWriteSingle(t *testing.T) {
	dir := t.TempDir()
	in := testImage(t, dir, 8*mib, 1)
	img, err := Inspect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "single.vhd")
	if err := Write(context.Background(), img, "vhd", out, Options{}); err != nil {
		t.Fatal(err)
	}
	same(t, in, out, "vpc")
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("dir holds %d entries, want input and output only", len(entries))
	}
}

func TestVagrantProvisionScript(t *testing.T) {
	out, err := exec.Command("sh", "-n", "-c", VagrantProvisionScript).CombinedOutput()
	if err != nil {
		t.Fatalf("script does not parse: %v %s", err, out)
	}
	for _, want := range []string{"useradd", "NOPASSWD: ALL", VagrantInsecurePublicKey, "chmod 0600"} {
		if !strings.Contains(VagrantProvisionScript, want) {
			t.Errorf("script lacks %q", want)
		}
	}
	// The key is Vagrant's own, when Vagrant is installed to compare.
	if pub, err := filepath.Glob("/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"); err == nil && len(pub) > 0 {
		if b := mustRead(t, pub[0]); strings.TrimSpace(string(b)) != VagrantInsecurePublicKey {
			t.Fatalf("insecure key differs from %s", pub[0])
		}
	}
}

// TestWriteRemovesStaleWorkDirs: the work directory of a convert that was
// killed (kill -9: no clean-up ran) is removed by the next run in the same
// output directory; a live run's is not (issue 13).
func TestWriteRemovesStaleWorkDirs(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	in := testImage(t, dir, 8*mib, 1)
	img, err := Inspect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	reaped := exec.Command("true")
	reaped.Run()
	mk := func(name string, pids ...int) string {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o755)
		os.WriteFile(filepath.Join(d, "part.raw"), make([]byte, 1<<20), 0o644)
		if pids != nil {
			var s string
			for _, p := range pids {
				s += fmt.Sprintln(p)
			}
			os.WriteFile(filepath.Join(d, atomicfile.OwnerFile), []byte(s), 0o600)
		}
		return d
	}
	stale := mk(".ecs-image-convert-killed", reaped.Process.Pid)
	staleEmit := mk(".ecs-image-formats-killed", reaped.Process.Pid)
	live := mk(".ecs-image-convert-live", os.Getpid())
	unowned := mk(".ecs-image-convert-unowned")
	if err := Write(context.Background(), img, "raw", filepath.Join(dir, "out.raw"), Options{}); err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string]bool{stale: false, staleEmit: false, live: true, unowned: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", filepath.Base(d), err == nil, want)
		}
	}
}

// TestVMDKWriters: the stream VMDK is package vmdkstream's (grain
// directory in the footer) with ECS_IMAGE_VMDK_WRITER=ecs-image and
// qemu-img's (tables after the header) with qemu-img; unset is
// defaultVMDKWriter; all hold the input. Any other value is bad input.
func TestVMDKWriters(t *testing.T) {
	dir := t.TempDir()
	const size = 40*mib + 512
	in := testImage(t, dir, size, 3)
	img, err := Inspect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"", "ecs-image", "qemu-img"} {
		t.Setenv(VMDKWriterEnv, w)
		out := filepath.Join(dir, "out-"+w+".vmdk")
		if err := Write(context.Background(), img, "vmdk", out, Options{}); err != nil {
			t.Fatalf("%s=%q: %v", VMDKWriterEnv, w, err)
		}
		checkStreamVMDK(t, out, size, true)
		same(t, in, out, "vmdk")
		hdr := make([]byte, 512)
		f, _ := os.Open(out)
		f.ReadAt(hdr, 0)
		f.Close()
		gdAtEnd := binary.LittleEndian.Uint64(hdr[56:]) == ^uint64(0)
		if gdAtEnd != (w == "ecs-image" || w == "" && defaultVMDKWriter == "ecs-image") {
			t.Errorf("%s=%q: grain directory in the footer: %v", VMDKWriterEnv, w, gdAtEnd)
		}
	}
	t.Setenv(VMDKWriterEnv, "vmware")
	err = Write(context.Background(), img, "ova", filepath.Join(dir, "x.ova"), Options{})
	if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), VMDKWriterEnv) {
		t.Fatalf("%s=vmware: %v, want bad input naming the variable", VMDKWriterEnv, err)
	}
}

// TestVMDKLevels: vmdkstream deflates at ECS_IMAGE_VMDK_LEVEL (unset:
// defaultVMDKLevel), which the zlib header of every grain records
// (FLEVEL: 0 for level 1, 2 for 6, 3 for 7–9); each output holds the
// input. A value outside 1–9 is bad input naming the variable.
func TestVMDKLevels(t *testing.T) {
	dir := t.TempDir()
	const size = 8 * mib
	in := testImage(t, dir, size, 1)
	img, err := Inspect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(VMDKWriterEnv, "ecs-image")
	for _, c := range []struct {
		env    string
		flevel byte
	}{{"", 0}, {"1", 0}, {"6", 2}, {"9", 3}} {
		t.Setenv(VMDKLevelEnv, c.env)
		out := filepath.Join(dir, "out-"+c.env+".vmdk")
		if err := Write(context.Background(), img, "vmdk", out, Options{}); err != nil {
			t.Fatalf("%s=%q: %v", VMDKLevelEnv, c.env, err)
		}
		checkStreamVMDK(t, out, size, true)
		same(t, in, out, "vmdk")
		// The first grain: marker (LBA 8 bytes, size 4) at sector 128, then
		// the zlib header CMF FLG.
		f, _ := os.Open(out)
		hdr := make([]byte, 14)
		f.ReadAt(hdr, 128*512)
		f.Close()
		if hdr[12] != 0x78 || hdr[13]>>6 != c.flevel {
			t.Errorf("%s=%q: zlib header % x, want FLEVEL %d", VMDKLevelEnv, c.env, hdr[12:], c.flevel)
		}
	}
	if defaultVMDKLevel != 1 {
		t.Errorf("defaultVMDKLevel %d: the docs (docs/formats.md, docs/builder.md) say 1", defaultVMDKLevel)
	}
	for _, bad := range []string{"0", "10", "fast", " 1"} {
		t.Setenv(VMDKLevelEnv, bad)
		err := Write(context.Background(), img, "vmdk", filepath.Join(dir, "bad.vmdk"), Options{})
		if err == nil || !IsBadInput(err) || !strings.Contains(err.Error(), VMDKLevelEnv) {
			t.Errorf("%s=%q: %v, want bad input naming the variable", VMDKLevelEnv, bad, err)
		}
	}
}

// TestVMDKGrainStore: with Options.GrainStores the stream VMDK is kept in
// the store (a hard link of the output) and the next build of the same
// base name copies its grains from it, NoGrainReuse none; every output
// holds the input.
func TestVMDKGrainStore(t *testing.T) {
	dir := t.TempDir()
	const size = 24*mib + 512
	in := testImage(t, dir, size, 4)
	img, err := Inspect(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(VMDKWriterEnv, "ecs-image")
	t.Setenv(VMDKLevelEnv, "")
	stores := filepath.Join(dir, "stores")
	hook := logtest.NewGlobal()
	level := logrus.GetLevel()
	logrus.SetLevel(logrus.DebugLevel)
	t.Cleanup(func() { logrus.SetLevel(level) })
	for i, c := range []struct {
		noReuse bool
		want    string
	}{
		{false, " 0 copied from"},
		{false, " copied from"},
		{true, " 0 copied from"},
	} {
		hook.Reset()
		out := filepath.Join(dir, fmt.Sprint("out", i))
		os.Mkdir(out, 0o755)
		arts, err := Emit(context.Background(), img, out, "app-dev", []string{"vmdk", "ova"}, Options{GrainStores: stores, NoGrainReuse: c.noReuse})
		if err != nil {
			t.Fatal(err)
		}
		vmdk := arts[0].Path
		checkStreamVMDK(t, vmdk, size, true)
		same(t, in, vmdk, "vmdk")
		var line string
		for _, e := range hook.AllEntries() {
			if strings.Contains(e.Message, "grains, ") {
				line = e.Message
			}
		}
		if !strings.Contains(line, c.want) || (c.want == " copied from" && strings.Contains(line, " 0 copied")) {
			t.Errorf("build %d: log %q, want %q", i, line, c.want)
		}
		ls, err := grainstore.List(stores)
		if err != nil || len(ls) != 1 || ls[0].Err != "" || ls[0].Grains == 0 {
			t.Fatalf("build %d: stores %+v, %v", i, ls, err)
		}
		a, _ := os.Stat(vmdk)
		b, _ := os.Stat(ls[0].VMDK)
		if !os.SameFile(a, b) {
			t.Errorf("build %d: the store does not hold the output VMDK", i)
		}
	}
}
