package communicator

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// testServer is a real SSH server (x/crypto/ssh) running in the test
// process: it authenticates one public key, runs "exec" requests with
// /bin/sh on this host, and serves the "sftp" subsystem with pkg/sftp.
type testServer struct {
	Addr string
	// rejectFirst makes the first n authentications fail, like a guest
	// whose cloud-init has not installed the key yet.
	rejectFirst atomic.Int32
	// stall stops answering global requests (keepalives), like a frozen VM.
	stall atomic.Bool
	auths atomic.Int32
	l     net.Listener
	wg    sync.WaitGroup
}

func newTestServer(t *testing.T, authorized ssh.PublicKey) *testServer {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostKey, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			n := s.auths.Add(1)
			if n <= s.rejectFirst.Load() {
				return nil, io.EOF
			}
			if !bytes.Equal(key.Marshal(), authorized.Marshal()) {
				return nil, io.EOF
			}
			return &ssh.Permissions{}, nil
		},
	}
	cfg.AddHostKey(hostKey)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.l, s.Addr = l, l.Addr().String()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c, cfg)
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return s
}

func (s *testServer) serve(c net.Conn, cfg *ssh.ServerConfig) {
	conn, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer conn.Close()
	go func() {
		for req := range reqs {
			if req.WantReply && !s.stall.Load() {
				req.Reply(false, nil)
			}
		}
	}()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go session(ch, creqs)
	}
}

func session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	var cmd *exec.Cmd
	var mu sync.Mutex
	var exited atomic.Bool
	for req := range reqs {
		switch req.Type {
		case "exec":
			var p struct{ Command string }
			ssh.Unmarshal(req.Payload, &p)
			req.Reply(true, nil)
			mu.Lock()
			cmd = exec.Command("/bin/sh", "-c", p.Command)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			err := cmd.Start()
			mu.Unlock()
			go func() {
				status := uint32(127)
				if err == nil {
					err = cmd.Wait()
					exited.Store(true)
					status = uint32(cmd.ProcessState.ExitCode())
					if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
						status = 128 + uint32(ws.Signal())
					}
				}
				b := make([]byte, 4)
				binary.BigEndian.PutUint32(b, status)
				ch.SendRequest("exit-status", false, b)
				ch.Close()
			}()
		case "subsystem":
			var p struct{ Name string }
			ssh.Unmarshal(req.Payload, &p)
			if p.Name != "sftp" {
				req.Reply(false, nil)
				continue
			}
			req.Reply(true, nil)
			go func() {
				srv, err := sftp.NewServer(ch)
				if err == nil {
					srv.Serve()
				}
				ch.Close()
			}()
		case "signal":
			mu.Lock()
			if cmd != nil && cmd.Process != nil {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
			mu.Unlock()
		default:
			req.Reply(false, nil)
		}
	}
	// The client closed the session: stop what still runs.
	mu.Lock()
	if cmd != nil && cmd.Process != nil && !exited.Load() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	mu.Unlock()
}
