package cidata

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestProbe(t *testing.T) {
	for _, f := range Formats {
		p := writeTemp(t, string(f)+".img", build(t, Options{Format: f, Hostname: "x.example.org"}))
		fstype, label, err := Probe(p)
		if err != nil {
			t.Fatal(err)
		}
		wantFS := FSISO9660
		if f == VFAT {
			wantFS = FSVFAT
		}
		if fstype != wantFS || !strings.EqualFold(label, f.Label()) {
			t.Errorf("%s: %s %q", f, fstype, label)
		}
	}
	// A disk with a partition table (an MBR carries the boot sector's
	// 0x55AA too), zeros and a short file are no seeds.
	mbr := make([]byte, 1<<20)
	mbr[510], mbr[511] = 0x55, 0xaa
	mbr[446+4] = 0x83
	for name, data := range map[string][]byte{"mbr": mbr, "zeros": make([]byte, 64<<10), "short": []byte("x")} {
		if _, _, err := Probe(writeTemp(t, name, data)); !errors.Is(err, ErrNotSeed) {
			t.Errorf("%s: %v, want ErrNotSeed", name, err)
		}
		if _, err := Open(writeTemp(t, name, data)); !errors.Is(err, ErrNotSeed) {
			t.Errorf("Open %s: %v, want ErrNotSeed", name, err)
		}
	}
	if _, _, err := Probe(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}

func TestImageReadFile(t *testing.T) {
	ud := []byte("#cloud-config\nhostname: r\n")
	for _, f := range Formats {
		img, err := Open(writeTemp(t, string(f)+".img", build(t, Options{Format: f, UserData: ud, Raw: true, Hostname: "r"})))
		if err != nil {
			t.Fatal(err)
		}
		name := "user-data"
		if f == ConfigDrive {
			name = "openstack/latest/user_data"
		}
		if got, err := img.ReadFile(name); err != nil || !bytes.Equal(got, ud) {
			t.Errorf("%s: ReadFile(%s) = %q, %v", f, name, got, err)
		}
		if got, err := img.ReadFile("/" + strings.ToUpper(name)); err != nil || !bytes.Equal(got, ud) {
			t.Errorf("%s: upper case: %q, %v", f, got, err)
		}
		if _, err := img.ReadFile("vendor-data/x"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: missing file: %v", f, err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Seeds written without Rock Ridge (plain ISO9660 names, "USER_DATA.;1")
// and FAT names in upper case read under their cloud-init names.
func TestImageReadFileForeignNames(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "openstack/latest"), 0o700)
	os.WriteFile(filepath.Join(src, "user-data"), []byte("ud\n"), 0o600)
	os.WriteFile(filepath.Join(src, "openstack/latest/user_data"), []byte("os\n"), 0o600)
	iso := filepath.Join(dir, "plain.iso")
	if _, ok := runTool(t, "xorriso", "-as", "mkisofs", "-l", "-V", "cidata", "-o", iso, src); ok {
		img, err := Open(iso)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		for name, want := range map[string]string{"user-data": "ud\n", "openstack/latest/user_data": "os\n"} {
			if got, err := img.ReadFile(name); err != nil || string(got) != want {
				t.Errorf("plain ISO9660 %s: %q, %v (files %v)", name, got, err, img.Info.Files)
			}
		}
	}
	fat := filepath.Join(dir, "fat.img")
	if _, ok := runTool(t, "mkfs.vfat", "-C", "-n", "CIDATA", fat, "1024"); ok {
		if _, ok := runTool(t, "mcopy", "-i", fat, filepath.Join(src, "user-data"), "::USER-DATA"); ok {
			img, err := Open(fat)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if got, err := img.ReadFile("user-data"); err != nil || string(got) != "ud\n" {
				t.Errorf("FAT USER-DATA: %q, %v (files %v)", got, err, img.Info.Files)
			}
		}
	}
}

// A file whose recorded extent runs past the end of the image is an
// error, not short data.
func TestImageReadFileTruncated(t *testing.T) {
	data := build(t, Options{UserData: bytes.Repeat([]byte("#"), 8<<10), Raw: true, Hostname: "t"})
	p := writeTemp(t, "seed.iso", data)
	info, err := Inspect(p)
	if err != nil {
		t.Fatal(err)
	}
	var ud FileInfo
	for _, fi := range info.Files {
		if fi.Path == "user-data" {
			ud = fi
		}
	}
	if err := os.Truncate(p, findData(t, data, p, ud)); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if got, err := img.ReadFile("user-data"); err == nil || !strings.Contains(err.Error(), "could be read") {
		t.Errorf("ReadFile of a cut file = %d bytes, %v; want an error", len(got), err)
	}
}
