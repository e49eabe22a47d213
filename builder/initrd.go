package builder

// A slim initrd for the offline helper and for directly booted build VMs.
// A distribution initrd is made for any machine: Debian's (MODULES=most)
// is 36 MiB of gzip holding 130 MiB, which the kernel decompresses and
// unpacks under emulation before it runs anything, and its init then
// starts udev. The VMs here need three drivers (virtio PCI, virtio block,
// ext4 with its checksum modules): the slim initrd holds only those
// modules, taken from the image's own initrd, a list of them in load order
// (/ecs-modules), /dev/console, and ecs-image as /ecs-offline-helper (with
// its loader and libraries when it is dynamically linked: helperlibs.go). The
// helper loads the modules itself (finit_module), so no modprobe, libc or
// udev is needed. Compressed modules (.ko.xz, .ko.zst, .ko.gz: Debian 13)
// are stored decompressed where the caller allows them. When the initrd cannot be read (an unknown
// compression, a module missing) the caller falls back to the whole
// initrd with ecs-image appended.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// slimModules are the drivers the helper needs, by module name
// (dependencies are added from modules.dep; built-in ones need nothing);
// the first three are required. crc32c is ext4's checksum, requested
// through the crypto API (a soft dependency).
var slimModules = []string{"virtio_pci", "virtio_blk", "ext4", "crc32c_intel", "crc32c_generic"}

// bootModules are loaded too when a build VM boots through the slim initrd:
// the network card must exist when systemd's generators run, as it would
// after the image's own initramfs. The seed is a virtio disk (virtio_blk is
// loaded anyway), so cloud-init's ds-identify finds its cidata label then.
var bootModules = []string{"virtio_net"}

// errUnsupportedInitrd marks an initrd the slim one cannot be made from.
var errUnsupportedInitrd = errors.New("unsupported initrd")

// writeSlimInitrd writes the slim initrd for baseInitrd with h as the
// helper. It returns errUnsupportedInitrd (wrapped) when the caller should
// use the whole initrd instead.
//
// Compressed modules are taken (decompressed) only with compressed set:
// the offline helper sets it for a dynamically linked ecs-image, which
// cannot use the whole-initrd fallback (offline.go); otherwise such an
// initrd keeps to the fallback.
func writeSlimInitrd(out, baseInitrd string, h *helperProgram, compressed bool, extra ...string) error {
	files, err := readInitrd(baseInitrd, filepath.Dir(out))
	if err != nil {
		return err
	}
	defer files.Close()
	order, err := moduleOrder(files, compressed, extra...)
	if err != nil {
		return err
	}
	return writeInitrdFile(out, func(w *cpioWriter) error {
		w.mkdirs("dev/console")
		w.device("dev/console", 0o020600, 5, 1)
		var list strings.Builder
		for _, m := range order {
			data, err := files.get(m)
			if err != nil {
				return err
			}
			name, data, err := decompressModule(m, data)
			if err != nil {
				return err
			}
			w.mkdirs(name)
			w.file(name, 0o644, data)
			list.WriteString("/" + name + "\n")
		}
		w.file(strings.TrimPrefix(offlinehelper.ModulesList, "/"), 0o644, []byte(list.String()))
		if err := h.write(w); err != nil {
			return err
		}
		w.trailer()
		return w.err
	})
}

// writeInitrdFile writes an initrd to out through fill; on an error out is
// removed. The archive streams to the file: ecs-image itself (tens of MiB)
// is copied from its file into it, never held in memory (issue 19: a
// build's memory). The initrd is a scratch file of the work directory
// (removed after the boot): it is not synced.
func writeInitrdFile(out string, fill func(w *cpioWriter) error) (err error) {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(out)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := fill(newCpio(bw)); err != nil {
		return err
	}
	return bw.Flush()
}

// moduleOrder resolves slimModules and the extra modules with their
// dependencies from the initrd's modules.dep, dependencies first.
func moduleOrder(files *initrdModules, compressed bool, extra ...string) ([]string, error) {
	var depFile, dir string
	for name := range files.meta {
		if path.Base(name) == "modules.dep" {
			depFile, dir = name, path.Dir(name)
		}
	}
	if depFile == "" {
		return nil, fmt.Errorf("%w: no modules.dep", errUnsupportedInitrd)
	}
	deps := map[string][]string{} // module path (relative to dir) → its dependencies
	byName := map[string]string{}
	for _, l := range strings.Split(string(files.meta[depFile]), "\n") {
		mod, rest, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		byName[moduleName(mod)] = mod
	}
	builtin := map[string]bool{}
	for _, l := range strings.Split(string(files.meta[path.Join(dir, "modules.builtin")]), "\n") {
		if l != "" {
			builtin[moduleName(l)] = true
		}
	}
	var order []string
	seen := map[string]bool{}
	var visit func(mod string) error
	visit = func(mod string) error {
		if seen[mod] {
			return nil
		}
		seen[mod] = true
		for _, d := range deps[mod] {
			if err := visit(d); err != nil {
				return err
			}
		}
		full := path.Join(dir, mod)
		if c, ok := moduleCompression(mod); !ok || (c != "" && !compressed) {
			return fmt.Errorf("%w: compressed module %s", errUnsupportedInitrd, mod)
		}
		if !files.has(full) {
			return fmt.Errorf("%w: %s is not in the initrd", errUnsupportedInitrd, mod)
		}
		order = append(order, full)
		return nil
	}
	for i, name := range append(slices.Clone(slimModules), extra...) {
		mod, ok := byName[name]
		switch {
		case ok:
			if err := visit(mod); err != nil {
				return nil, err
			}
		case builtin[name]:
		case i < 3 || i >= len(slimModules): // crc32c variants are optional
			return nil, fmt.Errorf("%w: no %s module", errUnsupportedInitrd, name)
		}
	}
	return order, nil
}

// moduleCompression returns the compression suffix of a module file
// (".ko": none; ".ko.xz", ".ko.zst", ".ko.gz" as kmod writes them).
func moduleCompression(p string) (string, bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(p, ext) {
			return strings.TrimPrefix(ext, ".ko"), true
		}
	}
	return "", false
}

// decompressModule returns a module file decompressed (finit_module takes
// a plain ELF object from the helper) and its name without the suffix.
func decompressModule(p string, data []byte) (string, []byte, error) {
	comp, _ := moduleCompression(p)
	name := strings.TrimSuffix(p, comp)
	var r io.Reader
	switch comp {
	case "":
		return p, data, nil
	case ".xz":
		xr, err := xz.NewReader(bytes.NewReader(data))
		if err != nil {
			return "", nil, fmt.Errorf("%w: %s: %v", errUnsupportedInitrd, p, err)
		}
		r = xr
	case ".zst":
		zr, err := zstd.NewReader(bytes.NewReader(data))
		if err != nil {
			return "", nil, fmt.Errorf("%w: %s: %v", errUnsupportedInitrd, p, err)
		}
		defer zr.Close()
		r = zr
	case ".gz":
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return "", nil, fmt.Errorf("%w: %s: %v", errUnsupportedInitrd, p, err)
		}
		r = zr
	}
	out, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s: %v", errUnsupportedInitrd, p, err)
	}
	return name, out, nil
}

// moduleName is a module's name as modprobe knows it: "kernel/fs/ext4/
// ext4.ko" → "ext4", dashes as underscores.
func moduleName(p string) string {
	n := path.Base(p)
	if i := strings.Index(n, ".ko"); i >= 0 {
		n = n[:i]
	}
	return strings.ReplaceAll(n, "-", "_")
}

// initrdModules are the module indexes (modules.dep, modules.builtin) and
// kernel modules read from an initrd. The indexes are kept in memory; the
// modules' contents go to an unlinked spill file and are read back by get
// for the dozen the slim initrd takes: Debian's generic kernel's initrd
// holds ≈750 modules, 110 MiB (issue 19: a build's memory).
type initrdModules struct {
	meta  map[string][]byte
	spill *os.File
	spans map[string]span
	size  int64 // bytes in spill
}

type span struct{ off, n int64 }

func (f *initrdModules) has(name string) bool {
	_, ok := f.spans[name]
	return ok
}

// get returns a module's contents.
func (f *initrdModules) get(name string) ([]byte, error) {
	sp, ok := f.spans[name]
	if !ok {
		return nil, fmt.Errorf("initrd: %s: not read", name)
	}
	b := make([]byte, sp.n)
	if _, err := f.spill.ReadAt(b, sp.off); err != nil {
		return nil, fmt.Errorf("initrd: %s: %w", name, err)
	}
	return b, nil
}

// Close removes the spill file.
func (f *initrdModules) Close() error { return f.spill.Close() }

// cpioStore receives the files readCpio keeps.
type cpioStore interface {
	put(name string, size int64, r io.Reader) error
}

// mapStore keeps files in memory.
type mapStore map[string][]byte

func (m mapStore) put(name string, size int64, r io.Reader) error {
	data := make([]byte, size)
	if _, err := io.ReadFull(r, data); err != nil {
		return err
	}
	m[name] = data
	return nil
}

// readInitrd reads the kernel modules (*.ko) and module indexes of an
// initrd: concatenated newc cpio archives, uncompressed (early microcode)
// or compressed with gzip or zstd. Paths are without a leading slash. The
// modules' contents are spilled to an unlinked file in spillDir; the
// caller closes the result.
func readInitrd(p, spillDir string) (_ *initrdModules, err error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	spill, err := os.CreateTemp(spillDir, ".initrd-modules-*")
	if err != nil {
		return nil, err
	}
	os.Remove(spill.Name()) // gone with the last descriptor, even on a crash
	files := &initrdModules{meta: map[string][]byte{}, spill: spill, spans: map[string]span{}}
	defer func() {
		if err != nil {
			spill.Close()
		}
	}()
	bw := bufio.NewWriterSize(spill, 1<<20)
	store := &bufferedStore{files: files, w: bw}
	if err := readInitrdArchives(f, store); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	return files, nil
}

// bufferedStore keeps the module indexes in memory and appends the
// modules to the spill file through w (flushed by readInitrd before
// anything is read back).
type bufferedStore struct {
	files *initrdModules
	w     *bufio.Writer
	buf   []byte
}

func (b *bufferedStore) put(name string, size int64, r io.Reader) error {
	f := b.files
	if base := path.Base(name); base == "modules.dep" || base == "modules.builtin" {
		return mapStore(f.meta).put(name, size, r)
	}
	if b.buf == nil {
		b.buf = make([]byte, 64<<10)
	}
	// Not io.Copy: through bufio.Writer's ReadFrom and the file's, that
	// allocates a buffer per module.
	var n int64
	for n < size {
		m, err := r.Read(b.buf[:min(int64(len(b.buf)), size-n)])
		if m > 0 {
			if _, werr := b.w.Write(b.buf[:m]); werr != nil {
				return werr
			}
			n += int64(m)
		}
		if err == io.EOF && n < size {
			return io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			return err
		}
	}
	f.spans[name] = span{f.size, n}
	f.size += n
	return nil
}

// readInitrdArchives reads the archives of an initrd file into store.
func readInitrdArchives(f io.Reader, store cpioStore) error {
	// Streamed, not read whole: a distribution initrd is tens of MiB.
	br := bufio.NewReaderSize(f, 1<<20)
	cr := &countReader{r: br}
	keep := func(name string) bool {
		b := path.Base(name)
		return strings.Contains(name, "lib/modules/") &&
			(strings.Contains(b, ".ko") || b == "modules.dep" || b == "modules.builtin")
	}
	for {
		// NULs pad between archives.
		for {
			b, err := br.ReadByte()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if b != 0 {
				br.UnreadByte()
				break
			}
			cr.n++
		}
		magic, _ := br.Peek(4)
		switch {
		case bytes.HasPrefix(magic, []byte("0707")):
			if err := readCpio(cr, store, keep); err != nil {
				return err
			}
		case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
			zr, err := gzip.NewReader(br)
			if err != nil {
				return err
			}
			return readCpioStream(bufio.NewReaderSize(zr, 1<<20), store, keep)
		case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
			if err != nil {
				return err
			}
			defer zr.Close()
			return readCpioStream(bufio.NewReaderSize(zr, 1<<20), store, keep)
		default:
			return fmt.Errorf("%w: unknown compression at offset %d", errUnsupportedInitrd, cr.n)
		}
	}
}

// readCpioStream reads the archives of a decompressed stream (one or more
// concatenated, each ending with its trailer).
func readCpioStream(r io.Reader, files cpioStore, keep func(string) bool) error {
	cr := &countReader{r: r}
	for {
		if err := readCpio(cr, files, keep); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		// Padding between archives: NULs up to the next header.
		for {
			var b [1]byte
			if _, err := io.ReadFull(cr, b[:]); err != nil {
				return nil
			}
			if b[0] != 0 {
				cr.unread = b[:]
				break
			}
		}
	}
}

// readCpio reads one newc archive up to its trailer, keeping the contents
// of the regular files keep selects.
func readCpio(r *countReader, files cpioStore, keep func(string) bool) error {
	hdr := make([]byte, 110)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			if errors.Is(err, io.EOF) && r.n == 0 {
				return io.EOF
			}
			return fmt.Errorf("initrd: cpio header: %w", err)
		}
		if string(hdr[:5]) != "07070" {
			return fmt.Errorf("%w: not a newc cpio archive", errUnsupportedInitrd)
		}
		field := func(i int) int64 {
			v, _ := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			return int64(v)
		}
		mode, size, nameSize := field(1), field(6), field(11)
		name := make([]byte, nameSize)
		if _, err := io.ReadFull(r, name); err != nil {
			return fmt.Errorf("initrd: cpio name: %w", err)
		}
		r.skip(pad4(110 + nameSize))
		n := strings.TrimPrefix(strings.TrimRight(string(name), "\x00"), "./")
		if n == "TRAILER!!!" {
			return r.err
		}
		if mode&0o170000 == 0o100000 && keep(n) {
			if err := files.put(strings.TrimPrefix(n, "/"), size, r); err != nil {
				return fmt.Errorf("initrd: %s: %w", n, err)
			}
		} else {
			r.skip(size)
		}
		r.skip(pad4(size))
		if r.err != nil {
			return fmt.Errorf("initrd: %w", r.err)
		}
	}
}

func pad4(n int64) int64 { return (4 - n%4) % 4 }

// countReader counts what was read and can skip and push back bytes.
type countReader struct {
	r      io.Reader
	n      int64
	unread []byte
	err    error
}

func (c *countReader) Read(p []byte) (int, error) {
	if len(c.unread) > 0 {
		n := copy(p, c.unread)
		c.unread = c.unread[n:]
		c.n += int64(n)
		return n, nil
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countReader) skip(n int64) {
	if n <= 0 || c.err != nil {
		return
	}
	if _, err := io.CopyN(io.Discard, c, n); err != nil {
		c.err = err
	}
}
