package env

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/ssh"
)

// Checks of the key material embedded in env.yml: SSH public keys, PEM keys
// and certificates, OpenPGP secret keys. Messages never quote key material.

func checkSSHKey(deprecated bool) func(c *checker, n *yaml.Node, path, s string) {
	return func(c *checker, n *yaml.Node, path, s string) {
		s = strings.TrimSpace(s)
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s)); err != nil {
			if deprecated {
				c.warnAt(n, path, "not an SSH public key in authorized_keys format (%v)", err)
				return
			}
			c.errAt(n, path, "not an SSH public key in authorized_keys format, e.g. \"ssh-ed25519 AAAA... user@host\" (%v)", err)
		}
	}
}

// pemBlocks decodes every PEM block in s. It fails on text outside blocks
// and on a BEGIN line without a matching, well-formed block.
func pemBlocks(s string) ([]*pem.Block, error) {
	rest := []byte(strings.TrimSpace(s))
	var blocks []*pem.Block
	for len(rest) > 0 {
		start := bytes.Index(rest, []byte("-----BEGIN "))
		if start < 0 {
			return nil, fmt.Errorf("text after the last PEM block")
		}
		if len(bytes.TrimSpace(rest[:start])) > 0 {
			return nil, fmt.Errorf("text outside PEM blocks")
		}
		b, r := pem.Decode(rest)
		if b == nil {
			return nil, fmt.Errorf("malformed PEM block (bad base64, header or END line)")
		}
		blocks = append(blocks, b)
		rest = bytes.TrimSpace(r)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("no PEM block")
	}
	return blocks, nil
}

// parsePrivateKey parses the single private key among blocks.
func parsePrivateKey(blocks []*pem.Block) (crypto.Signer, error) {
	var key crypto.Signer
	for _, b := range blocks {
		var k any
		var err error
		switch b.Type {
		case "EC PARAMETERS":
			continue
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("the private key is encrypted; the appliance needs it unencrypted")
		case "RSA PRIVATE KEY":
			if _, enc := b.Headers["DEK-Info"]; enc {
				return nil, fmt.Errorf("the private key is encrypted; the appliance needs it unencrypted")
			}
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		default:
			return nil, fmt.Errorf("unexpected PEM block %q (want a private key)", b.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("%s block does not parse: %v", b.Type, err)
		}
		if key != nil {
			return nil, fmt.Errorf("more than one private key")
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
		key = s
	}
	if key == nil {
		return nil, fmt.Errorf("no private key block (BEGIN PRIVATE KEY / RSA PRIVATE KEY / EC PRIVATE KEY)")
	}
	return key, nil
}

func parseCertificates(blocks []*pem.Block) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for _, b := range blocks {
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q (want CERTIFICATE)", b.Type)
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate does not parse: %v", err)
		}
		certs = append(certs, cert)
	}
	return certs, nil
}

// isInlinePEM tells inline PEM from a file name (appliance.ssl.key/cert
// accept both).
func isInlinePEM(s string) bool { return strings.Contains(s, "-----BEGIN") }

func checkFileName(c *checker, n *yaml.Node, path, s string) bool {
	if strings.ContainsAny(strings.TrimSpace(s), "\n\x00") {
		c.errAt(n, path, "is neither a PEM block (-----BEGIN ...) nor a file name")
		return false
	}
	return true
}

func checkSSLKey(c *checker, n *yaml.Node, path, s string) {
	if !isInlinePEM(s) {
		checkFileName(c, n, path, s)
		return
	}
	blocks, err := pemBlocks(s)
	if err == nil {
		_, err = parsePrivateKey(blocks)
	}
	if err != nil {
		c.errAt(n, path, "bad PEM private key: %v", err)
	}
}

func checkSSLCert(c *checker, n *yaml.Node, path, s string) {
	if !isInlinePEM(s) {
		checkFileName(c, n, path, s)
		return
	}
	blocks, err := pemBlocks(s)
	if err == nil {
		_, err = parseCertificates(blocks)
	}
	if err != nil {
		c.errAt(n, path, "bad PEM certificate: %v", err)
	}
}

// checkSSLPair: key and cert come together, and when both are inline the
// certificate must be for the key.
func checkSSLPair(c *checker, n *yaml.Node, path string) {
	var f flattener
	var keyN, certN *yaml.Node
	for _, e := range f.entries(n) {
		if nodeKind(e.value) != kStr {
			continue
		}
		switch e.key.text {
		case "key":
			keyN = deref(e.value)
		case "cert":
			certN = deref(e.value)
		}
	}
	switch {
	case keyN == nil && certN == nil:
		return
	case keyN == nil:
		c.errAt(certN, path+".key", "is missing: ssl.cert needs ssl.key")
		return
	case certN == nil:
		c.errAt(keyN, path+".cert", "is missing: ssl.key needs ssl.cert")
		return
	}
	if !isInlinePEM(keyN.Value) || !isInlinePEM(certN.Value) {
		return
	}
	kb, err1 := pemBlocks(keyN.Value)
	cb, err2 := pemBlocks(certN.Value)
	if err1 != nil || err2 != nil {
		return // reported already
	}
	key, err1 := parsePrivateKey(kb)
	certs, err2 := parseCertificates(cb)
	if err1 != nil || err2 != nil || len(certs) == 0 {
		return
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if ok && !pub.Equal(certs[0].PublicKey) {
		c.errAt(certN, path+".cert", "the (first) certificate is not for appliance.ssl.key")
	}
}

func checkDKIMKey(c *checker, n *yaml.Node, path, s string) {
	blocks, err := pemBlocks(s)
	var key crypto.Signer
	if err == nil {
		key, err = parsePrivateKey(blocks)
	}
	if err != nil {
		c.errAt(n, path, "bad PEM private key: %v", err)
		return
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			c.errAt(n, path, "RSA key of %d bits is too short for DKIM (want 2048)", k.N.BitLen())
		}
	case ed25519.PrivateKey:
	default:
		c.errAt(n, path, "DKIM needs an RSA or Ed25519 key, not %T", key)
	}
}

type keyUsage int

const (
	usageEncrypt keyUsage = iota
	usageSign
)

// checkPGP requires one armored, unprotected OpenPGP secret key usable for
// the given purpose, as env create makes and the appliance imports.
func checkPGP(usage keyUsage) func(c *checker, n *yaml.Node, path, s string) {
	return func(c *checker, n *yaml.Node, path, s string) {
		// run later, concurrently with the other keys (see runSlow)
		c.slow = append(c.slow, slowCheck{n, path, func() string { return pgpProblemCached(s, usage) }})
	}
}

// pgpCache remembers verdicts on PGP blocks by content: checking a key
// costs a few signature verifications (~1 ms), and the same env.yml is often
// parsed repeatedly (seed ISOs, packaging, the agent at each boot).
var pgpCache struct {
	sync.Mutex
	m map[[sha256.Size]byte]string
}

const pgpCacheMax = 1024

func pgpProblemCached(s string, usage keyUsage) string {
	key := sha256.Sum256([]byte(string(rune('0'+usage)) + s))
	pgpCache.Lock()
	msg, ok := pgpCache.m[key]
	pgpCache.Unlock()
	if ok {
		return msg
	}
	msg = pgpProblem(s, usage)
	pgpCache.Lock()
	if pgpCache.m == nil || len(pgpCache.m) >= pgpCacheMax {
		pgpCache.m = make(map[[sha256.Size]byte]string)
	}
	pgpCache.m[key] = msg
	pgpCache.Unlock()
	return msg
}

func pgpProblem(s string, usage keyUsage) string {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "-----BEGIN PGP ") {
		return "must be an ASCII-armored OpenPGP secret key (-----BEGIN PGP PRIVATE KEY BLOCK-----)"
	}
	if strings.Count(s, "-----BEGIN PGP ") > 1 {
		return "holds more than one armored PGP block; want one secret key"
	}
	block, err := armor.Decode(strings.NewReader(s))
	if err != nil {
		return fmt.Sprintf("broken PGP armor: %v", err)
	}
	if block.Type == "PGP PUBLIC KEY BLOCK" {
		return "is a PGP public key; the appliance needs the secret key (-----BEGIN PGP PRIVATE KEY BLOCK-----)"
	}
	if block.Type != "PGP PRIVATE KEY BLOCK" {
		return fmt.Sprintf("is a %q; want a PGP PRIVATE KEY BLOCK", block.Type)
	}
	pub, err := publicKeyRing(block.Body)
	if err != nil {
		return err.Error()
	}
	keys, err := openpgp.ReadKeyRing(bytes.NewReader(pub))
	if err != nil {
		return fmt.Sprintf("PGP key does not parse: %v", err)
	}
	if len(keys) != 1 {
		return fmt.Sprintf("holds %d PGP keys; want exactly one", len(keys))
	}
	e := keys[0]
	now := time.Now()
	switch usage {
	case usageEncrypt:
		if _, ok := e.EncryptionKey(now); !ok {
			return "PGP key has no valid encryption key (expired, revoked or sign-only?)"
		}
	case usageSign:
		if _, ok := e.SigningKey(now); !ok {
			return "PGP key has no valid signing key (expired, revoked or encrypt-only?)"
		}
	}
	return ""
}

// publicKeyRing reads an OpenPGP secret key ring and returns the equivalent
// public key ring, after checking that every secret key is unprotected and
// intact. The secret parts are checked by structure and checksum rather
// than by go-crypto's full parse, whose RSA key validation (several
// milliseconds per key) would dominate Parse; the public parts, user IDs
// and self-signatures are then fully checked by openpgp.ReadKeyRing.
func publicKeyRing(r io.Reader) ([]byte, error) {
	var out bytes.Buffer
	opr := packet.NewOpaqueReader(r)
	secret := 0
	for {
		op, err := opr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("PGP key does not parse: %v", err)
		}
		switch op.Tag {
		case 5, 7: // secret key, secret subkey
			secret++
			pk, err := secretToPublic(op)
			if err != nil {
				return nil, err
			}
			if err := pk.Serialize(&out); err != nil {
				return nil, fmt.Errorf("PGP key does not parse: %v", err)
			}
		case 6, 14:
			return nil, fmt.Errorf("holds a public key packet; the appliance needs the secret key")
		default:
			if err := op.Serialize(&out); err != nil {
				return nil, fmt.Errorf("PGP key does not parse: %v", err)
			}
		}
	}
	if secret == 0 {
		return nil, fmt.Errorf("holds no PGP secret key")
	}
	return out.Bytes(), nil
}

// secretToPublic checks one secret (sub)key packet and returns its public
// key.
func secretToPublic(op *packet.OpaquePacket) (*packet.PublicKey, error) {
	tag := byte(6)
	if op.Tag == 7 {
		tag = 14
	}
	// parse the public part, which the secret key packet starts with
	p, err := (&packet.OpaquePacket{Tag: tag, Contents: op.Contents}).Parse()
	if err != nil {
		return nil, fmt.Errorf("PGP key does not parse: %v", err)
	}
	pk, ok := p.(*packet.PublicKey)
	if !ok {
		return nil, fmt.Errorf("PGP key does not parse")
	}
	if pk.Version != 4 {
		// v5/v6 keys: no cheap checksum; let go-crypto parse it all
		sp, err := op.Parse()
		if err != nil {
			return nil, fmt.Errorf("PGP secret key does not parse: %v", err)
		}
		if priv, ok := sp.(*packet.PrivateKey); !ok {
			return nil, fmt.Errorf("PGP secret key does not parse")
		} else if priv.Encrypted {
			return nil, fmt.Errorf("PGP secret key is passphrase-protected; the appliance needs it unprotected")
		}
		return pk, nil
	}
	var hdr bytes.Buffer
	if err := pk.SerializeSignaturePrefix(&hdr); err != nil || hdr.Len() != 3 {
		return nil, fmt.Errorf("PGP key does not parse")
	}
	pubLen := int(hdr.Bytes()[1])<<8 | int(hdr.Bytes()[2])
	if pubLen >= len(op.Contents) {
		return nil, fmt.Errorf("PGP secret key packet holds no secret key material")
	}
	sec := op.Contents[pubLen:]
	if sec[0] != 0 {
		return nil, fmt.Errorf("PGP secret key is passphrase-protected; the appliance needs it unprotected")
	}
	if len(sec) < 3 {
		return nil, fmt.Errorf("PGP secret key material is truncated")
	}
	mpis, sum := sec[1:len(sec)-2], sec[len(sec)-2:]
	var total uint16
	for _, b := range mpis {
		total += uint16(b)
	}
	if total != uint16(sum[0])<<8|uint16(sum[1]) {
		return nil, fmt.Errorf("PGP secret key material is corrupt (checksum mismatch)")
	}
	// the MPIs must fill the material exactly: RSA has d, p, q, u; the
	// other algorithms one secret value
	n := 0
	for rest := mpis; len(rest) > 0; n++ {
		if len(rest) < 2 {
			return nil, fmt.Errorf("PGP secret key material is truncated")
		}
		size := 2 + ((int(rest[0])<<8|int(rest[1]))+7)/8
		if size > len(rest) {
			return nil, fmt.Errorf("PGP secret key material is truncated")
		}
		rest = rest[size:]
	}
	want := 1
	switch pk.PubKeyAlgo {
	case packet.PubKeyAlgoRSA, packet.PubKeyAlgoRSAEncryptOnly, packet.PubKeyAlgoRSASignOnly:
		want = 4
	}
	if n != want {
		return nil, fmt.Errorf("PGP secret key material has %d values, want %d", n, want)
	}
	return pk, nil
}
