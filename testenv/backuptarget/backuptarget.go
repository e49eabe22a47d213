// Package backuptarget runs, for tests, the backup targets the appliance's
// backup writes to, on the build host's loopback: versitygw as the S3
// server and OpenSSH's sshd as the sftp server. The agent's host tests
// (agent/prepare) and the appliance's VM test (integration, whose guest
// reaches the host's loopback at 10.0.2.2 through QEMU's user networking)
// share them. A missing server program skips the test, or fails it in CI
// (package testenv). Everything started is stopped when the test ends; the
// server's log is shown when the test failed.
package backuptarget

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/testenv"
)

// The S3 server's key pair and bucket.
const (
	S3Access = "ecsbackupkey"
	S3Secret = "ecsbackupsecret"
	S3Bucket = "backups"
	// VersitygwInstall is how `make deps` installs versitygw.
	VersitygwInstall = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"
)

// S3 is a running versitygw.
type S3 struct {
	// Port is its loopback port.
	Port int
	// Root is the posix backend's directory: Root/S3Bucket holds the
	// bucket's objects as files.
	Root string
}

// Endpoint is the S3 endpoint URL on the host.
func (s S3) Endpoint() string { return fmt.Sprintf("http://127.0.0.1:%d", s.Port) }

// StartS3 runs versitygw (posix backend, key pair S3Access/S3Secret) on a
// free loopback port with the bucket S3Bucket created.
func StartS3(t testing.TB) S3 {
	t.Helper()
	bin := testenv.Tool(t, "versitygw", VersitygwInstall)
	addr := FreeAddr(t)
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, S3Bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	start(t, "versitygw", exec.Command(bin, "--access", S3Access, "--secret", S3Secret, "--port", addr, "--quiet",
		"posix", "--sidecar", t.TempDir(), root))
	WaitTCP(t, addr)
	_, port, _ := net.SplitHostPort(addr)
	s := S3{Root: root}
	fmt.Sscan(port, &s.Port)
	return s
}

// SFTP is a running sshd accepting root with one client key (public key
// authentication only), with internal-sftp.
type SFTP struct {
	// Port is its loopback port.
	Port int
	// HostKey is its host key as in known_hosts: "ssh-ed25519 AAAA…".
	HostKey string
	// ClientKey is the path of the client's private key (0600).
	ClientKey string
}

// KnownHosts is the known_hosts line of the server as a client reaching it
// at host (127.0.0.1, or 10.0.2.2 from a QEMU guest) names it.
func (s SFTP) KnownHosts(host string) string {
	return fmt.Sprintf("[%s]:%d %s", host, s.Port, s.HostKey)
}

// StartSSHD runs OpenSSH's sshd on a free loopback port with fresh host and
// client keys (ed25519).
func StartSSHD(t testing.TB) SFTP {
	t.Helper()
	sshd := testenv.File(t, "/usr/sbin/sshd", "make deps: openssh-server")
	testenv.Tools(t, "ssh-keygen")
	dir, err := os.MkdirTemp("", "ecs-sshd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, k := range []string{"host", "client"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k), "-C", k).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	conf := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %[2]s/host
PidFile %[2]s/sshd.pid
AuthorizedKeysFile %[2]s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
`, port, dir)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// sshd's privilege separation directory.
	os.MkdirAll("/run/sshd", 0o755)
	start(t, "sshd", exec.Command(sshd, "-D", "-e", "-f", filepath.Join(dir, "sshd_config")))
	WaitTCP(t, addr)
	hostPub, err := os.ReadFile(filepath.Join(dir, "host.pub"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(hostPub))
	s := SFTP{HostKey: f[0] + " " + f[1], ClientKey: filepath.Join(dir, "client")}
	fmt.Sscan(port, &s.Port)
	return s
}

// start runs cmd until the test ends, its output logged if the test failed.
func start(t testing.TB, name string, cmd *exec.Cmd) {
	t.Helper()
	var log syncBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", name, log.String())
		}
	})
}

// FreeAddr returns a free loopback address (127.0.0.1:PORT).
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// WaitTCP waits up to 20 s until addr accepts connections.
func WaitTCP(t testing.TB, addr string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s", addr)
		}
	}
}

// syncBuffer is a log safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
