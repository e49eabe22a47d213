// Package communicator talks to a build or test VM over SSH: it waits for
// the guest's sshd, runs commands with their output streamed line by line,
// and uploads or downloads files and directories over SFTP.
//
// Host keys are not verified (ssh.InsecureIgnoreHostKey): the guest is an
// ephemeral VM started by ecs-image a moment before, reachable only on a
// host loopback port forwarded by QEMU's user-mode network, and its host
// keys are generated at its first boot, so there is no known key to pin.
// The client authenticates with an ephemeral key (GenerateKey) that the
// generalise step removes from the image.
package communicator

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/ssh"
)

// Key is an ephemeral ed25519 key pair.
type Key struct {
	Signer ssh.Signer
	// AuthorizedKey is the public key in authorized_keys format, without
	// a trailing newline ("ssh-ed25519 AAAA… ecs-image").
	AuthorizedKey string
	// PrivatePEM is the private key in OpenSSH PEM format (for `ssh -i`).
	PrivatePEM []byte
}

// GenerateKey makes a new ephemeral ed25519 key pair.
func GenerateKey() (*Key, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "ecs-image")
	if err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " ecs-image"
	return &Key{Signer: signer, AuthorizedKey: authorized, PrivatePEM: pem.EncodeToMemory(block)}, nil
}

// Client is an SSH connection to a guest.
type Client struct {
	Addr string
	User string

	conn *ssh.Client

	lostMu sync.Mutex
	lost   error // why keepalive closed the connection

	sftpOnce sync.Once
	sftp     *sftp.Client
	sftpErr  error
}

// ErrAborted is returned by Dial when its abort channel fires (e.g. QEMU
// exited while the guest was booting).
var ErrAborted = errors.New("aborted while waiting for SSH")

// Retry pacing of Dial.
var (
	dialRetry        = 2 * time.Second
	handshakeTimeout = 30 * time.Second
)

// Dial connects to addr as user with the signer's key, retrying (the guest
// may still be booting, or cloud-init may not have installed the key yet)
// until it succeeds, timeout passes, ctx ends, or abort is closed. abort
// may be nil. The error after a timeout carries the last connection error.
func Dial(ctx context.Context, addr, user string, signer ssh.Signer, timeout time.Duration, abort <-chan struct{}) (*Client, error) {
	cfg := &ssh.ClientConfig{
		User: user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		// Ephemeral VM on a loopback forward: see the package doc.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout:         handshakeTimeout,
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var last error
	for attempt := 1; ; attempt++ {
		c, err := dialOnce(ctx, addr, cfg, abort)
		if err == nil {
			logrus.Debugf("ssh %s@%s: connected after %s (%d attempts)", user, addr, time.Since(start).Round(100*time.Millisecond), attempt)
			cl := &Client{Addr: addr, User: user, conn: c}
			go cl.keepalive(keepaliveInterval, keepaliveDead)
			return cl, nil
		}
		if errors.Is(err, ErrAborted) {
			return nil, err
		}
		if ctx.Err() != nil && last != nil {
			// The attempt was cut by the deadline: the previous error
			// says more about why the guest is not reachable.
			err = last
		}
		if last == nil || last.Error() != err.Error() {
			logrus.Debugf("ssh %s@%s: %v (retrying)", user, addr, err)
		}
		last = err
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && time.Since(start) >= timeout {
				return nil, fmt.Errorf("ssh %s@%s: not reachable within %s: %w", user, addr, timeout, last)
			}
			return nil, fmt.Errorf("ssh %s@%s: %w", user, addr, ctx.Err())
		case <-abort:
			return nil, fmt.Errorf("ssh %s@%s: %w", user, addr, ErrAborted)
		case <-time.After(dialRetry):
		}
	}
}

// dialOnce makes one connection attempt; abort and ctx interrupt it.
func dialOnce(ctx context.Context, addr string, cfg *ssh.ClientConfig, abort <-chan struct{}) (*ssh.Client, error) {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	aborted := make(chan struct{})
	go func() {
		select {
		case <-abort:
			close(aborted)
			cancel()
		case <-actx.Done():
		}
	}()
	var d net.Dialer
	d.Timeout = 10 * time.Second
	conn, err := d.DialContext(actx, "tcp", addr)
	if err != nil {
		return nil, abortErr(aborted, err)
	}
	stop := context.AfterFunc(actx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, abortErr(aborted, err)
	}
	if !stop() {
		conn.Close()
		return nil, abortErr(aborted, actx.Err())
	}
	conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

func abortErr(aborted chan struct{}, err error) error {
	select {
	case <-aborted:
		return ErrAborted
	default:
		return err
	}
}

// Keepalive pacing: a request every keepaliveInterval; the connection is
// closed (failing what runs on it) when none is answered for keepaliveDead.
// Generous, as a TCG guest under load answers slowly.
var (
	keepaliveInterval = 30 * time.Second
	keepaliveDead     = 3 * time.Minute
)

// keepalive closes the connection when the guest stops answering (hung
// kernel, frozen VM), so commands fail instead of waiting forever.
func (c *Client) keepalive(interval, dead time.Duration) {
	last := time.Now()
	t := time.NewTicker(interval)
	defer t.Stop()
	replies := make(chan error, 1)
	pending := false
	for {
		select {
		case <-t.C:
		case err := <-replies:
			pending = false
			if err != nil {
				return // connection closed
			}
			last = time.Now()
			continue
		}
		if time.Since(last) > dead {
			logrus.Warnf("ssh %s@%s: no answer for %s, closing the connection", c.User, c.Addr, dead)
			c.lostMu.Lock()
			c.lost = fmt.Errorf("ssh %s@%s: connection lost: the guest did not answer keepalives for %s", c.User, c.Addr, dead)
			c.lostMu.Unlock()
			c.conn.Close()
			return
		}
		if !pending {
			pending = true
			go func() {
				_, _, err := c.conn.SendRequest("keepalive@openssh.com", true, nil)
				replies <- err
			}()
		}
	}
}

// Lost is why the keepalive closed the connection, or nil.
func (c *Client) Lost() error {
	c.lostMu.Lock()
	defer c.lostMu.Unlock()
	return c.lost
}

// SSH is the underlying SSH client.
func (c *Client) SSH() *ssh.Client { return c.conn }

// SFTP returns the client's SFTP session, opened on first use.
func (c *Client) SFTP() (*sftp.Client, error) {
	c.sftpOnce.Do(func() {
		c.sftp, c.sftpErr = sftp.NewClient(c.conn, sftp.UseConcurrentWrites(true), sftp.MaxConcurrentRequestsPerFile(64))
		if c.sftpErr != nil {
			c.sftpErr = fmt.Errorf("sftp %s@%s: %w", c.User, c.Addr, c.sftpErr)
		}
	})
	return c.sftp, c.sftpErr
}

// Close ends the SFTP session and the connection.
func (c *Client) Close() error {
	if c.sftp != nil {
		c.sftp.Close()
	}
	return c.conn.Close()
}
