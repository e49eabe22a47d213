package cidata

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// isoSeeds are the ISO9660 seeds the writer tests look at: every file a
// NoCloud or config-2 seed can hold.
func isoSeeds(t *testing.T) map[string]*Seed {
	t.Helper()
	out := map[string]*Seed{}
	for name, o := range map[string]Options{
		"nocloud":  {NetworkConfig: []byte("version: 2\n"), VendorData: []byte("#cloud-config\n{}\n")},
		"config-2": {Format: ConfigDrive, NetworkConfig: []byte(`{"links":[]}`), VendorData: []byte("#!/bin/sh\n")},
	} {
		o.UserData = testEnv(t)
		s, err := Prepare(o)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = s
	}
	return out
}

// readGoDiskfs lists the regular files of an ISO9660 image (path → data)
// through go-diskfs's reader.
func readGoDiskfs(t *testing.T, img string) map[string][]byte {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	fsys, err := iso9660.Read(file.New(f, true), st.Size(), 0, 0)
	if err != nil {
		t.Fatalf("go-diskfs: %v", err)
	}
	if l := fsys.Label(); strings.TrimRight(l, " ") == "" {
		t.Errorf("go-diskfs: empty label")
	}
	got := map[string][]byte{}
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := fsys.ReadDir(dir)
		if err != nil {
			t.Fatalf("go-diskfs: ReadDir %s: %v", dir, err)
		}
		for _, e := range ents {
			p := path.Join(dir, e.Name()) // io/fs paths: ".", "a/b"
			if e.IsDir() {
				walk(p)
				continue
			}
			fh, err := fsys.OpenFile(p, os.O_RDONLY)
			if err != nil {
				t.Fatalf("go-diskfs: open %s: %v", p, err)
			}
			data, err := io.ReadAll(fh)
			if err != nil {
				t.Fatalf("go-diskfs: read %s: %v", p, err)
			}
			got[p] = data
		}
	}
	walk(".")
	return got
}

func seedFiles(s *Seed) map[string][]byte {
	m := map[string][]byte{}
	for _, f := range s.Files {
		m[f.Path] = f.Data
	}
	return m
}

func sameFiles(t *testing.T, reader string, got, want map[string][]byte) {
	t.Helper()
	for p, data := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("%s: no %s (has %v)", reader, p, slices.Sorted(func(yield func(string) bool) {
				for k := range got {
					if !yield(k) {
						return
					}
				}
			}))
		} else if !bytes.Equal(g, data) {
			t.Errorf("%s: %s differs", reader, p)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d files, want %d", reader, len(got), len(want))
	}
}

// Every reader at hand sees the seed's files under their names: go-diskfs,
// kdomanski/iso9660 (Inspect), the agent's reader (Open), blkid.
func TestISOWriterReaders(t *testing.T) {
	for name, s := range isoSeeds(t) {
		t.Run(name, func(t *testing.T) {
			data, err := s.Image()
			if err != nil {
				t.Fatal(err)
			}
			if len(data)%isoBlock != 0 {
				t.Errorf("image of %d bytes: not whole blocks", len(data))
			}
			img := writeTemp(t, "seed.iso", data)
			want := seedFiles(s)
			sameFiles(t, "go-diskfs", readGoDiskfs(t, img), want)

			info, err := Inspect(img)
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if info.Label != s.Label || info.FS != FSISO9660 {
				t.Errorf("Inspect: label %q fs %q", info.Label, info.FS)
			}
			im, err := Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			got := map[string][]byte{}
			for _, fi := range im.Info.Files {
				if got[fi.Path], err = im.ReadFile(fi.Path); err != nil {
					t.Error(err)
				}
			}
			sameFiles(t, "kdomanski/iso9660", got, want)

			if out, ok := runTool(t, "blkid", "-o", "value", "-s", "LABEL", img); ok && strings.TrimSpace(out) != s.Label {
				t.Errorf("blkid LABEL %q, want %q", out, s.Label)
			}
		})
	}
}

// The image is what genisoimage -r -J writes for the same files (as
// cloud-localds runs it, plus -r for the modes and owners of a seed):
// the same volume, the same Rock Ridge listing (names, modes, links,
// owners, sizes, dates) and Joliet names, the same contents.
func TestISOWriterMatchesGenisoimage(t *testing.T) {
	if _, err := exec.LookPath("genisoimage"); err != nil {
		runTool(t, "genisoimage") // fails under CI, logs elsewhere
		return
	}
	for name, s := range isoSeeds(t) {
		t.Run(name, func(t *testing.T) {
			data, err := s.Image()
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			ours := writeTemp(t, "ours.iso", data)
			tree := filepath.Join(dir, "tree")
			var dirs []string
			for _, f := range s.Files {
				p := filepath.Join(tree, filepath.FromSlash(f.Path))
				for d := filepath.Dir(p); d != dir && !slices.Contains(dirs, d); d = filepath.Dir(d) {
					dirs = append(dirs, d)
				}
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, f.Data, 0o644); err != nil {
					t.Fatal(err)
				}
				os.Chtimes(p, s.ModTime, s.ModTime)
			}
			for _, d := range dirs {
				os.Chtimes(d, s.ModTime, s.ModTime)
			}
			ref := filepath.Join(dir, "ref.iso")
			if _, ok := runTool(t, "genisoimage", "-quiet", "-o", ref, "-V", s.Label, "-r", "-J", tree); !ok {
				return
			}
			// isoinfo prints dates in local time; extents differ by layout.
			extent := regexp.MustCompile(`\[ *\d+ (\d+)\]`)
			info := func(iso string, args ...string) string {
				cmd := exec.Command("isoinfo", append(args, "-i", iso)...)
				cmd.Env = append(os.Environ(), "TZ=UTC")
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("isoinfo %v: %v\n%s", args, err, out)
				}
				return extent.ReplaceAllString(string(out), "[$1]")
			}
			for _, args := range [][]string{{"-R", "-l"}, {"-J", "-l"}, {"-R", "-f"}, {"-J", "-f"}, {"-f"}} {
				if a, b := info(ours, args...), info(ref, args...); a != b {
					t.Errorf("isoinfo %v differs:\nours:\n%s\ngenisoimage:\n%s", args, a, b)
				}
			}
			d := info(ours, "-d")
			refD := info(ref, "-d")
			for _, want := range []string{"Volume id:", "System id:", "Logical block size", "Joliet", "Rock Ridge", "Volume set"} {
				a, b := linesWith(d, want), linesWith(refD, want)
				if a != b || a == "" {
					t.Errorf("isoinfo -d %q: ours %q, genisoimage %q", want, a, b)
				}
			}
			for _, f := range s.Files {
				if out := info(ours, "-R", "-x", "/"+f.Path); out != string(f.Data) {
					t.Errorf("isoinfo -R -x /%s differs from the seed file", f.Path)
				}
			}
		})
	}
}

func linesWith(text, sub string) string {
	var out []string
	for l := range strings.Lines(text) {
		if strings.Contains(l, sub) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}

// Linux's isofs, through a read-only loop mount (root and a kernel with
// iso9660 only; the VM tests' seeds are read by the guest kernel).
func TestISOWriterLinuxMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop mount")
	}
	if fss, _ := os.ReadFile("/proc/filesystems"); !regexp.MustCompile(`(?m)\siso9660$`).Match(fss) {
		t.Skip("this kernel has no iso9660 file system (the VM tests mount seeds in the guest)")
	}
	for name, s := range isoSeeds(t) {
		t.Run(name, func(t *testing.T) {
			data, err := s.Image()
			if err != nil {
				t.Fatal(err)
			}
			img := writeTemp(t, "seed.iso", data)
			mnt := t.TempDir()
			if out, err := exec.Command("mount", "-t", "iso9660", "-o", "loop,ro", img, mnt).CombinedOutput(); err != nil {
				t.Skipf("loop mount not possible here: %v: %s", err, out)
			}
			defer exec.Command("umount", mnt).Run()
			got := map[string][]byte{}
			err = filepath.WalkDir(mnt, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				fi, _ := d.Info()
				if fi.Mode().Perm() != 0o444 {
					t.Errorf("%s: mode %v, want 0444", p, fi.Mode())
				}
				if !fi.ModTime().Equal(s.ModTime) {
					t.Errorf("%s: mtime %v, want %v", p, fi.ModTime(), s.ModTime)
				}
				rel, _ := filepath.Rel(mnt, p)
				got[filepath.ToSlash(rel)], err = os.ReadFile(p)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			sameFiles(t, "linux isofs", got, seedFiles(s))
		})
	}
}

// Directories spanning several blocks, many files, deep paths: records
// never cross a block, and every reader finds every file.
func TestISOWriterLargeTree(t *testing.T) {
	s := &Seed{Label: "cidata", ModTime: time.Date(2024, 2, 29, 23, 59, 58, 0, time.UTC)}
	for i := range 60 {
		s.Files = append(s.Files, SeedFile{
			Path: fmt.Sprintf("dir-%d/a-rather-long-file-name-number-%02d.json", i%3, i),
			Data: bytes.Repeat([]byte{byte(i)}, i*97),
		})
	}
	s.Files = append(s.Files, SeedFile{"a/b/c/d/e/f/deep", []byte("deep\n")})
	data, err := buildISO(s)
	if err != nil {
		t.Fatal(err)
	}
	img := writeTemp(t, "big.iso", data)
	want := seedFiles(s)
	sameFiles(t, "go-diskfs", readGoDiskfs(t, img), want)
	if out, ok := runTool(t, "isovfy", img); ok {
		wantLines(t, "isovfy", out, `^No errors found$`)
	}
	if out, ok := runTool(t, "isoinfo", "-R", "-f", "-i", img); ok {
		n := 0
		for p := range want {
			if !strings.Contains(out, "/"+p+"\n") {
				t.Errorf("isoinfo -R -f: no /%s", p)
			}
			n++
		}
	}
	if out, ok := runTool(t, "isoinfo", "-J", "-f", "-i", img); ok && !strings.Contains(out, "/dir-1/a-rather-long-file-name-number-31.json\n") {
		t.Errorf("isoinfo -J -f:\n%s", out)
	}
	if out, ok := runTool(t, "xorriso", "-indev", img, "-find", "/", "-type", "f"); ok && strings.Count(out, "\n'/") < len(want) {
		t.Errorf("xorriso -find:\n%s", out)
	}
}

func TestISOWriterNames(t *testing.T) {
	for in, want := range map[string]string{
		"meta-data":         "META_DAT.;1",
		"user-data":         "USER_DAT.;1",
		"network-config":    "NETWORK_.;1",
		"meta_data.json":    "META_DAT.JSO;1",
		"network_data.json": "NETWORK_.JSO;1",
		"a.b.c":             "A_B.C;1",
		".hidden":           "_HIDDEN.;1",
	} {
		if got := level1Name(in, false); got != want {
			t.Errorf("level1Name(%q) = %q, want %q", in, got, want)
		}
	}
	if got := level1Name("openstack", true); got != "OPENSTAC" {
		t.Errorf("directory: %q", got)
	}
	// Names that map to one level-1 name get numbered ones.
	s := &Seed{Label: "cidata", ModTime: DefaultEpoch}
	for i := range 120 {
		s.Files = append(s.Files, SeedFile{fmt.Sprintf("meta-data-%d", i), []byte{byte(i)}})
	}
	data, err := buildISO(s)
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "go-diskfs", readGoDiskfs(t, writeTemp(t, "dup.iso", data)), seedFiles(s))
	// Bad paths are refused.
	for _, files := range [][]SeedFile{
		{{"a/../b", []byte("a")}},
		{{"a", []byte("a")}, {"a/b", []byte("b")}},
		{{"a/b", []byte("a")}, {"a", []byte("b")}},
		{{"/a", []byte("a")}},
		{{"a/b/c/d/e/f/g/h", []byte("a")}},
	} {
		if _, err := buildISO(&Seed{Label: "cidata", ModTime: DefaultEpoch, Files: files}); err == nil {
			t.Errorf("%v: no error", files)
		}
	}
}
