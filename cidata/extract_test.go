package cidata

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestExtractTruncatedImage: a seed whose last file's recorded extent runs
// past the end of the image fails the extraction (an InputError naming the
// file) and leaves nothing behind (issue 13: exit 0, partial files).
func TestExtractTruncatedImage(t *testing.T) {
	for _, f := range []Format{NoCloud, ConfigDrive} {
		t.Run(string(f), func(t *testing.T) {
			data := build(t, Options{Format: f})
			img := writeTemp(t, "seed.iso", data)
			info, err := Inspect(img)
			if err != nil {
				t.Fatal(err)
			}
			// Cut the image inside the largest file's data.
			var biggest FileInfo
			for _, fi := range info.Files {
				if fi.Size > biggest.Size {
					biggest = fi
				}
			}
			cut := findData(t, data, img, biggest)
			if err := os.Truncate(img, cut); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "out", "seed")
			err = Extract(img, dir)
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Fatalf("Extract of a truncated image = %v, want an InputError", err)
			}
			if _, err := os.Stat(filepath.Dir(dir)); err == nil {
				t.Errorf("output directory left behind")
			}
		})
	}
}

// findData returns an offset inside the data of file fi in the image (its
// first bytes, found by content).
func findData(t *testing.T, data []byte, img string, fi FileInfo) int64 {
	t.Helper()
	dir := t.TempDir()
	if err := Extract(img, dir); err != nil {
		t.Fatal(err)
	}
	content, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(fi.Path)))
	if err != nil || len(content) < 64 {
		t.Fatalf("%s: %v (%d bytes)", fi.Path, err, len(content))
	}
	for i := 0; i+64 <= len(data); i += 2048 {
		if string(data[i:i+64]) == string(content[:64]) {
			return int64(i + len(content)/2)
		}
	}
	t.Fatalf("%s: data not found at a sector start", fi.Path)
	return 0
}
