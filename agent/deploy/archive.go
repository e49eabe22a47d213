package deploy

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// ErrBadArchive marks an upload that is not an acceptable image tarball.
var ErrBadArchive = errors.New("bad image archive")

// CheckArchive validates an uploaded .tar or .tar.gz before it goes near
// Docker: every entry name must be relative and free of "..", links must
// not point outside the archive, and it must be a docker-archive
// (manifest.json) or OCI layout (index.json).
func CheckArchive(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: gzip: %v", ErrBadArchive, err)
		}
		defer zr.Close()
		r = zr
	}
	tr := tar.NewReader(r)
	found := false
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadArchive, err)
		}
		n++
		if err := checkName(h.Name); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeSymlink:
			target := h.Linkname
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(h.Name), target)
			}
			if path.IsAbs(h.Linkname) || strings.HasPrefix(path.Clean(target), "../") || path.Clean(target) == ".." {
				return fmt.Errorf("%w: %s: link to %q leaves the archive", ErrBadArchive, h.Name, h.Linkname)
			}
		case tar.TypeLink:
			if err := checkName(h.Linkname); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return fmt.Errorf("%w: %s: device or fifo entry", ErrBadArchive, h.Name)
		}
		if c := path.Clean(h.Name); c == "manifest.json" || c == "index.json" {
			found = true
		}
	}
	if n == 0 {
		return fmt.Errorf("%w: empty archive", ErrBadArchive)
	}
	if !found {
		return fmt.Errorf("%w: not a docker-archive or OCI layout (no manifest.json or index.json)", ErrBadArchive)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || path.IsAbs(name) || strings.HasPrefix(name, "\\") {
		return fmt.Errorf("%w: entry %q: absolute path", ErrBadArchive, name)
	}
	for _, part := range strings.Split(strings.ReplaceAll(name, "\\", "/"), "/") {
		if part == ".." {
			return fmt.Errorf("%w: entry %q: \"..\" in path", ErrBadArchive, name)
		}
	}
	return nil
}
