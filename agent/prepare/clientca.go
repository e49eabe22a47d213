package prepare

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/atomicfile"
	"software.sslmate.com/src/go-pkcs12"
)

// The client certificate authority (manual §1.1, §3.3): created at the
// first activation in /data/ecs-ca (the ecs containers' /app/ecs-ca) and
// kept across boots. nginx verifies client certificates against its
// certificate and CRL. The file names are those of the ecs application's
// own CA directory (ca.cert.pem, crl.pem).
const (
	ClientCADir   = "/data/ecs-ca"
	ClientCACert  = ClientCADir + "/ca.cert.pem"
	ClientCAKey   = ClientCADir + "/ca.key.pem" // 0600
	ClientCACRL   = ClientCADir + "/crl.pem"
	ClientCAIndex = ClientCADir + "/index.json" // issued certificates, 0600

	// ClientCAValidity is the CA certificate's lifetime; the CRL is
	// valid as long (nginx refuses an expired CRL) and renewed by
	// prepare-appliance when less than ClientCRLRenew is left.
	ClientCAValidity  = 20 * 365 * 24 * time.Hour
	ClientCRLValidity = 10 * 365 * 24 * time.Hour
	ClientCRLRenew    = 365 * 24 * time.Hour

	// DefaultClientCertDays is the default lifetime of a client
	// certificate, as create-client-certificate.sh had it.
	DefaultClientCertDays = 7
)

// IssuedCert is one client certificate of the index.
type IssuedCert struct {
	Serial    string     `json:"serial"` // hex, as nginx's $ssl_client_serial
	Name      string     `json:"name"`
	Email     string     `json:"email"`
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
	Revoked   *time.Time `json:"revoked,omitempty"`
	CertPEM   string     `json:"cert"`
}

// Status is valid, expired or revoked at now.
func (c IssuedCert) Status(now time.Time) string {
	switch {
	case c.Revoked != nil:
		return "revoked"
	case now.After(c.NotAfter):
		return "expired"
	}
	return "valid"
}

// clientCAIndex is the content of ClientCAIndex.
type clientCAIndex struct {
	CRLNumber int64        `json:"crl_number"`
	Certs     []IssuedCert `json:"certificates"`
}

// ClientCA is the loaded client certificate authority.
type ClientCA struct {
	a     *Agent
	cert  *x509.Certificate
	key   crypto.Signer
	index clientCAIndex
}

// stepClientCA creates the client CA at the first activation and keeps
// its CRL current; nginx (the next step) verifies client certificates
// against both.
func (a *Agent) stepClientCA(ctx context.Context, e *Env) error {
	unlock, err := a.lockClientCA()
	if err != nil {
		return err
	}
	defer unlock()
	_, err = a.loadClientCA()
	switch {
	case err == nil:
		// loadClientCA renewed the CRL if it was due.
		return a.warnForeignCA("")
	case errors.Is(err, errForeignCA) || (!a.Host.Exists(ClientCAKey) && a.Host.Exists(ClientCACert) && a.Host.Exists(ClientCACRL)):
		// The ecs application manages its own CA in the same directory
		// (ecs.pki): nginx verifies against its certificate and CRL.
		return a.warnForeignCA(fmt.Sprintf("the client CA in %s is not the agent's (%s is missing or does not match ca.cert.pem): "+
			"nginx verifies client certificates against it and its CRL, and ecs-agent client-cert cannot issue or revoke", ClientCADir, ClientCAKey))
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("client CA in %s: %w", ClientCADir, err)
	}
	if a.Host.Exists(ClientCAKey) || a.Host.Exists(ClientCACert) {
		return fmt.Errorf("client CA in %s is incomplete (%s or %s missing): restore it from a backup, or remove both to create a new CA (every client certificate must then be issued again)",
			ClientCADir, ClientCAKey, ClientCACert)
	}
	ca, err := a.newClientCA(e.Doc.Domain(), time.Now())
	if err != nil {
		return err
	}
	a.logf("prepare-appliance/client-ca: created the client certificate authority %q in %s", ca.cert.Subject.CommonName, ClientCADir)
	return nil
}

// newClientCA makes a CA key (ECDSA P-256) and self-signed certificate, an
// empty index and CRL, and writes them (key first, certificate last).
func (a *Agent) newClientCA(domain string, now time.Time) (*ClientCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ECS client CA " + domain, Organization: []string{domain}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(ClientCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := a.Host.MkdirAll(ClientCADir, 0o755); err != nil {
		return nil, err
	}
	ca := &ClientCA{a: a, cert: cert, key: key}
	if _, err := a.Host.WriteFile(ClientCAKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, err
	}
	if err := ca.save(now); err != nil {
		return nil, err
	}
	if _, err := a.Host.WriteFile(ClientCACert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// errForeignCA: ca.cert.pem is not the certificate of ca.key.pem (the
// application replaced the CA).
var errForeignCA = errors.New("ca.key.pem does not match ca.cert.pem")

// warnForeignCA sets (or clears) the status page's client-ca warning.
func (a *Agent) warnForeignCA(text string) error {
	if text != "" {
		a.logf("prepare-appliance/client-ca: warning: %s", text)
	}
	if err := status.Warn(a.Host, "client-ca", text); err != nil {
		a.logf("prepare-appliance/client-ca: status: %v", err)
	}
	return nil
}

// LoadClientCA reads the client CA (for the client-cert commands).
func (a *Agent) LoadClientCA() (*ClientCA, func(), error) {
	unlock, err := a.lockClientCA()
	if err != nil {
		return nil, nil, err
	}
	ca, err := a.loadClientCA()
	if err != nil {
		unlock()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("no client CA in %s yet (prepare-appliance creates it): %w", ClientCADir, err)
		}
		return nil, nil, fmt.Errorf("client CA in %s: %w", ClientCADir, err)
	}
	return ca, unlock, nil
}

// loadClientCA reads the CA; a missing or stale CRL is written anew.
func (a *Agent) loadClientCA() (*ClientCA, error) {
	certPEM, err := a.Host.ReadFile(ClientCACert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := a.Host.ReadFile(ClientCAKey)
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("ca.cert.pem or ca.key.pem is not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	key, ok := k.(crypto.Signer)
	if !ok || !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errForeignCA
	}
	ca := &ClientCA{a: a, cert: cert, key: key}
	if data, err := a.Host.ReadFile(ClientCAIndex); err == nil {
		if err := json.Unmarshal(data, &ca.index); err != nil {
			return nil, fmt.Errorf("%s: %w", ClientCAIndex, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if ca.crlDue(time.Now()) {
		if err := ca.save(time.Now()); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

// crlDue reports whether the CRL is missing, unreadable, not the CA's, or
// expires within ClientCRLRenew.
func (ca *ClientCA) crlDue(now time.Time) bool {
	data, err := ca.a.Host.ReadFile(ClientCACRL)
	if err != nil {
		return true
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return true
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil || crl.CheckSignatureFrom(ca.cert) != nil {
		return true
	}
	return crl.NextUpdate.Sub(now) < ClientCRLRenew
}

// Cert returns the CA certificate.
func (ca *ClientCA) Cert() *x509.Certificate { return ca.cert }

// Issued returns the index of issued certificates.
func (ca *ClientCA) Issued() []IssuedCert { return append([]IssuedCert(nil), ca.index.Certs...) }

// save writes the index (0600) and a new CRL of the revoked certificates.
func (ca *ClientCA) save(now time.Time) error {
	ca.index.CRLNumber++
	var revoked []x509.RevocationListEntry
	for _, c := range ca.index.Certs {
		if c.Revoked == nil {
			continue
		}
		n, ok := new(big.Int).SetString(c.Serial, 16)
		if !ok {
			return fmt.Errorf("%s: bad serial %q", ClientCAIndex, c.Serial)
		}
		revoked = append(revoked, x509.RevocationListEntry{SerialNumber: n, RevocationTime: *c.Revoked})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(ca.index.CRLNumber),
		ThisUpdate:                now.Add(-time.Hour),
		NextUpdate:                now.Add(ClientCRLValidity),
		RevokedCertificateEntries: revoked,
	}, ca.cert, ca.key)
	if err != nil {
		return err
	}
	data, _ := json.MarshalIndent(ca.index, "", "  ")
	if _, err := ca.a.Host.WriteFile(ClientCAIndex, append(data, '\n'), 0o600); err != nil {
		return err
	}
	_, err = ca.a.Host.WriteFile(ClientCACRL, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
	return err
}

// oidEmailAddress is PKCS #9 emailAddress, in the subject as the
// original appliance's certificates had it.
var oidEmailAddress = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}

// ClientCertRequest is what `ecs-agent client-cert create` asks for.
type ClientCertRequest struct {
	Email, Name string
	Days        int
}

// Check validates the request.
func (r ClientCertRequest) Check() error {
	addr, err := mail.ParseAddress(r.Email)
	if err != nil || addr.Address != r.Email || addr.Name != "" {
		return fmt.Errorf("EMAIL %q is not an e-mail address", r.Email)
	}
	if strings.TrimSpace(r.Name) == "" || len(r.Name) > 64 {
		return fmt.Errorf("NAME must be 1 to 64 characters, got %q", r.Name)
	}
	for _, c := range r.Name {
		if c < 0x20 || c > 0x7e {
			return fmt.Errorf("NAME %q: only printable ASCII", r.Name)
		}
	}
	if r.Days < 1 || r.Days > 3650 {
		return fmt.Errorf("--days must be 1 to 3650, got %d", r.Days)
	}
	return nil
}

// Create issues a client certificate (RSA 2048, for every browser's
// import) and returns it as a PKCS#12 file protected by a new random
// transport password, which is not stored anywhere.
func (ca *ClientCA) Create(r ClientCertRequest, now time.Time) (p12 []byte, password string, issued IssuedCert, err error) {
	if err := r.Check(); err != nil {
		return nil, "", issued, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, "", issued, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, "", issued, err
	}
	notAfter := now.Add(time.Duration(r.Days) * 24 * time.Hour)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{CommonName: r.Name, Organization: ca.cert.Subject.Organization,
			ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidEmailAddress, Value: r.Email}}},
		EmailAddresses: []string{r.Email},
		NotBefore:      now.Add(-time.Hour),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, "", issued, err
	}
	cert, _ := x509.ParseCertificate(der)
	password, err = transportPassword()
	if err != nil {
		return nil, "", issued, err
	}
	p12, err = pkcs12.Modern2023.Encode(key, cert, []*x509.Certificate{ca.cert}, password)
	if err != nil {
		return nil, "", issued, err
	}
	issued = IssuedCert{Serial: strings.ToUpper(serial.Text(16)), Name: r.Name, Email: r.Email,
		NotBefore: cert.NotBefore, NotAfter: cert.NotAfter,
		CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	ca.index.Certs = append(ca.index.Certs, issued)
	if err := ca.save(now); err != nil {
		return nil, "", issued, err
	}
	return p12, password, issued, nil
}

// Revoke revokes every valid certificate whose serial (hex, any case),
// name or e-mail address is what; it returns them. The CRL is rewritten.
func (ca *ClientCA) Revoke(what string, now time.Time) ([]IssuedCert, error) {
	var out []IssuedCert
	for i, c := range ca.index.Certs {
		if c.Revoked != nil {
			continue
		}
		if strings.EqualFold(c.Serial, strings.TrimPrefix(strings.ReplaceAll(what, ":", ""), "0x")) ||
			c.Name == what || strings.EqualFold(c.Email, what) {
			t := now.UTC().Truncate(time.Second)
			ca.index.Certs[i].Revoked = &t
			out = append(out, ca.index.Certs[i])
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no unrevoked client certificate with serial, name or e-mail %q (see ecs-agent client-cert list)", what)
	}
	return out, ca.save(now)
}

// ReloadNginx makes nginx read a new CRL, when it runs.
func (a *Agent) ReloadNginx(ctx context.Context) error {
	return a.systemctl(ctx, "try-reload-or-restart", "nginx.service")
}

// lockClientCA serialises changes to the CA directory between processes.
func (a *Agent) lockClientCA() (func(), error) {
	if err := a.Host.MkdirAll(ClientCADir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(a.Host.Path(ClientCADir+"/.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}

// transportPassword is 20 random characters of an alphabet without
// look-alikes, in groups of five (about 100 bits).
func transportPassword() (string, error) {
	const alphabet = "abcdefghjkmnpqrstuvwxyz23456789" // 31 symbols
	var b bytes.Buffer
	for i := 0; i < 20; i++ {
		if i > 0 && i%5 == 0 {
			b.WriteByte('-')
		}
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			return "", err
		}
		b.WriteByte(alphabet[n.Int64()])
	}
	return b.String(), nil
}

// WriteClientP12 writes a PKCS#12 file (0600, no clobber).
func WriteClientP12(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600, atomicfile.NoClobber())
}
