// Package testenv decides what a test does when a part it needs is missing:
// a tool, a file, a device or a privilege. Outside CI the test is skipped
// (a developer machine need not have everything); in CI (CI set to anything
// but "", "0" or "false", as .ci/run does) it fails, because `make deps` and
// the CI host provide every part, so a missing one is a broken CI, not a
// reason to pass silently.
package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// CI reports whether the tests run in CI.
func CI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "0" && v != "false"
}

// Missing reports a part the test needs and does not have: it fails the
// test in CI and skips it elsewhere. It does not return.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatal(msg + " (CI must provide it: a missing part fails in CI)")
	}
	t.Skip(msg)
}

// Tool returns the path of the program name, looked up in PATH and then in
// the directories `go install` writes to ($GOBIN, $GOPATH/bin, ~/go/bin).
// Without it the test is skipped, in CI it fails; hint says how to install
// it (e.g. "make deps").
func Tool(t testing.TB, name, hint string) string {
	t.Helper()
	if p, err := lookTool(name); err == nil {
		return p
	}
	Missing(t, "%s is not installed (%s)", name, hint)
	return ""
}

// Tools is Tool for several programs that make deps installs.
func Tools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		Tool(t, n, "make deps")
	}
}

// File returns path when it exists, and otherwise reports it as missing.
func File(t testing.TB, path, hint string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Missing(t, "%v (%s)", err, hint)
	}
	return path
}

// Root reports a test that needs root as missing when it is not root.
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "%s needs root", why)
	}
}

func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if d := os.Getenv("GOPATH"); d != "" {
		dirs = append(dirs, filepath.Join(filepath.SplitList(d)[0], "bin"))
	}
	if home, herr := os.UserHomeDir(); herr == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		c := filepath.Join(d, name)
		if fi, serr := os.Stat(c); serr == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", err
}

// VersityGW starts a real versitygw (S3 gateway, posix backend in a temp
// dir, the given buckets) on a loopback port and returns its endpoint, with
// AWS credentials set in the environment. It stops with the test.
// Install: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
func VersityGW(t testing.TB, buckets ...string) string {
	t.Helper()
	bin := Tool(t, "versitygw", "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	root := t.TempDir()
	for _, b := range buckets {
		os.Mkdir(filepath.Join(root, b), 0o755) // posix backend: a top-level directory is a bucket
	}
	sidecar := t.TempDir()
	const ak, sk = "ecsimagetest", "ecsimagetestsecret"
	cmd := exec.Command(bin, "--access", ak, "--secret", sk, "--port", addr, "--quiet", "posix", "--sidecar", sidecar, root)
	logf, _ := os.Create(filepath.Join(t.TempDir(), "versitygw.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("versitygw log:\n%s", b)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not listen on %s", addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", ak)
	t.Setenv("AWS_SECRET_ACCESS_KEY", sk)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(root, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(root, "none"))
	return "http://" + addr
}
