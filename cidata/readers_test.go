package cidata

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/testenv"
)

// runTool runs an independent reader (genisoimage's isoinfo, xorriso,
// mtools, dosfstools, blkid). A missing tool fails the test under CI
// (make deps installs them all) and is only logged elsewhere.
func runTool(t *testing.T, name string, args ...string) (string, bool) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if testenv.CI() {
			t.Errorf("%s not installed (make deps)", name)
		} else {
			t.Logf("%s not installed; skipping its check", name)
		}
		return "", false
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		return string(out), false
	}
	return string(out), true
}

func wantLines(t *testing.T, what, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(`(?m)` + p).MatchString(out) {
			t.Errorf("%s: no line matching %q in:\n%s", what, p, out)
		}
	}
}

func TestNoCloudISOReaders(t *testing.T) {
	envData := testEnv(t)
	iso := writeTemp(t, "seed.iso", build(t, Options{NetworkConfig: []byte("version: 2\n")}))

	if out, ok := runTool(t, "isoinfo", "-d", "-i", iso); ok {
		wantLines(t, "isoinfo -d", out, `^Volume id: cidata$`, `^Joliet with UCS level 3 found$`, `^Rock Ridge signatures version 1 found$`)
	}
	// Rock Ridge names, modes and owners.
	if out, ok := runTool(t, "isoinfo", "-R", "-l", "-i", iso); ok {
		wantLines(t, "isoinfo -R -l", out,
			`^-r--r--r-- +1 +0 +0 +\d+ .* meta-data $`,
			`^-r--r--r-- +1 +0 +0 +`+strconv.Itoa(len(envData))+` .* user-data $`,
			`^-r--r--r-- .* network-config $`)
	}
	// Joliet names.
	if out, ok := runTool(t, "isoinfo", "-J", "-l", "-i", iso); ok {
		wantLines(t, "isoinfo -J -l", out, ` meta-data $`, ` user-data $`, ` network-config $`)
	}
	if out, ok := runTool(t, "xorriso", "-indev", iso, "-find", "/", "-type", "f"); ok {
		wantLines(t, "xorriso -find", out, `^'/meta-data'$`, `^'/user-data'$`, `^'/network-config'$`)
	}
	if out, ok := runTool(t, "isovfy", iso); ok {
		wantLines(t, "isovfy", out, `^No errors found$`)
		if strings.Contains(out, "*****") {
			t.Errorf("isovfy warnings:\n%s", out)
		}
	}
	if out, ok := runTool(t, "blkid", "-p", "-o", "export", iso); ok {
		wantLines(t, "blkid", out, `^LABEL=cidata$`, `^TYPE=iso9660$`)
	}
	// Contents through isoinfo's Rock Ridge extraction.
	if out, ok := runTool(t, "isoinfo", "-R", "-i", iso, "-x", "/user-data"); ok && out != string(envData) {
		t.Error("isoinfo -x /user-data differs from the env.yml")
	}
	if out, ok := runTool(t, "isoinfo", "-R", "-i", iso, "-x", "/meta-data"); ok {
		wantLines(t, "meta-data", out, `^instance-id: iid-ecs-[0-9a-f]{20}$`, `^local-hostname: `+regexp.QuoteMeta(testDomain)+`$`)
	}
}

func TestConfigDriveISOReaders(t *testing.T) {
	iso := writeTemp(t, "cd.iso", build(t, Options{Format: ConfigDrive, NetworkConfig: []byte(`{"links":[]}`)}))
	if out, ok := runTool(t, "isoinfo", "-d", "-i", iso); ok {
		wantLines(t, "isoinfo -d", out, `^Volume id: config-2$`, `^Rock Ridge signatures version 1 found$`)
	}
	if out, ok := runTool(t, "isoinfo", "-R", "-f", "-i", iso); ok {
		wantLines(t, "isoinfo -R -f", out, `^/openstack$`, `^/openstack/latest$`,
			`^/openstack/latest/meta_data.json$`, `^/openstack/latest/user_data$`, `^/openstack/latest/network_data.json$`)
	}
	if out, ok := runTool(t, "isoinfo", "-J", "-f", "-i", iso); ok {
		wantLines(t, "isoinfo -J -f", out, `^/openstack/latest/meta_data.json$`, `^/openstack/latest/user_data$`)
	}
	if out, ok := runTool(t, "xorriso", "-indev", iso, "-find", "/", "-type", "f"); ok {
		wantLines(t, "xorriso -find", out, `^'/openstack/latest/meta_data.json'$`, `^'/openstack/latest/user_data'$`)
	}
	if out, ok := runTool(t, "blkid", "-p", "-o", "export", iso); ok {
		wantLines(t, "blkid", out, `^LABEL=config-2$`, `^TYPE=iso9660$`)
	}
	if out, ok := runTool(t, "isoinfo", "-R", "-i", iso, "-x", "/openstack/latest/meta_data.json"); ok {
		var md map[string]any
		if err := json.Unmarshal([]byte(out), &md); err != nil || md["hostname"] != testDomain || md["uuid"] == nil {
			t.Errorf("meta_data.json %q: %v", out, err)
		}
	}
	if out, ok := runTool(t, "isovfy", iso); ok {
		wantLines(t, "isovfy", out, `^No errors found$`)
	}
}

func TestVFATReaders(t *testing.T) {
	envData := testEnv(t)
	img := writeTemp(t, "seed.img", build(t, Options{Format: VFAT, VendorData: []byte("#!/bin/sh\n")}))
	if out, ok := runTool(t, "fsck.fat", "-n", "-v", img); ok {
		for _, bad := range []string{"Reclaimed", "differ", "Free cluster summary wrong", "orphan", "invalid"} {
			if strings.Contains(out, bad) {
				t.Errorf("fsck.fat -n reports %q:\n%s", bad, out)
			}
		}
	}
	if out, ok := runTool(t, "mdir", "-i", img, "::"); ok {
		wantLines(t, "mdir", out, `^ Volume in drive : is cidata`, ` meta-data$`, ` `+strconv.Itoa(len(envData))+` .* user-data$`, ` vendor-data$`)
	}
	if out, ok := runTool(t, "mtype", "-i", img, "::user-data"); ok && out != string(envData) {
		t.Error("mtype ::user-data differs from the env.yml")
	}
	if out, ok := runTool(t, "blkid", "-p", "-o", "export", img); ok {
		wantLines(t, "blkid", out, `^LABEL=cidata$`, `^TYPE=vfat$`, `^UUID=[0-9A-F]{4}-[0-9A-F]{4}$`)
		if strings.Contains(out, "UUID=0000-0000") {
			t.Error("volume serial is zero")
		}
	}
}

func TestInspectExtractRoundTrip(t *testing.T) {
	envData := testEnv(t)
	net := map[Format][]byte{NoCloud: []byte("version: 2\n"), VFAT: []byte("version: 2\n"), ConfigDrive: []byte(`{"links":[]}`)}
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			o := Options{Format: f, UserData: envData, NetworkConfig: net[f]}
			s, err := Prepare(o)
			if err != nil {
				t.Fatal(err)
			}
			img := writeTemp(t, "seed", build(t, o))
			info, err := Inspect(img)
			if err != nil {
				t.Fatal(err)
			}
			wantFS := "iso9660"
			if f == VFAT {
				wantFS = "vfat"
			}
			if info.FS != wantFS || info.Label != f.Label() || info.Format != f {
				t.Errorf("fs %q label %q format %q", info.FS, info.Label, info.Format)
			}
			if info.InstanceID != s.InstanceID || info.Hostname != testDomain {
				t.Errorf("instance-id %q hostname %q", info.InstanceID, info.Hostname)
			}
			if len(info.Files) != len(s.Files) {
				t.Fatalf("files %v, want %s", info.Files, paths(s))
			}
			for i, sf := range s.Files {
				if info.Files[i].Path != sf.Path || info.Files[i].Size != int64(len(sf.Data)) {
					t.Errorf("file %d: %+v, want %s (%d bytes)", i, info.Files[i], sf.Path, len(sf.Data))
				}
			}
			dir := filepath.Join(t.TempDir(), "out")
			if err := Extract(img, dir); err != nil {
				t.Fatal(err)
			}
			for _, sf := range s.Files {
				p := filepath.Join(dir, filepath.FromSlash(sf.Path))
				got, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, sf.Data) {
					t.Errorf("%s: extracted content differs", sf.Path)
				}
				if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v", sf.Path, st.Mode().Perm())
				}
			}
			if err := Extract(img, dir); err == nil {
				t.Error("second extract overwrote existing files")
			}
		})
	}
}

// Images made by the reference tools read back too.
func TestInspectForeignImages(t *testing.T) {
	dir := t.TempDir()
	ud := filepath.Join(dir, "user-data")
	md := filepath.Join(dir, "meta-data")
	os.WriteFile(ud, testEnv(t), 0o600)
	os.WriteFile(md, []byte("instance-id: foreign\nlocal-hostname: f.example\n"), 0o600)
	for _, fs := range []string{"iso9660", "vfat"} {
		img := filepath.Join(dir, fs+".img")
		if _, ok := runTool(t, "cloud-localds", "-f", fs, img, ud, md); !ok {
			continue
		}
		info, err := Inspect(img)
		if err != nil {
			t.Errorf("%s: %v", fs, err)
			continue
		}
		if info.Label != "cidata" || info.InstanceID != "foreign" || info.Hostname != "f.example" || len(info.Files) != 2 {
			t.Errorf("cloud-localds %s image: %+v", fs, info)
		}
	}
}

func TestExtractRefusesEscape(t *testing.T) {
	img := writeTemp(t, "cd.iso", build(t, Options{Format: ConfigDrive}))
	dir := t.TempDir()
	outside := t.TempDir()
	// A symlink planted in the target must not lead the writes outside it.
	if err := os.Symlink(outside, filepath.Join(dir, "openstack")); err != nil {
		t.Fatal(err)
	}
	if err := Extract(img, dir); err == nil {
		t.Error("extract followed a symlink out of the target directory")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("files written outside: %v", ents)
	}
	for _, bad := range []string{"../x", "/etc/passwd", "a/../../b", "a//b", ".", "a\\b", ""} {
		if safeName(bad) {
			t.Errorf("safeName(%q) = true", bad)
		}
	}
	for _, good := range []string{"user-data", "openstack/latest/user_data"} {
		if !safeName(good) {
			t.Errorf("safeName(%q) = false", good)
		}
	}
}

func TestInspectGarbage(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":     nil,
		"zeros":     make([]byte, 64<<10),
		"truncated": build(t, Options{})[:17*isoBlock],
	} {
		if _, err := Inspect(writeTemp(t, name, data)); err == nil {
			t.Errorf("%s: Inspect succeeded", name)
		}
	}
	if _, err := Inspect(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// FuzzInspect feeds damaged images to the readers: they must return, with
// or without an error, and never hang or crash; a failed extraction leaves
// nothing behind (issue 13).
func FuzzInspect(f *testing.F) {
	for _, fm := range Formats {
		img, err := Build(Options{Format: fm, UserData: []byte("#cloud-config\n"), Raw: true, Hostname: "h"})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(img[16*isoBlock:min(len(img), 24*isoBlock)], int64(16*isoBlock), fm == VFAT)
		f.Add(img[:4096], int64(0), fm == VFAT)
	}
	f.Fuzz(func(t *testing.T, patch []byte, off int64, fat bool) {
		base, _ := Build(Options{Format: map[bool]Format{true: VFAT, false: NoCloud}[fat], UserData: []byte("#cloud-config\n"), Raw: true, Hostname: "h"})
		if off < 0 || off >= int64(len(base)) {
			off = 0
		}
		copy(base[off:], patch)
		p := filepath.Join(t.TempDir(), "img")
		if err := os.WriteFile(p, base, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _ = Inspect(p)
		dir := filepath.Join(t.TempDir(), "out")
		if err := Extract(p, dir); err != nil {
			if _, serr := os.Stat(dir); serr == nil {
				t.Fatalf("failed extraction (%v) left %s", err, dir)
			}
		}
	})
}

// inspectWithin runs Inspect on data and fails the test if it does not
// return within a few seconds (a reader stuck in a loop).
func inspectWithin(t *testing.T, data []byte) error {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := Inspect(p); done <- err }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		os.WriteFile(filepath.Join(os.TempDir(), "cidata-hang.img"), data, 0o600)
		t.Fatal("Inspect did not return (image saved as cidata-hang.img in the temp dir)")
		return nil
	}
}

// suspOf returns the System Use area of the first directory record named
// name in the root directory of img.
func suspOf(t *testing.T, img []byte, name string) []byte {
	t.Helper()
	root := img[16*isoBlock+156:]
	var area []byte
	_ = eachRecord(img, binary.LittleEndian.Uint32(root[2:6]), binary.LittleEndian.Uint32(root[10:14]), func(r []byte) error {
		nl := int(r[32])
		if area == nil && strings.HasPrefix(string(r[33:33+nl]), name) {
			area = r[33+nl+(1-nl%2):]
		}
		return nil
	})
	if area == nil {
		t.Fatalf("no record %s", name)
	}
	return area
}

// Hostile System Use areas that hang or crash github.com/kdomanski/iso9660
// are refused before it sees them.
func TestInspectHostileSUSP(t *testing.T) {
	img := build(t, Options{})
	area := suspOf(t, img, "USER")
	area[2] = 0 // zero-length entry: an endless loop in the reader
	if err := inspectWithin(t, img); err == nil || !strings.Contains(err.Error(), "bad length 0") {
		t.Errorf("zero-length SUSP entry: %v", err)
	}

	img = build(t, Options{})
	root := img[16*isoBlock+156:]
	rootLoc := binary.LittleEndian.Uint32(root[2:6])
	dot := img[int(rootLoc)*isoBlock:]
	dot = dot[:dot[0]]
	ce := bytes.Index(dot[34:], []byte("CE\x1c\x01"))
	if ce < 0 {
		t.Fatal("root record has no CE entry")
	}
	// Point the continuation area at the root record's own SUSP bytes:
	// endless recursion.
	e := dot[34+ce:]
	putBoth32(e[4:12], rootLoc)
	putBoth32(e[12:20], 34)
	putBoth32(e[20:28], uint32(len(dot)-34))
	if err := inspectWithin(t, img); err == nil || !strings.Contains(err.Error(), "continuation") {
		t.Errorf("self-referencing CE: %v", err)
	}
}

// Random damage to the descriptors, directories, FATs and root directory
// of every format: Inspect returns, with or without an error.
func TestInspectMutations(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	n := 300
	if testing.Short() {
		n = 60
	}
	for i := range n {
		fm := Formats[i%len(Formats)]
		img := build(t, Options{Format: fm, UserData: []byte("#cloud-config\n"), Raw: true, Hostname: "h"})
		region := 16 * isoBlock
		if fm == VFAT {
			region = 0
		}
		for range 1 + rng.Intn(8) {
			img[region+rng.Intn(min(len(img)-region, 20*isoBlock))] = byte(rng.Intn(256))
		}
		_ = inspectWithin(t, img)
	}
}
