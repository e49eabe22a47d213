package prepare

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
	"golang.org/x/crypto/acme"
)

// ACME (RFC 8555) host certificates for appliance.ssl.letsencrypt.enabled.
const (
	// LetsEncryptDirectory is the default ACME directory (Let's Encrypt
	// production); appliance.ssl.letsencrypt.directory or
	// `ecs-agent acme --directory` override it.
	LetsEncryptDirectory = "https://acme-v02.api.letsencrypt.org/directory"
	// ACMEDir keeps the ACME account key (0700 directory, 0600 key); it is
	// on /data (via /app/etc), so the account survives reboots and updates.
	ACMEDir        = "/app/etc/acme"
	ACMEAccountKey = "/app/etc/acme/account.key"
	// ACMEWebroot is served by nginx on port 80 for
	// /.well-known/acme-challenge/; the agent writes the HTTP-01 tokens to
	// ACMEChallengeDir.
	ACMEWebroot      = "/var/www/acme"
	ACMEChallengeDir = ACMEWebroot + "/.well-known/acme-challenge"
	// ACMERenewBefore: an ACME certificate is renewed when less remains.
	ACMERenewBefore = 30 * 24 * time.Hour
	// ACMEUnit runs `ecs-agent acme`; ACMETimer starts it twice a day.
	ACMEUnit  = "ecs-agent-acme.service"
	ACMETimer = "ecs-agent-acme.timer"
	// tlsWarning is the key of the ACME warning in the status warnings.
	tlsWarning = "tls"
)

// ACMEOptions tune Agent.RenewCertificate.
type ACMEOptions struct {
	// Directory overrides appliance.ssl.letsencrypt.directory (and the
	// default LetsEncryptDirectory).
	Directory string
	// HTTPClient talks to the ACME server; nil means system roots (Go
	// honours SSL_CERT_FILE) and a 30 s timeout per request.
	HTTPClient *http.Client
	// Timeout bounds the whole issuance; default 5 minutes.
	Timeout time.Duration
	// Force issues a certificate even when the installed one is not due.
	Force bool

	now func() time.Time // the clock of the renewal decision (tests)
}

// acmeWanted reports whether the env asks for an ACME certificate: the
// switch is on and no certificate of its own is configured.
func acmeWanted(e *Env) bool {
	return e.Bool("appliance.ssl.letsencrypt.enabled", false) &&
		e.Str("appliance.ssl.key") == "" && e.Str("appliance.ssl.cert") == ""
}

// tlsNames are the host names of the certificate: appliance.domain first,
// then the valid names of appliance.allowed_hosts.
func tlsNames(e *Env) []string {
	names := []string{e.Doc.Domain()}
	for _, h := range strings.Fields(e.Str("appliance.allowed_hosts")) {
		if validHostname(h) && !contains(names, h) {
			names = append(names, h)
		}
	}
	return names
}

// installedLeaf returns the installed certificate's leaf when the key and
// certificate files form a pair, else nil.
func (a *Agent) installedLeaf() *x509.Certificate {
	certPEM, err1 := a.Host.ReadFile(ServerCert)
	keyPEM, err2 := a.Host.ReadFile(ServerKey)
	if err1 != nil || err2 != nil {
		return nil
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// selfSigned reports whether c is signed by its own key (not
// CheckSignatureFrom: a self-signed leaf is no CA).
func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) &&
		c.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil
}

// validFor reports whether c is valid for every name.
func validFor(c *x509.Certificate, names []string) bool {
	for _, n := range names {
		if c.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}

// clockSkew is how far a certificate's NotBefore may lie in the future:
// the CA's clock and the appliance's differ (Pebble does not backdate).
const clockSkew = time.Hour

// validAt reports whether c is valid at now, allowing clockSkew.
func validAt(c *x509.Certificate, now time.Time) bool {
	return !now.Add(clockSkew).Before(c.NotBefore) && now.Before(c.NotAfter)
}

// acmeCertUsable reports whether c is a CA-issued certificate for names
// that is valid now (the tls step keeps it; renewal is the ACME unit's job).
func acmeCertUsable(c *x509.Certificate, names []string, now time.Time) bool {
	return c != nil && !selfSigned(c) && validFor(c, names) && validAt(c, now)
}

// ACMERenewalDue reports whether a certificate must be requested from the
// ACME server for names at now, and why: there is none, it is self-signed,
// it lacks a name, or less than ACMERenewBefore of its validity remains.
func ACMERenewalDue(c *x509.Certificate, names []string, now time.Time) (bool, string) {
	switch {
	case c == nil:
		return true, "no usable certificate installed"
	case selfSigned(c):
		return true, "the installed certificate is self-signed"
	case !validFor(c, names):
		return true, "the installed certificate does not cover " + strings.Join(names, ", ")
	case c.NotAfter.Sub(now) < ACMERenewBefore:
		return true, fmt.Sprintf("the installed certificate expires %s (less than %d days)",
			c.NotAfter.UTC().Format(time.RFC3339), int(ACMERenewBefore.Hours()/24))
	}
	return false, fmt.Sprintf("the installed certificate is valid until %s", c.NotAfter.UTC().Format(time.RFC3339))
}

// startACME makes systemd obtain or renew the ACME certificate in the
// background (ACMEUnit is ordered after prepare-appliance, so nginx serves
// the challenge webroot by then) and starts the renewal timer. The chain
// never waits for the ACME server.
func (a *Agent) startACME(ctx context.Context) error {
	if err := a.Host.MkdirAll(ACMEChallengeDir, 0o755); err != nil {
		return err
	}
	if err := a.systemctl(ctx, "start", "--no-block", ACMETimer); err != nil {
		return err
	}
	return a.systemctl(ctx, "start", "--no-block", ACMEUnit)
}

// RenewCertificate is `ecs-agent acme`: when the active env enables Let's
// Encrypt and the installed certificate is due (ACMERenewalDue), it
// obtains one for the domain and allowed hosts over HTTP-01 (tokens in
// ACMEChallengeDir, served by nginx), installs it and reloads nginx,
// stunnel and the push-deploy API. A failure leaves the installed
// (self-signed or older) certificate in place, logs the reason and shows
// it as a status warning; the error is returned. In standby it does
// nothing.
func (a *Agent) RenewCertificate(ctx context.Context, opt ACMEOptions) error {
	if a.Host.Exists(status.StandbyFlag) {
		a.logf("acme: skipped: %v", ErrStandby)
		return nil
	}
	e, err := a.loadActive()
	if err != nil {
		return err
	}
	if !acmeWanted(e) {
		a.logf("acme: nothing to do: appliance.ssl.letsencrypt.enabled is not true, or appliance.ssl.key/cert are set")
		a.setTLSWarning("")
		return nil
	}
	names := tlsNames(e)
	dir := opt.Directory
	if dir == "" {
		dir = e.Str("appliance.ssl.letsencrypt.directory")
	}
	if dir == "" {
		dir = LetsEncryptDirectory
	}
	current := a.installedLeaf()
	now := time.Now
	if opt.now != nil {
		now = opt.now
	}
	due, why := ACMERenewalDue(current, names, now())
	if !due && !opt.Force {
		a.logf("acme: not due: %s", why)
		a.setTLSWarning("")
		return nil
	}
	timeout := opt.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	octx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var certPEM, keyPEM []byte
	var leaf *x509.Certificate
	if err = checkPublicNames(dir, names); err == nil {
		a.logf("acme: requesting a certificate for %s from %s: %s", strings.Join(names, ", "), dir, why)
		certPEM, keyPEM, leaf, err = a.obtainCertificate(octx, dir, opt.HTTPClient, names)
	}
	if err != nil {
		serving := "the self-signed certificate"
		if current != nil && !selfSigned(current) && time.Now().Before(current.NotAfter) {
			serving = "the installed certificate (valid until " + current.NotAfter.UTC().Format(time.RFC3339) + ")"
		}
		msg := fmt.Sprintf("Let's Encrypt certificate for %s not issued by %s: %v; serving %s",
			strings.Join(names, ", "), dir, err, serving)
		a.logf("acme: warning: %s", msg)
		a.setTLSWarning(msg)
		return fmt.Errorf("acme: %w", err)
	}
	if err := a.writeKeyPair(certPEM, keyPEM); err != nil {
		return err
	}
	a.logf("acme: installed a certificate for %s issued by %q, serial %x, valid until %s",
		strings.Join(names, ", "), leaf.Issuer.CommonName, leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339))
	a.setTLSWarning("")
	// Only services that run pick the new pair up; the others read it when
	// they start.
	for _, args := range [][]string{
		{"try-reload-or-restart", "nginx.service"},
		{"try-restart", "stunnel@ecs.service"},
		{"try-restart", DeployUnit},
	} {
		if err := a.systemctl(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// reservedSuffixes are names no public CA issues for (RFC 2606, RFC 6761,
// RFC 8375, mDNS); Let's Encrypt refuses them, so the agent does not ask.
var reservedSuffixes = []string{".test", ".example", ".invalid", ".localhost", ".local", ".internal",
	".home.arpa", ".example.com", ".example.net", ".example.org"}

// checkPublicNames refuses, before any request, names that Let's Encrypt
// (production or staging) cannot issue for: single labels and reserved
// names, e.g. the test appliances' *.ecs.test. Another directory (a
// private CA, Pebble) decides for itself.
func checkPublicNames(dir string, names []string) error {
	if !strings.Contains(dir, ".api.letsencrypt.org/") {
		return nil
	}
	for _, n := range names {
		ln := "." + strings.ToLower(strings.TrimSuffix(n, "."))
		if !strings.Contains(ln[1:], ".") {
			return fmt.Errorf("%s is not a public DNS name: not requested", n)
		}
		for _, r := range reservedSuffixes {
			if strings.HasSuffix(ln, r) {
				return fmt.Errorf("%s is a reserved name (%s) that Let's Encrypt does not issue for: not requested", n, r[1:])
			}
		}
	}
	return nil
}

// setTLSWarning records (msg != "") or clears the ACME warning in the
// status; a status that cannot be written is only logged.
func (a *Agent) setTLSWarning(msg string) {
	if err := status.Warn(a.Host, tlsWarning, msg); err != nil {
		a.logf("acme: status: %v", err)
	}
}

// acmeToken is the alphabet of an ACME token (base64url, RFC 8555 §8.3):
// it names a file in the webroot, so nothing else is accepted.
var acmeToken = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_-]{16,256}$`) })

// obtainCertificate runs one ACME order for names: account (key created
// once, kept in ACMEAccountKey), order, HTTP-01 challenges answered from
// ACMEChallengeDir, finalize with a fresh P-256 key, and the chain. It
// returns the certificate chain and key (PEM) and the parsed leaf.
func (a *Agent) obtainCertificate(ctx context.Context, dir string, hc *http.Client, names []string) (certPEM, keyPEM []byte, leaf *x509.Certificate, err error) {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	c := &acme.Client{DirectoryURL: dir, HTTPClient: hc, UserAgent: "ecs-agent"}
	if _, err := c.Discover(ctx); err != nil {
		return nil, nil, nil, fmt.Errorf("ACME directory: %w", err)
	}
	if c.Key, err = a.acmeAccountKey(); err != nil {
		return nil, nil, nil, err
	}
	// Enabling Let's Encrypt in env.yml is the operator's agreement to the
	// CA's terms of service (as with the original's dehydrated --accept-terms).
	if _, err := c.Register(ctx, &acme.Account{}, acme.AcceptTOS); err != nil && !errors.Is(err, acme.ErrAccountAlreadyExists) {
		return nil, nil, nil, fmt.Errorf("account: %w", err)
	}
	order, err := c.AuthorizeOrder(ctx, acme.DomainIDs(names...))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("new order: %w", err)
	}
	var tokens []string
	defer func() {
		for _, t := range tokens {
			_ = a.Host.Remove(path.Join(ACMEChallengeDir, t))
		}
	}()
	for _, zurl := range order.AuthzURLs {
		z, err := c.GetAuthorization(ctx, zurl)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("authorization: %w", err)
		}
		if z.Status == acme.StatusValid {
			continue
		}
		var chal *acme.Challenge
		for _, ch := range z.Challenges {
			if ch.Type == "http-01" {
				chal = ch
			}
		}
		if chal == nil {
			return nil, nil, nil, fmt.Errorf("%s: the ACME server offers no http-01 challenge", z.Identifier.Value)
		}
		if !acmeToken().MatchString(chal.Token) {
			return nil, nil, nil, fmt.Errorf("%s: the ACME server sent a malformed http-01 token", z.Identifier.Value)
		}
		body, err := c.HTTP01ChallengeResponse(chal.Token)
		if err != nil {
			return nil, nil, nil, err
		}
		tokens = append(tokens, chal.Token)
		if _, err := a.Host.WriteFile(path.Join(ACMEChallengeDir, chal.Token), []byte(body), 0o644); err != nil {
			return nil, nil, nil, err
		}
		if _, err := c.Accept(ctx, chal); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: accept http-01 challenge: %w", z.Identifier.Value, err)
		}
		if _, err := c.WaitAuthorization(ctx, z.URI); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: http-01 validation of http://%s%s: %w",
				z.Identifier.Value, z.Identifier.Value, c.HTTP01ChallengePath(chal.Token), err)
		}
	}
	if order, err = c.WaitOrder(ctx, order.URI); err != nil {
		return nil, nil, nil, fmt.Errorf("order: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
	}, key)
	if err != nil {
		return nil, nil, nil, err
	}
	ders, _, err := c.CreateCertFromOrder(ctx, order, csr, true)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("finalize: %w", err)
	}
	leaf, err = checkIssued(ders, key.Public(), names, time.Now())
	if err != nil {
		return nil, nil, nil, err
	}
	var cb bytes.Buffer
	for _, d := range ders {
		_ = pem.Encode(&cb, &pem.Block{Type: "CERTIFICATE", Bytes: d})
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return cb.Bytes(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), leaf, nil
}

// checkIssued checks the issued chain before it replaces a working
// certificate: the leaf carries our key, covers names, is valid now (up to
// clockSkew early) and is signed by the next certificate of the chain.
func checkIssued(ders [][]byte, pub crypto.PublicKey, names []string, now time.Time) (*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("the ACME server returned no certificate")
	}
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !k.Equal(pub) {
		return nil, errors.New("the issued certificate does not carry the requested key")
	}
	if !validFor(leaf, names) {
		return nil, fmt.Errorf("the issued certificate does not cover %s", strings.Join(names, ", "))
	}
	if !validAt(leaf, now) {
		return nil, fmt.Errorf("the issued certificate is not valid now, %s (%s to %s; is the clock right?)",
			now.UTC().Format(time.RFC3339), leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(ders) > 1 {
		issuer, err := x509.ParseCertificate(ders[1])
		if err != nil {
			return nil, fmt.Errorf("issuer certificate: %w", err)
		}
		if err := leaf.CheckSignatureFrom(issuer); err != nil {
			return nil, fmt.Errorf("the issued chain is broken: %w", err)
		}
	}
	return leaf, nil
}

// acmeAccountKey loads the account key, creating it (P-256, PKCS#8, 0600
// in a 0700 directory) on first use.
func (a *Agent) acmeAccountKey() (crypto.Signer, error) {
	data, err := a.Host.ReadFile(ACMEAccountKey)
	if err == nil {
		b, _ := pem.Decode(data)
		if b == nil || b.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("%s: not a PEM \"PRIVATE KEY\" block (remove it to register a new account)", ACMEAccountKey)
		}
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (remove it to register a new account)", ACMEAccountKey, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: unsupported key type %T", ACMEAccountKey, k)
		}
		return s, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := a.Host.MkdirAll(ACMEDir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if _, err := a.Host.WriteFile(ACMEAccountKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	a.logf("acme: created the account key %s", ACMEAccountKey)
	return key, nil
}
