package atomicfile

import (
	"bytes"
	"context"
	"errors"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

// entries lists the names in dir, so a test can see leftovers.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func checkFile(t *testing.T, path string, want string, mode fs.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s = %q, want %q", path, got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != mode {
		t.Errorf("%s: mode %v, want %v", path, st.Mode(), mode)
	}
}

func TestWriteReplacesAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.conf")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkFile(t, p, "new", 0o644)
	if n := entries(t, dir); len(n) != 1 {
		t.Errorf("directory holds %v, want only f.conf", n)
	}
}

func TestModeIgnoresUmask(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		umask int
		mode  fs.FileMode
	}{{0o077, 0o664}, {0o022, 0o666}, {0, 0o600}, {0o027, 0o640}} {
		old := syscall.Umask(c.umask)
		p := filepath.Join(dir, "w")
		err := Write(p, []byte("x"), c.mode)
		cp := filepath.Join(dir, "c")
		if err == nil {
			err = Copy(p, cp, c.mode)
		}
		syscall.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		checkFile(t, p, "x", c.mode)
		checkFile(t, cp, "x", c.mode)
	}
}

// TestCrashMidWrite kills a process (this test binary, re-run as a helper)
// in the middle of writing a file: the path must not exist afterwards, and
// an existing file must keep its old content.
func TestCrashMidWrite(t *testing.T) {
	if p := os.Getenv("ATOMICFILE_CRASH_PATH"); p != "" {
		f, err := Create(p, 0o644)
		if err != nil {
			os.Exit(3)
		}
		f.Write(bytes.Repeat([]byte("half"), 1<<16))
		f.Sync()
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	dir := t.TempDir()
	fresh := filepath.Join(dir, "fresh")
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fresh, existing} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashMidWrite$")
		cmd.Env = append(os.Environ(), "ATOMICFILE_CRASH_PATH="+p)
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("helper process: %v, want killed by SIGKILL", err)
		}
	}
	if _, err := os.Lstat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after a crash mid-write %s exists (err %v)", fresh, err)
	}
	checkFile(t, existing, "old", 0o644)
	// What is left is only hidden temporary files beside the targets.
	for _, n := range entries(t, dir) {
		if n != "existing" && !strings.HasPrefix(n, ".") {
			t.Errorf("unexpected file %s after crash", n)
		}
	}
}

func TestNoClobber(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "env.yml")
	if err := os.WriteFile(p, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Write(p, []byte("theirs"), 0o600, NoClobber())
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Write over an existing file with NoClobber: err = %v, want fs.ErrExist", err)
	}
	checkFile(t, p, "mine", 0o600)
	if err := Copy(p, p, 0o600, NoClobber()); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Copy onto an existing file with NoClobber: err = %v, want fs.ErrExist", err)
	}

	// The path appears between Create and Commit: still refused.
	q := filepath.Join(dir, "late.yml")
	f, err := Create(q, 0o600, NoClobber())
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("theirs")
	if err := os.WriteFile(q, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Commit after the path appeared: err = %v, want fs.ErrExist", err)
	}
	checkFile(t, q, "mine", 0o600)
	if n := entries(t, dir); len(n) != 2 {
		t.Errorf("directory holds %v, want env.yml and late.yml only", n)
	}

	// A new path is written.
	r := filepath.Join(dir, "new.yml")
	if err := Write(r, []byte("new"), 0o600, NoClobber()); err != nil {
		t.Fatal(err)
	}
	checkFile(t, r, "new", 0o600)
	if n := entries(t, dir); len(n) != 3 {
		t.Errorf("directory holds %v, want 3 files, no temporary one", n)
	}
}

func TestKeepOwner(t *testing.T) {
	testenv.Root(t, "changing a file's owner")
	dir := t.TempDir()
	p := filepath.Join(dir, "pg_hba.conf")
	if err := os.WriteFile(p, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	owner := func(p string) (uint32, uint32) {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		s := st.Sys().(*syscall.Stat_t)
		return s.Uid, s.Gid
	}
	if err := Write(p, []byte("new"), 0o640, KeepOwner()); err != nil {
		t.Fatal(err)
	}
	checkFile(t, p, "new", 0o640)
	if u, g := owner(p); u != 1234 || g != 5678 {
		t.Errorf("with KeepOwner the owner is %d:%d, want 1234:5678", u, g)
	}
	// Set-id bits survive the chown (Chmod comes after it).
	if err := Write(p, []byte("newer"), 0o750|fs.ModeSetgid, KeepOwner()); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode()&fs.ModeSetgid == 0 {
		t.Errorf("mode %v lost setgid", st.Mode())
	}
	// Without the option the writer owns the new file.
	if err := Write(p, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	if u, g := owner(p); u != 0 || g != 0 {
		t.Errorf("without KeepOwner the owner is %d:%d, want 0:0", u, g)
	}
	// A new file with KeepOwner is simply the writer's.
	n := filepath.Join(dir, "new")
	if err := Write(n, []byte("x"), 0o600, KeepOwner()); err != nil {
		t.Fatal(err)
	}
	if u, g := owner(n); u != 0 || g != 0 {
		t.Errorf("new file with KeepOwner: owner %d:%d, want 0:0", u, g)
	}
}

func TestAbortAndMissingDir(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out")
	f, err := Create(p, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("partial")
	if err := f.Abort(); err != nil {
		t.Fatal(err)
	}
	if n := entries(t, dir); len(n) != 0 {
		t.Errorf("after Abort the directory holds %v", n)
	}
	if err := f.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}

	deep := filepath.Join(dir, "a", "b", "c")
	if err := Write(deep, []byte("x"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Write into a missing directory: err = %v, want fs.ErrNotExist", err)
	}
	if err := Write(deep, []byte("x"), 0o600, MkdirAll(0o700)); err != nil {
		t.Fatal(err)
	}
	checkFile(t, deep, "x", 0o600)
	if st, _ := os.Stat(filepath.Dir(deep)); st.Mode().Perm() != 0o700&^fs.FileMode(umask()) {
		t.Errorf("created directory mode %v", st.Mode())
	}
}

func umask() int {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return m
}

func TestTempPattern(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(filepath.Join(dir, "a.json"), 0o644, TempPattern(".mine-*"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	if b := filepath.Base(f.Name()); !strings.HasPrefix(b, ".mine-") {
		t.Errorf("temporary file %s does not follow the pattern", b)
	}
	if filepath.Dir(f.Name()) != dir {
		t.Errorf("temporary file %s is not beside the target", f.Name())
	}
}

func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	data := bytes.Repeat([]byte("0123456789"), 100000)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := Copy(src, dst, 0o644); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst, string(data), 0o644)
	if err := Copy(filepath.Join(dir, "missing"), dst, 0o644); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Copy of a missing file: err = %v", err)
	}
	checkFile(t, dst, string(data), 0o644)
	if err := Copy(src, dst+"2", 0o640, NoSync()); err != nil {
		t.Fatal(err)
	}
	checkFile(t, dst+"2", string(data), 0o640)
}

func TestSHA256File(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "abc")
	if err := os.WriteFile(p, []byte("abc"), 0o600); err != nil {
		t.Fatal(err)
	}
	sum, n, err := SHA256File(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; sum != want || n != 3 {
		t.Errorf("SHA256File = %s, %d; want %s, 3", sum, n, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := SHA256File(ctx, p); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v, want context.Canceled", err)
	}
	if _, _, err := SHA256File(context.Background(), filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

// TestImportsNothingFromTheModule keeps the package usable by the in-VM
// agent and every other package: it must not import this module's code.
func TestImportsNothingFromTheModule(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(p, "github.com/ecs-image/ecs-image/") {
				t.Errorf("%s imports %s", fset.Position(imp.Pos()), p)
			}
		}
	}
}

func TestMkdirAllUndo(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "a", "b", "c")
	undo, err := MkdirAllUndo(dir, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(root, "a"), filepath.Join(root, "a", "b"), dir} {
		st, err := os.Stat(p)
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v %v", p, st, err)
		}
	}
	undo()
	if _, err := os.Stat(filepath.Join(root, "a")); !os.IsNotExist(err) {
		t.Fatalf("undo left %s: %v", filepath.Join(root, "a"), err)
	}

	// An existing directory is kept by undo, as is one that got content.
	undo, err = MkdirAllUndo(filepath.Join(root, "x", "y"), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "x", "keep"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	undo()
	if _, err := os.Stat(filepath.Join(root, "x", "y")); !os.IsNotExist(err) {
		t.Fatalf("empty y kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "x", "keep")); err != nil {
		t.Fatalf("non-empty x removed: %v", err)
	}
	undo, err = MkdirAllUndo(root, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	undo()
	if _, err := os.Stat(root); err != nil {
		t.Fatal(err)
	}

	// A file in the way is an error.
	f := filepath.Join(root, "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := MkdirAllUndo(filepath.Join(f, "sub"), 0o700); err == nil || !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("file in the way: %v", err)
	}
}

// TestRefusesNonRegularTargets: an output that is a device node, a fifo, a
// directory or a symlink to one of them is left alone (issue 13: `cidata -o
// /dev/sdb` replaced the device node by a file of secrets).
func TestRefusesNonRegularTargets(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(fifo, link)
	targets := []string{fifo, sub, link}
	dev := filepath.Join(dir, "full")
	if err := syscall.Mknod(dev, syscall.S_IFCHR|0o666, 1<<8|7); err == nil {
		targets = append(targets, dev)
	}
	for _, p := range targets {
		before, _ := os.Lstat(p)
		if err := Write(p, []byte("secret"), 0o600); !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), p) {
			t.Errorf("Write(%s) = %v, want ErrNotRegular naming it", p, err)
		}
		if err := CheckTarget(p); !errors.Is(err, ErrNotRegular) {
			t.Errorf("CheckTarget(%s) = %v", p, err)
		}
		after, err := os.Lstat(p)
		if err != nil || after.Mode() != before.Mode() {
			t.Errorf("%s replaced: %v %v", p, after, err)
		}
	}
	// Committing after the target became a fifo is refused too.
	late := filepath.Join(dir, "late")
	f, err := Create(late, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Mkfifo(late, 0o600)
	if err := f.Commit(); !errors.Is(err, ErrNotRegular) {
		t.Errorf("Commit over a fifo = %v", err)
	}
	// A symlink to a regular file, a dangling one and a missing path are fine.
	reg := filepath.Join(dir, "reg")
	os.WriteFile(reg, nil, 0o600)
	ok := filepath.Join(dir, "ok-link")
	os.Symlink(reg, ok)
	dangling := filepath.Join(dir, "dangling")
	os.Symlink(filepath.Join(dir, "nowhere"), dangling)
	for _, p := range []string{ok, dangling, filepath.Join(dir, "new")} {
		if err := Write(p, []byte("x"), 0o600); err != nil {
			t.Errorf("Write(%s) = %v", p, err)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}
