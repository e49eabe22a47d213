package prepare

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"regexp"
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
	before := a.postfixConfig()
	if _, err := a.Host.Run(ctx, "postconf", append([]string{"-e"}, settings...)...); err != nil {
		return err
	}
	// Move postfix's smtpd from port 25 (stunnel's) to 10025, on the
	// loopback and the docker bridge address only.
	if _, err := a.Host.Run(ctx, "postconf", "-M#", "smtp/inet"); err != nil {
		return err
	}
	if master, err := a.Host.ReadFile(PostfixMasterCf); err == nil && postfixOpen10025().Match(master) {
		// The entry of earlier agents, on every address.
		if _, err := a.Host.Run(ctx, "postconf", "-MX", "10025/inet"); err != nil {
			return err
		}
	}
	var entries []string
	for _, addr := range []string{"127.0.0.1", bridgeIP} {
		svc := fmt.Sprintf("%s:%d", addr, PostfixPort)
		entries = append(entries, svc+"/inet="+svc+" inet n - y - - smtpd")
	}
	if _, err := a.Host.Run(ctx, "postconf", append([]string{"-Me"}, entries...)...); err != nil {
		return err
	}
	if keyText != "" {
		if err := a.reloadOrStart(ctx, "opendkim.service", dkimChanged); err != nil {
			return err
		}
	}
	// inet_interfaces and master.cf changes need a restart, not a reload.
	return a.startPostfix(ctx, a.postfixConfig() != before)
}

// postfixConfig is the content of postfix's main.cf and master.cf, to
// tell whether postconf changed anything (read directly: each postconf run
// costs about a second of CPU under emulation).
func (a *Agent) postfixConfig() string {
	n, err1 := a.Host.ReadFile(PostfixMainCf)
	m, err2 := a.Host.ReadFile(PostfixMasterCf)
	if err1 != nil || err2 != nil {
		return "unknown"
	}
	return string(n) + "\x00" + string(m)
}

// postfixQueueDirs are the queue directories Postfix's postfix-files lists
// as owned by mail_owner (postfix), mode 0700, created when missing.
var postfixQueueDirs = []string{"active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "saved", "trace"}

// startPostfix restarts (changed) or starts postfix. It first creates
// Postfix's own quick-start file, which makes `postfix start` skip its
// integrity checks once (postfix-script check-fatal and check-warn: half
// a minute of CPU under emulation, for the files the image's packages
// installed); `postfix check` runs them by hand.
func (a *Agent) startPostfix(ctx context.Context, changed bool) error {
	if a.Host.Exists(PostfixQueueDir) {
		// What the skipped check would have created (post-install
		// create-missing): the queue directories postfix makes at its first
		// start, not the package. Without hold, mailq (showq) fails.
		var missing []string
		for _, d := range postfixQueueDirs {
			p := PostfixQueueDir + "/" + d
			if !a.Host.Exists(p) {
				if err := a.Host.MkdirAll(p, 0o700); err != nil {
					return err
				}
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			if _, err := a.Host.Run(ctx, "chown", append([]string{"postfix"}, missing...)...); err != nil {
				return err
			}
		}
		if _, err := a.Host.WriteFile(PostfixQueueDir+"/quick-start", nil, 0o644); err != nil {
			return err
		}
	}
	if changed {
		return a.systemctl(ctx, "restart", "postfix.service")
	}
	return a.systemctl(ctx, "start", "postfix.service")
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
