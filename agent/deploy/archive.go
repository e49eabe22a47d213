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
// (manifest.json) or OCI layout (index.json). Links are resolved against
// the archive's own tree, as extracting it would (a chain such as d1 → .,
// d1/d2 → .., d2/evil escapes, though each link alone stays inside).
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
	t := &linkTree{links: map[string]string{}}
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
		// Where the entry lands once the links before it are followed.
		dir, err := t.resolve(path.Dir(path.Clean(h.Name)), 0)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrBadArchive, h.Name, err)
		}
		at := path.Join(dir, path.Base(path.Clean(h.Name)))
		switch h.Typeflag {
		case tar.TypeSymlink:
			if path.IsAbs(h.Linkname) {
				return fmt.Errorf("%w: %s: link to %q leaves the archive", ErrBadArchive, h.Name, h.Linkname)
			}
			if _, err := t.resolve(joinRaw(dir, h.Linkname), 0); err != nil {
				return fmt.Errorf("%w: %s: link to %q leaves the archive (%v)", ErrBadArchive, h.Name, h.Linkname, err)
			}
			t.links[at] = h.Linkname
		case tar.TypeLink:
			if err := checkName(h.Linkname); err != nil {
				return err
			}
			if _, err := t.resolve(path.Clean(h.Linkname), 0); err != nil {
				return fmt.Errorf("%w: %s: hard link to %q leaves the archive (%v)", ErrBadArchive, h.Name, h.Linkname, err)
			}
			delete(t.links, at)
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return fmt.Errorf("%w: %s: device or fifo entry", ErrBadArchive, h.Name)
		case tar.TypeDir:
			// An extractor may keep a link in place of a directory: keep
			// resolving through it.
		default:
			delete(t.links, at) // a later file replaces an earlier link
		}
		if c := path.Clean(h.Name); c == "manifest.json" || c == "index.json" {
			found = true
		}
	}
	if n == 0 {
		return fmt.Errorf("%w: empty archive", ErrBadArchive)
	}
	// Every link again, with the whole tree known.
	for at, target := range t.links {
		if _, err := t.resolve(joinRaw(path.Dir(at), target), 0); err != nil {
			return fmt.Errorf("%w: %s: link to %q leaves the archive (%v)", ErrBadArchive, at, target, err)
		}
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

// linkTree holds the archive's symbolic links by where they land (their
// directory resolved), to resolve paths the way extraction would.
type linkTree struct {
	links map[string]string // resolved location → link target
}

// maxLinkDepth bounds link chains (and catches loops), like the kernel's
// ELOOP limit.
const maxLinkDepth = 40

// resolve follows every link in the relative path p (all its components,
// including the last; ".." is taken physically, after the links before it)
// and returns the resulting path inside the archive, or an error if it
// leaves the archive's root or loops.
func (t *linkTree) resolve(p string, depth int) (string, error) {
	if path.IsAbs(p) {
		return "", errors.New("absolute path")
	}
	return t.resolveParts(strings.Split(p, "/"), depth)
}

func (t *linkTree) resolveParts(parts []string, depth int) (string, error) {
	if depth > maxLinkDepth {
		return "", errors.New("too many levels of symbolic links")
	}
	var cur []string
	for i, c := range parts {
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return "", errors.New("goes above the archive's root")
			}
			cur = cur[:len(cur)-1]
			continue
		}
		cur = append(cur, c)
		target, ok := t.links[strings.Join(cur, "/")]
		if !ok {
			continue
		}
		if path.IsAbs(target) {
			return "", fmt.Errorf("absolute link %q", target)
		}
		// Replace the link by its target, relative to the link's directory,
		// and resolve that with the rest of the path.
		next := append([]string{}, cur[:len(cur)-1]...)
		next = append(next, strings.Split(target, "/")...)
		return t.resolveParts(append(next, parts[i+1:]...), depth+1)
	}
	return strings.Join(cur, "/"), nil
}

// joinRaw joins dir and the relative rel without cleaning ("l/.." must be
// resolved through the link l, not dropped).
func joinRaw(dir, rel string) string {
	if dir == "" || dir == "." {
		return rel
	}
	return dir + "/" + rel
}
