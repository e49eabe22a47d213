package prepare

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// DKIMSelector is the DKIM selector the appliance signs with.
const DKIMSelector = "default"

// PostfixPort is postfix's smtpd port for local senders and the ecs
// containers (port 25 is stunnel's).
const PostfixPort = 10025

// postfixOpen10025 matches a master.cf entry for port 10025 on every address.
var postfixOpen10025 = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^10025[ \t]+inet[ \t]`) })

// SMTPDPort is where the ECS container's smtpd listens (published on the
// loopback by the compose file when an image exposes it); stunnel forwards
// ports 25 and 465 to it.
const SMTPDPort = 8025

// stepMail configures postfix for outgoing mail (its smtpd moved off port
// 25, which stunnel owns, to 10025) and, when appliance.dkim.key is set,
// opendkim signing for the domain.
func (a *Agent) stepMail(ctx context.Context, e *Env) error {
	domain := e.Doc.Domain()
	if _, err := a.Host.WriteFile("/etc/mailname", []byte(domain+"\n"), 0o644); err != nil {
		return err
	}
	bridgeIP, bridgeNet := a.dockerBridge()
	settings := []string{
		"myhostname=" + domain,
		"myorigin=/etc/mailname",
		"mydestination=$myhostname, localhost.localdomain, localhost",
		"inet_interfaces=all",
		// Relaying for the loopback and the ecs containers on the docker
		// bridge only.
		"mynetworks=127.0.0.0/8 [::1]/128 " + bridgeNet,
		"smtpd_relay_restrictions=permit_mynetworks, reject_unauth_destination",
	}
	keyText := e.Str("appliance.dkim.key")
	dkimChanged := false
	if keyText != "" {
		key, err := parseRSAKey(keyText)
		if err != nil {
			return fmt.Errorf("appliance.dkim.key: %w", err)
		}
		c1, err := a.Host.WriteFile(DKIMKey, []byte(strings.TrimSpace(keyText)+"\n"), 0o600)
		if err != nil {
			return err
		}
		conf, err := render("opendkim.conf.tmpl", map[string]string{"Domain": domain, "Selector": DKIMSelector, "KeyFile": DKIMKey})
		if err != nil {
			return err
		}
		c2, err := a.Host.WriteFile(OpenDKIMConf, conf, 0o644)
		if err != nil {
			return err
		}
		rec, err := dkimRecord(domain, key)
		if err != nil {
			return err
		}
		if _, err := a.Host.WriteFile(DKIMRecord, []byte(rec), 0o644); err != nil {
			return err
		}
		dkimChanged = c1 || c2
		if c1 {
			if _, err := a.Host.Run(ctx, "chown", "opendkim:opendkim", DKIMKey); err != nil {
				return err
			}
		}
		settings = append(settings,
			"milter_default_action=accept", "milter_protocol=6",
			"smtpd_milters=inet:localhost:8891", "non_smtpd_milters=inet:localhost:8891")
	} else {
		settings = append(settings, "smtpd_milters=", "non_smtpd_milters=")
	}
	// What postconf -e, -M#, -MX and -Me would do, without running it.
	// (A file that does not exist yet is written as postconf would: only
	// with the agent's settings.)
	mainCf, err := a.Host.ReadFile(PostfixMainCf)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	masterCf, err := a.Host.ReadFile(PostfixMasterCf)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// Move postfix's smtpd from port 25 (stunnel's) to 10025, on the
	// loopback and the docker bridge address only.
	edits := []masterCfEdit{{key: "smtp/inet", op: '#'}}
	if postfixOpen10025().Match(masterCf) {
		// The entry of earlier agents, on every address.
		edits = append(edits, masterCfEdit{key: "10025/inet", op: 'X'})
	}
	for _, addr := range []string{"127.0.0.1", bridgeIP} {
		svc := fmt.Sprintf("%s:%d", addr, PostfixPort)
		edits = append(edits, masterCfEdit{key: svc + "/inet", op: 'e', entry: svc + " inet n - y - - smtpd"})
	}
	c1, err := a.Host.WriteFile(PostfixMainCf, []byte(editMainCf(string(mainCf), settings)), 0o644)
	if err != nil {
		return err
	}
	c2, err := a.Host.WriteFile(PostfixMasterCf, []byte(editMasterCf(string(masterCf), edits)), 0o644)
	if err != nil {
		return err
	}
	if keyText != "" {
		if err := a.reloadOrStart(ctx, "opendkim.service", dkimChanged); err != nil {
			return err
		}
	}
	// inet_interfaces and master.cf changes need a restart, not a reload.
	return a.startPostfix(ctx, c1 || c2)
}

// postfixChrootFiles are the files of /etc that Debian's
// configure-instance.sh copies into Postfix's chroot (the queue directory)
// at every start, as part of `postfix check`.
var postfixChrootFiles = []string{"/etc/localtime", "/etc/services", "/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/nsswitch.conf", "/etc/nss_mdns.config"}

// startPostfix restarts (changed) or starts postfix. It first creates
// Postfix's own quick-start file, which makes `postfix start` skip its
// integrity checks once (postfix-script check-fatal and check-warn: half
// a minute of CPU under emulation, for the files the image's packages
// installed), and so does the image's postfix.service drop-in for Debian
// 13's `postfix check` before the start; `postfix check` runs them by
// hand. What the check does at a boot is done here: the queue directories
// postfix makes at its first start, and the chroot's copies of /etc files
// the boot may have changed (hosts, resolv.conf).
func (a *Agent) startPostfix(ctx context.Context, changed bool) error {
	if a.Host.Exists(PostfixQueueDir) {
		if err := a.syncPostfixChroot(); err != nil {
			return err
		}
		// What the skipped check would have created (post-install
		// create-missing): the directories postfix makes at its first
		// start, not the package (pid, the queues: without hold, mailq
		// fails). Without Postfix's list of them, the check runs.
		dirs, err := a.postfixDirs()
		if err != nil {
			a.logf("prepare-appliance/mail: %v; postfix check runs before the start", err)
			return a.startPostfixUnit(ctx, changed)
		}
		byOwner := map[string][]string{}
		var owners []string
		for _, d := range dirs {
			if a.Host.Exists(d.path) {
				continue
			}
			if err := a.Host.MkdirAll(d.path, d.mode); err != nil {
				return err
			}
			if err := os.Chmod(a.Host.Path(d.path), d.mode); err != nil { // not the umask's
				return err
			}
			if d.owner != "root" || d.group != "" {
				o := d.owner
				if d.group != "" {
					o += ":" + d.group
				}
				if byOwner[o] == nil {
					owners = append(owners, o)
				}
				byOwner[o] = append(byOwner[o], a.Host.Path(d.path))
			}
		}
		for _, o := range owners {
			if _, err := a.Host.Run(ctx, "chown", append([]string{o}, byOwner[o]...)...); err != nil {
				return err
			}
		}
		if _, err := a.Host.WriteFile(PostfixQueueDir+"/quick-start", nil, 0o644); err != nil {
			return err
		}
	}
	return a.startPostfixUnit(ctx, changed)
}

// syncPostfixChroot makes the chroot's copies of postfixChrootFiles follow
// the originals (through symlinks), as configure-instance.sh does: a copy
// of a file /etc does not have is removed.
func (a *Agent) syncPostfixChroot() error {
	for _, f := range postfixChrootFiles {
		dst := PostfixQueueDir + f
		data, err := a.Host.ReadFile(f)     // through a symlink (localtime), as cp does
		if errors.Is(err, fs.ErrNotExist) { // configure-instance.sh removes the copy
			err = a.Host.Remove(dst)
			if err == nil {
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("postfix's chroot: %w", err)
		}
		if err := a.Host.MkdirAll(path.Dir(dst), 0o755); err != nil {
			return err
		}
		if _, err := a.Host.WriteFile(dst, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) startPostfixUnit(ctx context.Context, restart bool) error {
	if restart {
		return a.systemctl(ctx, "restart", "postfix.service")
	}
	return a.systemctl(ctx, "start", "postfix.service")
}

// PostfixFiles is Postfix's list of the files and directories it installs
// and creates (post-install).
const PostfixFiles = "/etc/postfix/postfix-files"

// postfixDir is a directory of PostfixFiles.
type postfixDir struct {
	path, owner, group string // group "" when the list says "-"
	mode               os.FileMode
}

// postfixDirs lists the directories PostfixFiles has below the queue and
// data directories (Debian's defaults; the agent does not move them), in
// its order.
func (a *Agent) postfixDirs() ([]postfixDir, error) {
	data, err := a.Host.ReadFile(PostfixFiles)
	if err != nil {
		return nil, err
	}
	expand := strings.NewReplacer("$queue_directory", PostfixQueueDir, "$data_directory", "/var/lib/postfix",
		"$mail_owner", "postfix", "$setgid_group", "postdrop")
	var dirs []postfixDir
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Split(l, ":")
		if len(f) < 5 || f[1] != "d" || !strings.HasPrefix(f[0], "$queue_directory") && !strings.HasPrefix(f[0], "$data_directory") {
			continue
		}
		mode, err := strconv.ParseUint(f[4], 8, 32)
		if err != nil || strings.Contains(expand.Replace(l), "$") {
			return nil, fmt.Errorf("%s: cannot read the line %q", PostfixFiles, l)
		}
		d := postfixDir{path: expand.Replace(f[0]), owner: expand.Replace(f[2]), mode: os.FileMode(mode)}
		if f[3] != "-" {
			d.group = expand.Replace(f[3])
		}
		dirs = append(dirs, d)
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("%s lists no queue directory", PostfixFiles)
	}
	return dirs, nil
}

func parseRSAKey(text string) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode([]byte(strings.TrimSpace(text)))
	if block == nil {
		return nil, fmt.Errorf("not a PEM private key")
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not an RSA private key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("not an RSA private key")
	}
	return rk, nil
}

// dkimRecord is the DNS TXT record to publish for the key.
func dkimRecord(domain string, key crypto.Signer) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s._domainkey.%s. IN TXT \"v=DKIM1; k=rsa; p=%s\"\n",
		DKIMSelector, domain, base64.StdEncoding.EncodeToString(der)), nil
}

func (a *Agent) stepStunnel(ctx context.Context, e *Env) error {
	conf, err := render("stunnel.conf.tmpl", map[string]any{"Cert": ServerCert, "Key": ServerKey, "SMTPDPort": a.smtpdPort()})
	if err != nil {
		return err
	}
	changed, err := a.Host.WriteFile(StunnelConf, conf, 0o644)
	if err != nil {
		return err
	}
	// Enabled like `systemctl enable` would, without its daemon-reload
	// (seconds under emulation): the link only matters at the next boot,
	// and this boot starts the unit below.
	if _, err := a.Host.Symlink(StunnelUnitFile, StunnelWantsLink); err != nil {
		return fmt.Errorf("enabling stunnel@ecs.service: %w", err)
	}
	if changed || a.tlsChanged {
		return a.systemctl(ctx, "restart", "stunnel@ecs.service")
	}
	return a.systemctl(ctx, "start", "stunnel@ecs.service")
}
