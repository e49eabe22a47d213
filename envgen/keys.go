package envgen

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// SecretBytes is the number of random bytes in each Django secret
// (SECRET_KEY, REGISTRATION_SECRET, PASSWORD_RESET_SECRET).
const SecretBytes = 48

// DKIMBits is the size of the generated DKIM RSA key.
const DKIMBits = 2048

// PGPBits is the size of the generated OpenPGP RSA keys. RSA (not ECC) is
// used so that every gpg the appliance may meet (1.4, 2.x) and duplicity can
// use them; 3072 bits is GnuPG's own default RSA size.
const PGPBits = 3072

// maxTXTString is the longest character-string in a DNS TXT record we emit
// (the protocol limit is 255).
const maxTXTString = 250

// newSecret returns n random bytes, base64url-encoded without padding: only
// [A-Za-z0-9_-], so it is safe in URLs, YAML and a Python string literal.
func newSecret(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// newDKIM generates an RSA key and returns its PKCS#1 PEM and the DKIM TXT
// record value (v=DKIM1; ...; p=<base64 SubjectPublicKeyInfo>).
func newDKIM(bits int) (keyPEM string, txt string, err error) {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return "", "", err
	}
	der := x509.MarshalPKCS1PrivateKey(k)
	keyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}))
	return keyPEM, DKIMRecord(&k.PublicKey), nil
}

// DKIMRecord returns the DKIM TXT record value for pub.
func DKIMRecord(pub *rsa.PublicKey) string {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil { // cannot happen for an RSA key
		panic(err)
	}
	return "v=DKIM1; k=rsa; s=email; p=" + base64.StdEncoding.EncodeToString(spki)
}

// SplitTXT splits a TXT record value into character-strings of at most
// 250 bytes each, as DNS requires (255 max per string).
func SplitTXT(s string) []string {
	var out []string
	for len(s) > maxTXTString {
		out = append(out, s[:maxTXTString])
		s = s[maxTXTString:]
	}
	return append(out, s)
}

// pgpConfig is the key generation configuration: RSA, no AEAD (gpg 2.2
// cannot read RFC 9580 SEIPDv2), no expiry.
func pgpConfig(bits int) *packet.Config {
	return &packet.Config{
		Algorithm:              packet.PubKeyAlgoRSA,
		RSABits:                bits,
		DefaultHash:            crypto.SHA256,
		DefaultCipher:          packet.CipherAES256,
		DefaultCompressionAlgo: packet.CompressionZLIB,
	}
}

// newPGPKey generates an unprotected OpenPGP secret key (RSA primary key for
// signing, RSA subkey for encryption) with the user id uid and returns it
// ASCII-armored, as `gpg --armor --export-secret-keys` would.
func newPGPKey(uid string, bits int) (string, error) {
	cfg := pgpConfig(bits)
	e, err := openpgp.NewEntity(uid, "", "", cfg)
	if err != nil {
		return "", err
	}
	// Advertise the preferences GnuPG uses itself; go-crypto puts
	// "uncompressed" first, which would make duplicity's backups (gpg
	// compresses them) needlessly large.
	for _, id := range e.Identities {
		sig := id.SelfSignature
		sig.PreferredSymmetric = []uint8{uint8(packet.CipherAES256), uint8(packet.CipherAES192), uint8(packet.CipherAES128)}
		sig.PreferredHash = []uint8{10, 9, 8} // SHA512, SHA384, SHA256
		sig.PreferredCompression = []uint8{uint8(packet.CompressionZLIB), uint8(packet.CompressionZIP), uint8(packet.CompressionNone)}
	}
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PrivateKeyType, nil)
	if err != nil {
		return "", err
	}
	// SerializePrivate re-signs the self-signatures with the new preferences.
	if err := e.SerializePrivate(w, cfg); err != nil {
		return "", fmt.Errorf("serialize %s key: %w", uid, err)
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return strings.TrimRight(buf.String(), "\n") + "\n", nil
}
