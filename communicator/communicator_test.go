package communicator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func setup(t *testing.T) (*Client, *testServer) {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	srv := newTestServer(t, key.Signer.PublicKey())
	c, err := Dial(context.Background(), srv.Addr, "builder", key.Signer, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, srv
}

func TestGenerateKey(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(k.AuthorizedKey))
	if err != nil || comment != "ecs-image" || pub.Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("authorized key %q: %v %q", k.AuthorizedKey, err, comment)
	}
	if string(pub.Marshal()) != string(k.Signer.PublicKey().Marshal()) {
		t.Error("authorized key does not match the signer")
	}
	parsed, err := ssh.ParsePrivateKey(k.PrivatePEM)
	if err != nil || string(parsed.PublicKey().Marshal()) != string(pub.Marshal()) {
		t.Errorf("private PEM: %v", err)
	}
	k2, _ := GenerateKey()
	if k2.AuthorizedKey == k.AuthorizedKey {
		t.Error("two keys are equal")
	}
}

func TestDialRetriesUntilKeyAccepted(t *testing.T) {
	old := dialRetry
	dialRetry = 100 * time.Millisecond
	defer func() { dialRetry = old }()
	key, _ := GenerateKey()
	srv := newTestServer(t, key.Signer.PublicKey())
	srv.rejectFirst.Store(3)
	c, err := Dial(context.Background(), srv.Addr, "builder", key.Signer, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := srv.auths.Load(); n < 4 {
		t.Errorf("%d authentications, want ≥ 4", n)
	}
}

func TestDialTimeoutAndAbort(t *testing.T) {
	old := dialRetry
	dialRetry = 100 * time.Millisecond
	defer func() { dialRetry = old }()
	key, _ := GenerateKey()
	// A port nobody listens on.
	srv := newTestServer(t, key.Signer.PublicKey())
	addr := srv.Addr
	srv.l.Close()

	start := time.Now()
	_, err := Dial(context.Background(), addr, "u", key.Signer, time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "not reachable within 1s") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("timeout err = %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timeout took %s", d)
	}

	abort := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() { close(abort) })
	start = time.Now()
	_, err = Dial(context.Background(), addr, "u", key.Signer, time.Minute, abort)
	if !errors.Is(err, ErrAborted) {
		t.Errorf("abort err = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("abort took %s", d)
	}

	// A wrong key never gets in.
	other, _ := GenerateKey()
	srv2 := newTestServer(t, key.Signer.PublicKey())
	_, err = Dial(context.Background(), srv2.Addr, "u", other.Signer, 500*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("wrong key err = %v", err)
	}
}

func TestRunExitCodesEnvSudo(t *testing.T) {
	c, _ := setup(t)
	ctx := context.Background()
	code, err := c.Run(ctx, "true", RunOptions{})
	if code != 0 || err != nil {
		t.Errorf("true: %d %v", code, err)
	}
	code, err = c.Run(ctx, "exit 3", RunOptions{})
	var ee *ExitError
	if code != 3 || !errors.As(err, &ee) || ee.Code != 3 {
		t.Errorf("exit 3: %d %v", code, err)
	}
	val := `it's "quoted" $HOME; rm -rf /nope`
	out, err := c.Output(ctx, `printf '%s|%s' "$SECRET" "$SECOND"`, false)
	if err != nil || out != "|" {
		t.Errorf("unset env: %q %v", out, err)
	}
	var lines []string
	_, err = c.Run(ctx, `printf '%s|%s\n' "$SECRET" "$SECOND"`, RunOptions{
		Env:    map[string]string{"SECRET": val, "SECOND": "2", "bad-name": "x"},
		Stdout: func(l string) { lines = append(lines, l) },
	})
	if err != nil || len(lines) != 1 || lines[0] != val+"|2" {
		t.Errorf("env: %q %v", lines, err)
	}
	// Sudo goes through sudo -n (sudo sets SUDO_USER).
	out, err = c.Output(ctx, `echo "$(id -u) ${SUDO_USER:-nosudo}"`, true)
	if err != nil || strings.TrimSpace(out) != "0 root" {
		t.Errorf("sudo: %q %v", out, err)
	}
	out, _ = c.Output(ctx, `echo "${SUDO_USER:-nosudo}"`, false)
	if strings.TrimSpace(out) != "nosudo" {
		t.Errorf("without sudo: %q", out)
	}
	// Output reports stderr on failure.
	_, err = c.Output(ctx, "echo boom >&2; exit 1", false)
	if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "status 1") {
		t.Errorf("Output err = %v", err)
	}
}

func TestRunStreamsLines(t *testing.T) {
	c, _ := setup(t)
	var mu sync.Mutex
	type ev struct {
		stream, line string
		at           time.Time
	}
	var evs []ev
	add := func(s string) func(string) {
		return func(l string) { mu.Lock(); evs = append(evs, ev{s, l, time.Now()}); mu.Unlock() }
	}
	start := time.Now()
	_, err := c.Run(context.Background(), "echo one; echo err1 >&2; sleep 1; printf 'two\\r\\nlast-no-newline'", RunOptions{Stdout: add("out"), Stderr: add("err")})
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	var out, errs []string
	for _, e := range evs {
		if e.stream == "out" {
			out = append(out, e.line)
		} else {
			errs = append(errs, e.line)
		}
	}
	if strings.Join(out, ",") != "one,two,last-no-newline" || strings.Join(errs, ",") != "err1" {
		t.Fatalf("out %q err %q", out, errs)
	}
	// "one" arrived while the command was still sleeping.
	if evs[0].at.Sub(start) > end.Sub(start)-500*time.Millisecond {
		t.Errorf("first line at %s of %s: not streamed", evs[0].at.Sub(start), end.Sub(start))
	}
}

func TestRunCancel(t *testing.T) {
	c, _ := setup(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Run(ctx, "echo $$ > "+pidFile+"; exec sleep 30", RunOptions{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %s", d)
	}
	// The remote command was killed.
	b, _ := os.ReadFile(pidFile)
	var pid int
	for _, ch := range strings.TrimSpace(string(b)) {
		pid = pid*10 + int(ch-'0')
	}
	deadline := time.Now().Add(5 * time.Second)
	for pid > 0 && syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if pid == 0 || syscall.Kill(pid, 0) == nil {
		t.Errorf("remote process %d still running", pid)
	}
	// The connection still works.
	if _, err := c.Run(context.Background(), "true", RunOptions{}); err != nil {
		t.Error(err)
	}
}

func writeTree(t *testing.T) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "tree")
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "sub", "deeper"), 0o755))
	must(os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(src, "sub", "conf"), []byte("a=1\n"), 0o600))
	must(os.WriteFile(filepath.Join(src, "sub", "deeper", "data"), make([]byte, 100000), 0o644))
	must(os.Symlink("sub/conf", filepath.Join(src, "link")))
	return src
}

func checkMode(t *testing.T, p string, want os.FileMode) {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Error(err)
		return
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s: mode %o, want %o", p, st.Mode().Perm(), want)
	}
}

func checkOwner(t *testing.T, p string, uid, gid uint32) {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Error(err)
		return
	}
	s := st.Sys().(*syscall.Stat_t)
	if s.Uid != uid || s.Gid != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, s.Uid, s.Gid, uid, gid)
	}
}

func TestUploadFileAndDir(t *testing.T) {
	c, _ := setup(t)
	ctx := context.Background()
	dst := t.TempDir()
	src := filepath.Join(t.TempDir(), "app.conf")
	os.WriteFile(src, []byte("secret=1\n"), 0o644)

	// A file, into directories that do not exist yet, with a mode.
	remote := filepath.Join(dst, "etc", "app", "app.conf")
	if err := c.Upload(ctx, src, remote, UploadOptions{Mode: 0o640}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(remote); string(b) != "secret=1\n" {
		t.Errorf("content %q", b)
	}
	checkMode(t, remote, 0o640)
	// Uploading again overwrites.
	os.WriteFile(src, []byte("v2\n"), 0o644)
	if err := c.Upload(ctx, src, remote, UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(remote); string(b) != "v2\n" {
		t.Errorf("overwrite: %q", b)
	}
	checkMode(t, remote, 0o644)

	// A directory keeps the local modes and links.
	tree := writeTree(t)
	rdir := filepath.Join(dst, "opt", "tree")
	if err := c.Upload(ctx, tree, rdir, UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	checkMode(t, filepath.Join(rdir, "run.sh"), 0o755)
	checkMode(t, filepath.Join(rdir, "sub", "conf"), 0o600)
	if st, err := os.Stat(filepath.Join(rdir, "sub", "deeper", "data")); err != nil || st.Size() != 100000 {
		t.Errorf("data: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(rdir, "link")); err != nil || l != "sub/conf" {
		t.Errorf("link %q %v", l, err)
	}
	// Mode applies to every file of a directory.
	rdir2 := filepath.Join(dst, "opt", "tree2")
	if err := c.Upload(ctx, tree, rdir2, UploadOptions{Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	checkMode(t, filepath.Join(rdir2, "run.sh"), 0o600)
	checkMode(t, filepath.Join(rdir2, "sub"), 0o755)

	if err := c.Upload(ctx, filepath.Join(dst, "missing"), "/tmp/x", UploadOptions{}); err == nil {
		t.Error("missing local file accepted")
	}
	if err := c.Upload(ctx, src, "/tmp/x", UploadOptions{Owner: "bad owner;rm"}); err == nil {
		t.Error("bad owner accepted")
	}
}

func TestUploadSudoOwner(t *testing.T) {
	c, _ := setup(t)
	ctx := context.Background()
	before, _ := filepath.Glob("/tmp/ecs-upload.*")
	dst := t.TempDir()
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("x"), 0o644)
	remote := filepath.Join(dst, "srv", "f")
	if err := c.Upload(ctx, src, remote, UploadOptions{Owner: "nobody:nogroup", Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	checkOwner(t, remote, 65534, 65534)
	checkMode(t, remote, 0o600)

	tree := writeTree(t)
	rdir := filepath.Join(dst, "app")
	os.MkdirAll(rdir, 0o755)
	os.WriteFile(filepath.Join(rdir, "existing"), []byte("keep"), 0o644)
	if err := c.Upload(ctx, tree, rdir, UploadOptions{Owner: "nobody"}); err != nil {
		t.Fatal(err)
	}
	checkOwner(t, filepath.Join(rdir, "sub", "deeper", "data"), 65534, 0)
	checkOwner(t, filepath.Join(rdir, "link"), 65534, 0)
	checkMode(t, filepath.Join(rdir, "run.sh"), 0o755)
	checkOwner(t, filepath.Join(rdir, "existing"), 0, 0)
	if b, _ := os.ReadFile(filepath.Join(rdir, "existing")); string(b) != "keep" {
		t.Error("merge lost an existing file")
	}

	// Sudo without an owner installs as root:root.
	os.Chown(src, 65534, 65534)
	if err := c.Upload(ctx, src, filepath.Join(dst, "root-owned"), UploadOptions{Sudo: true}); err != nil {
		t.Fatal(err)
	}
	checkOwner(t, filepath.Join(dst, "root-owned"), 0, 0)

	// No staging directory is left behind.
	after, _ := filepath.Glob("/tmp/ecs-upload.*")
	if len(after) != len(before) {
		t.Errorf("staging dirs left: %v", after)
	}
	// A failing install reports why.
	os.WriteFile(filepath.Join(dst, "afile"), nil, 0o644)
	err := c.Upload(ctx, src, filepath.Join(dst, "afile", "below"), UploadOptions{Sudo: true})
	if err == nil || !strings.Contains(err.Error(), "install") {
		t.Errorf("err = %v", err)
	}
}

func TestDownload(t *testing.T) {
	c, _ := setup(t)
	ctx := context.Background()
	tree := writeTree(t)
	local := filepath.Join(t.TempDir(), "copy")
	if err := c.Download(ctx, tree, local); err != nil {
		t.Fatal(err)
	}
	checkMode(t, filepath.Join(local, "run.sh"), 0o755)
	checkMode(t, filepath.Join(local, "sub", "conf"), 0o600)
	if b, _ := os.ReadFile(filepath.Join(local, "sub", "conf")); string(b) != "a=1\n" {
		t.Errorf("conf %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(local, "link")); l != "sub/conf" {
		t.Errorf("link %q", l)
	}
	if err := c.Download(ctx, tree, local); err == nil {
		t.Error("download over an existing directory accepted")
	}
	f := filepath.Join(t.TempDir(), "one")
	if err := c.Download(ctx, filepath.Join(tree, "run.sh"), f); err != nil {
		t.Fatal(err)
	}
	checkMode(t, f, 0o755)
	if err := c.Download(ctx, "/nonexistent/x", f+"2"); err == nil {
		t.Error("missing remote accepted")
	}
	if _, err := os.Stat(f + "2"); !os.IsNotExist(err) {
		t.Error("failed download left a file")
	}
}

func TestCommandQuoting(t *testing.T) {
	got := Command("echo $A", map[string]string{"A": "x'y", "B": ""}, true)
	want := `sudo -n -H /bin/sh -c 'export A='\''x'\''\'\'''\''y'\''` + "\n" + `export B='\'''\''` + "\n" + `echo $A'`
	if got != want {
		t.Errorf("Command =\n%s\nwant\n%s", got, want)
	}
}

func TestKeepaliveClosesDeadConnection(t *testing.T) {
	oldI, oldD := keepaliveInterval, keepaliveDead
	keepaliveInterval, keepaliveDead = 50*time.Millisecond, 400*time.Millisecond
	defer func() { keepaliveInterval, keepaliveDead = oldI, oldD }()
	c, srv := setup(t)
	// Answered keepalives keep the connection up.
	if _, err := c.Run(context.Background(), "sleep 1", RunOptions{}); err != nil {
		t.Fatalf("healthy connection: %v", err)
	}
	srv.stall.Store(true)
	start := time.Now()
	_, err := c.Run(context.Background(), "sleep 20", RunOptions{})
	if err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("command on a dead connection: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("noticed after %s", d)
	}
}
