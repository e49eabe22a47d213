package builder

// A dynamically linked ecs-image as the helper. `go build` and `go install`
// link with cgo (and so dynamically, against glibc) wherever a C compiler
// is found, while the Makefile builds static binaries with CGO_ENABLED=0.
// The helper runs as the initramfs's first process, where nothing of the
// build host exists: for a dynamic binary the initrd also carries its ELF
// interpreter (PT_INTERP) and the shared libraries it needs (DT_NEEDED,
// recursively), each at the path the interpreter searches, so the
// kernel's exec of /ecs-offline-helper finds them.

import (
	"debug/elf"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/ecs-image/ecs-image/builder/offlinehelper"
)

// helperProgram is what the initrd needs to run ecs-image as its first
// process.
type helperProgram struct {
	Exe string
	// Libs are the ELF interpreter and shared libraries of a dynamically
	// linked Exe (none for a static one).
	Libs []helperFile
}

// helperFile is a file of the host copied into the initrd.
type helperFile struct {
	Name string // path in the initrd, without a leading slash
	Src  string // the host's file (symlinks resolved when read)
}

// libSearchDirs are the directories glibc's loader searches without an
// ld.so.cache (the initramfs has none), Debian's multiarch ones first.
var libSearchDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// resolveHelper checks that exe can serve as the helper (an x86-64 Go
// executable) and lists what a dynamically linked exe needs besides.
func resolveHelper(exe string) (*helperProgram, error) {
	f, err := elf.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("offline helper: %s: %v", exe, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("offline helper: %s is not an x86-64 executable", exe)
	}
	if s := f.Section(".go.buildinfo"); s == nil {
		return nil, fmt.Errorf("offline helper: %s is not ecs-image", exe)
	}
	h := &helperProgram{Exe: exe}
	interp, err := elfInterp(f)
	if err != nil {
		return nil, fmt.Errorf("offline helper: %s: %v", exe, err)
	}
	if interp == "" {
		return h, nil // static
	}
	if _, err := os.Stat(interp); err != nil {
		return nil, fmt.Errorf("offline helper: %s is dynamically linked and its interpreter %s is missing: %v", exe, interp, err)
	}
	h.Libs = append(h.Libs, helperFile{Name: strings.TrimPrefix(path.Clean(interp), "/"), Src: interp})
	seen := map[string]bool{}
	var add func(f *elf.File, who string) error
	add = func(f *elf.File, who string) error {
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %v", who, err)
		}
		dirs := elfRunpath(f, filepath.Dir(who))
		for _, name := range needed {
			if seen[name] {
				continue
			}
			seen[name] = true
			p := findLib(name, dirs)
			if p == "" {
				return fmt.Errorf("%s needs %s, which is in none of %s (or build ecs-image with CGO_ENABLED=0)", who, name, strings.Join(append(dirs, libSearchDirs...), ", "))
			}
			if path.Clean(p) == path.Clean(interp) {
				continue
			}
			h.Libs = append(h.Libs, helperFile{Name: strings.TrimPrefix(path.Clean(p), "/"), Src: p})
			lf, err := elf.Open(p)
			if err != nil {
				return err
			}
			err = add(lf, p)
			lf.Close()
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := add(f, exe); err != nil {
		return nil, fmt.Errorf("offline helper: %v", err)
	}
	return h, nil
}

// elfInterp returns the PT_INTERP path of f, or "" for a static binary.
func elfInterp(f *elf.File) (string, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("PT_INTERP: %v", err)
		}
		return strings.TrimRight(string(b), "\x00"), nil
	}
	return "", nil
}

// elfRunpath returns f's DT_RUNPATH (else DT_RPATH) directories, $ORIGIN
// expanded to origin.
func elfRunpath(f *elf.File, origin string) []string {
	rp, _ := f.DynString(elf.DT_RUNPATH)
	if len(rp) == 0 {
		rp, _ = f.DynString(elf.DT_RPATH)
	}
	var dirs []string
	for _, s := range rp {
		for _, d := range strings.Split(s, ":") {
			d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
			if filepath.IsAbs(d) {
				dirs = append(dirs, filepath.Clean(d))
			}
		}
	}
	return dirs
}

// findLib finds the x86-64 shared library name in dirs, then in the
// loader's default directories.
func findLib(name string, dirs []string) string {
	if strings.Contains(name, "/") {
		return name
	}
	for _, d := range append(dirs, libSearchDirs...) {
		p := filepath.Join(d, name)
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		ok := f.Machine == elf.EM_X86_64 && f.Class == elf.ELFCLASS64
		f.Close()
		if ok {
			return p
		}
	}
	return ""
}

// write adds the helper (as offlinehelper.Name) and its libraries to w.
func (h *helperProgram) write(w *cpioWriter) error {
	for _, l := range h.Libs {
		w.mkdirs(l.Name)
		if err := w.fileFrom(l.Name, 0o755, l.Src); err != nil {
			return fmt.Errorf("offline helper: %v", err)
		}
	}
	return w.fileFrom(offlinehelper.Name, 0o755, h.Exe)
}
