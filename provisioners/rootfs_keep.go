package provisioners

import (
	"archive/tar"
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// libDirs are where the dynamic loader looks for a library without
// ld.so.cache (glibc's built-in list on Debian amd64): a kept ELF file's
// DT_NEEDED entries are resolved in the same order.
var libDirs = []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64", "usr/lib64"}

// keepAlways are kept in every slim layer when the root file system has
// them: the user and group tables (the runtime resolves `user:` there),
// /tmp, and the merged-/usr links.
var keepAlways = []string{"etc/passwd", "etc/group", "tmp", "bin", "sbin", "lib", "lib64"}

// packagesFile is where a slim layer records the Debian packages of the
// root file system its files were taken from ("name version" lines, from
// dpkg's status), since dpkg's own database is not kept.
const packagesFile = "usr/share/ecs-image/debian-packages"

// rootfsEntry is one entry of an mmdebstrap tarball: its header and, for an
// ELF file, the libraries it needs and its program interpreter.
type rootfsEntry struct {
	hdr    *tar.Header
	needed []string
	interp string
}

// rootfsIndex is a root file system tarball's entries by clean relative
// name ("usr/bin/x"), in the tarball's order.
type rootfsIndex struct {
	entries  map[string]*rootfsEntry
	order    []string
	packages []string // "name version" of dpkg's installed packages
}

// maxELFRead bounds the size of a file read to find its ELF dependencies.
const maxELFRead = 256 << 20

// indexRootfs reads an mmdebstrap tarball: every entry's header, each ELF
// file's DT_NEEDED and PT_INTERP, and dpkg's status.
func indexRootfs(r io.Reader) (*rootfsIndex, error) {
	ix := &rootfsIndex{entries: map[string]*rootfsEntry{}}
	tr := tar.NewReader(r)
	var magic [4]byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ix, nil
		}
		if err != nil {
			return nil, err
		}
		n := cleanTarName(h.Name)
		if n == "" {
			continue
		}
		e := &rootfsEntry{hdr: h}
		if _, dup := ix.entries[n]; !dup {
			ix.order = append(ix.order, n)
		}
		ix.entries[n] = e
		if h.Typeflag != tar.TypeReg || h.Size < 4 || h.Size > maxELFRead {
			continue
		}
		if n == "var/lib/dpkg/status" {
			data, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			ix.packages = dpkgInstalled(data)
			continue
		}
		if _, err := io.ReadFull(tr, magic[:]); err != nil {
			return nil, err
		}
		if string(magic[:]) != elf.ELFMAG {
			continue
		}
		data := make([]byte, h.Size)
		copy(data, magic[:])
		if _, err := io.ReadFull(tr, data[len(magic):]); err != nil {
			return nil, err
		}
		f, err := elf.NewFile(bytes.NewReader(data))
		if err != nil {
			continue // not an ELF file after all
		}
		e.needed, _ = f.ImportedLibraries()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b, _ := io.ReadAll(p.Open())
				e.interp = strings.TrimRight(string(b), "\x00")
			}
		}
		f.Close()
	}
}

// cleanTarName is a tar entry's name relative to the root, without "./" or
// a trailing slash ("" for the root itself).
func cleanTarName(n string) string {
	n = path.Clean("/" + n)
	return strings.TrimPrefix(n, "/")
}

// dpkgInstalled lists "name version" of the installed packages in a dpkg
// status file.
func dpkgInstalled(status []byte) []string {
	var out []string
	for _, para := range strings.Split(string(status), "\n\n") {
		var name, version, state string
		sc := bufio.NewScanner(strings.NewReader(para))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ": ")
			if !ok {
				continue
			}
			switch k {
			case "Package":
				name = v
			case "Version":
				version = v
			case "Status":
				state = v
			}
		}
		if name != "" && strings.HasSuffix(state, " installed") {
			out = append(out, name+" "+version)
		}
	}
	sort.Strings(out)
	return out
}

// resolve follows p (clean, relative) through the index's symlinks to the
// entry it names; links are the symlinks it went through (kept with it, so
// that the path works in the image).
func (ix *rootfsIndex) resolve(p string) (real string, links []string, err error) {
	parts := strings.Split(p, "/")
	cur := ""
	for hops := 0; len(parts) > 0; {
		next := path.Join(cur, parts[0])
		parts = parts[1:]
		e, ok := ix.entries[next]
		if !ok {
			return "", nil, fmt.Errorf("/%s: not in the root file system", next)
		}
		if e.hdr.Typeflag != tar.TypeSymlink {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", nil, fmt.Errorf("/%s: too many levels of symbolic links", p)
		}
		links = append(links, next)
		target := e.hdr.Linkname
		if !strings.HasPrefix(target, "/") {
			target = path.Join("/", cur, target)
		}
		parts = append(strings.Split(cleanTarName(target), "/"), parts...)
		if parts[0] == "" {
			parts = parts[1:]
		}
		cur = ""
	}
	return cur, links, nil
}

// keepSet returns the names a slim layer keeps for the paths in keep: each
// path (a directory with everything below it), the symlinks on the way,
// the libraries their ELF files need (transitively) and the program
// interpreter, keepAlways, and every directory above a kept name.
func (ix *rootfsIndex) keepSet(keep []string) (map[string]bool, error) {
	kept := map[string]bool{}
	var elfs []string
	// add keeps p (nothing when it does not resolve) and returns the
	// entry it names.
	add := func(p string) (string, error) {
		real, links, err := ix.resolve(p)
		if err != nil {
			return "", err
		}
		for _, l := range links {
			kept[l] = true
		}
		if kept[real] {
			return real, nil
		}
		kept[real] = true
		e, content := ix.entries[real], real
		if e.hdr.Typeflag == tar.TypeLink {
			t := cleanTarName(e.hdr.Linkname)
			kept[t] = true
			if te, ok := ix.entries[t]; ok {
				e, content = te, t
			}
		}
		if len(e.needed) > 0 || e.interp != "" {
			elfs = append(elfs, content)
		}
		return real, nil
	}
	for _, k := range keep {
		k = cleanTarName(k)
		real, err := add(k)
		if err != nil {
			return nil, fmt.Errorf("keep: %w", err)
		}
		if ix.entries[real].hdr.Typeflag == tar.TypeDir {
			for _, n := range ix.order {
				if strings.HasPrefix(n, real+"/") {
					// Everything below, as it is: a symlink that
					// points nowhere in the root file system stays
					// one (what it points to is kept when it exists).
					kept[n] = true
					_, _ = add(n)
				}
			}
		}
	}
	for _, k := range keepAlways {
		if _, ok := ix.entries[k]; ok {
			kept[k] = true
		}
	}
	for len(elfs) > 0 {
		f := elfs[0]
		elfs = elfs[1:]
		e := ix.entries[f]
		if e.interp != "" {
			if _, err := add(cleanTarName(e.interp)); err != nil {
				return nil, fmt.Errorf("/%s: program interpreter %w", f, err)
			}
		}
		for _, lib := range e.needed {
			found := false
			for _, d := range libDirs {
				if _, err := add(path.Join(d, lib)); err == nil {
					found = true
					break
				}
			}
			if !found {
				return nil, fmt.Errorf("/%s needs %s, which is in none of /%s", f, lib, strings.Join(libDirs, ", /"))
			}
		}
	}
	for n := range kept {
		for d := path.Dir(n); d != "."; d = path.Dir(d) {
			kept[d] = true
		}
	}
	return kept, nil
}

// writeLayer writes the entries of the tarball (read again from r) that
// filter admits, in its order, into tw: names without "./", no device
// nodes or FIFOs (the runtime provides /dev).
func writeLayer(r io.Reader, tw *tar.Writer, filter func(string) bool) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		n := cleanTarName(h.Name)
		if n == "" || strings.HasPrefix(n, "dev/") || !filter(n) {
			continue
		}
		if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock || h.Typeflag == tar.TypeFifo {
			continue
		}
		if h.Typeflag == tar.TypeDir {
			n += "/"
		}
		h.Name = n
		if h.Typeflag == tar.TypeLink {
			h.Linkname = cleanTarName(h.Linkname)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}

// writePackages adds packagesFile (and its directory) to a slim layer.
func writePackages(tw *tar.Writer, ix *rootfsIndex, kept map[string]bool) error {
	data := []byte(strings.Join(ix.packages, "\n") + "\n")
	for _, d := range []string{"usr", "usr/share", path.Dir(packagesFile)} {
		if kept[d] {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: layerEpoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: packagesFile, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: layerEpoch, Format: tar.FormatPAX}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// slimLayer writes the layer of the tarball at rootfs that holds only
// keepSet(keep) and packagesFile.
func slimLayer(rootfs string, tw *tar.Writer, keep []string) error {
	in, err := os.Open(rootfs)
	if err != nil {
		return err
	}
	defer in.Close()
	ix, err := indexRootfs(bufio.NewReaderSize(in, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", rootfs, err)
	}
	kept, err := ix.keepSet(keep)
	if err != nil {
		return err
	}
	for d := path.Dir(packagesFile); d != "."; d = path.Dir(d) {
		if _, ok := ix.entries[d]; ok {
			kept[d] = true
		}
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := writeLayer(bufio.NewReaderSize(in, 1<<20), tw, func(n string) bool { return kept[n] }); err != nil {
		return fmt.Errorf("%s: %w", rootfs, err)
	}
	return writePackages(tw, ix, kept)
}
