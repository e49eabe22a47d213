package prepare

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"path"
	"strings"
	"time"
)

// SelfSignedValidity is the lifetime of a generated certificate; it is
// renewed when less than SelfSignedRenew remains.
const (
	SelfSignedValidity = 365 * 24 * time.Hour
	SelfSignedRenew    = 30 * 24 * time.Hour
)

// stepTLS installs the HTTPS certificate: appliance.ssl.key/cert from the
// env (PEM text, or a file name relative to /app/etc), else a self-signed
// certificate for the domain and allowed hosts, kept across runs while it
// is valid for them. With appliance.ssl.letsencrypt.enabled a CA-issued
// certificate for those names is kept while it is valid, the self-signed
// one serves until then, and ACMEUnit is started in the background to
// obtain or renew it (see RenewCertificate): the chain never waits for the
// ACME server.
func (a *Agent) stepTLS(ctx context.Context, e *Env) error {
	keySpec, certSpec := e.Str("appliance.ssl.key"), e.Str("appliance.ssl.cert")
	if keySpec != "" || certSpec != "" {
		if keySpec == "" || certSpec == "" {
			return fmt.Errorf("appliance.ssl: key and cert must be set together")
		}
		keyPEM, err := a.pemOrFile(keySpec, "appliance.ssl.key")
		if err != nil {
			return err
		}
		certPEM, err := a.pemOrFile(certSpec, "appliance.ssl.cert")
		if err != nil {
			return err
		}
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			return fmt.Errorf("appliance.ssl: key and cert do not form a pair: %w", err)
		}
		a.setTLSWarning("")
		return a.writeKeyPair(certPEM, keyPEM)
	}
	names := tlsNames(e)
	if acmeWanted(e) {
		if leaf := a.installedLeaf(); acmeCertUsable(leaf, names, time.Now()) {
			a.logf("prepare-appliance/tls: using the CA-issued certificate for %s (valid until %s); %s renews it",
				strings.Join(names, ", "), leaf.NotAfter.UTC().Format(time.RFC3339), ACMETimer)
		} else if err := a.ensureSelfSigned(names); err != nil {
			return err
		}
		return a.startACME(ctx)
	}
	a.setTLSWarning("")
	return a.ensureSelfSigned(names)
}

// ensureSelfSigned keeps the installed pair while it is valid for names
// (selfSignedOK), else installs a new self-signed certificate.
func (a *Agent) ensureSelfSigned(names []string) error {
	if a.selfSignedOK(names) {
		return nil
	}
	certPEM, keyPEM, err := SelfSigned(names, time.Now())
	if err != nil {
		return err
	}
	a.logf("prepare-appliance/tls: generated a self-signed certificate for %s", strings.Join(names, ", "))
	return a.writeKeyPair(certPEM, keyPEM)
}

func (a *Agent) pemOrFile(spec, field string) ([]byte, error) {
	if strings.Contains(spec, "-----BEGIN") {
		return []byte(spec + "\n"), nil
	}
	p := spec
	if !path.IsAbs(p) {
		p = path.Join(AppEtc, p)
	}
	data, err := a.Host.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return data, nil
}

func (a *Agent) writeKeyPair(certPEM, keyPEM []byte) error {
	// Key first: a reader never pairs a new certificate with an old key for long.
	c1, err := a.Host.WriteFile(ServerKey, keyPEM, 0o600)
	if err != nil {
		return err
	}
	c2, err := a.Host.WriteFile(ServerCert, certPEM, 0o644)
	a.tlsChanged = a.tlsChanged || c1 || c2
	return err
}

// selfSignedOK reports whether the installed pair is valid for names for
// at least SelfSignedRenew.
func (a *Agent) selfSignedOK(names []string) bool {
	cert := a.installedLeaf()
	if cert == nil || time.Until(cert.NotAfter) < SelfSignedRenew {
		return false
	}
	for _, n := range names {
		if cert.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}

// SelfSigned makes an ECDSA P-256 certificate and key (PEM) for names,
// valid from now for SelfSignedValidity.
func SelfSigned(names []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: names[0], Organization: []string{"ECS appliance (self-signed)"}},
		DNSNames:              names,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(SelfSignedValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	var cb, kb bytes.Buffer
	_ = pem.Encode(&cb, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	_ = pem.Encode(&kb, &pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	return cb.Bytes(), kb.Bytes(), nil
}
