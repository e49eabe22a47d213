package release

import (
	"bytes"
	"crypto"
	_ "crypto/sha256" // SHA-256 signatures
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Signer is an unlocked OpenPGP secret key.
type Signer struct {
	entity *openpgp.Entity
}

// Fingerprint is the signing key's primary key fingerprint (upper-case hex).
func (s *Signer) Fingerprint() string {
	return strings.ToUpper(fmt.Sprintf("%x", s.entity.PrimaryKey.Fingerprint))
}

// LoadSigner reads an armored OpenPGP secret key (as written by
// `gpg --armor --export-secret-keys`) and unlocks it with passphrase if it
// is protected. The passphrase is never logged.
func LoadSigner(path string, passphrase []byte) (*Signer, error) {
	data, err := readKey(path)
	if err != nil {
		return nil, &Error{Path: path, Msg: "signing key: " + errText(err)}
	}
	ring, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
	if err != nil {
		return nil, &Error{Path: path, Msg: "not an armored OpenPGP key: " + err.Error()}
	}
	for _, e := range ring {
		if e.PrivateKey == nil {
			continue
		}
		if _, ok := e.SigningKey(time.Now()); !ok {
			continue
		}
		if e.PrivateKey.Encrypted || anySubkeyEncrypted(e) {
			if len(passphrase) == 0 {
				return nil, &Error{Path: path, Msg: "secret key is passphrase-protected; give --key-passphrase-file or ECS_IMAGE_SIGNING_PASSPHRASE"}
			}
			if err := e.DecryptPrivateKeys(passphrase); err != nil {
				return nil, &Error{Path: path, Msg: "cannot unlock secret key: wrong passphrase?"}
			}
		}
		return &Signer{entity: e}, nil
	}
	return nil, &Error{Path: path, Msg: "holds no usable secret signing key (export it with gpg --armor --export-secret-keys)"}
}

func anySubkeyEncrypted(e *openpgp.Entity) bool {
	for _, sk := range e.Subkeys {
		if sk.PrivateKey != nil && sk.PrivateKey.Encrypted {
			return true
		}
	}
	return false
}

// Sign returns an armored detached signature of data (SHA-256).
func (s *Signer) Sign(data []byte) ([]byte, error) {
	var b bytes.Buffer
	cfg := &packet.Config{DefaultHash: crypto.SHA256}
	if err := openpgp.ArmoredDetachSign(&b, s.entity, bytes.NewReader(data), cfg); err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return b.Bytes(), nil
}

// CheckSignature verifies an armored detached signature of data against
// the armored public (or secret) keys in keyPath.
func CheckSignature(keyPath string, data, sig []byte) error {
	raw, err := readKey(keyPath)
	if err != nil {
		return &Error{Path: keyPath, Msg: errText(err)}
	}
	ring, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(raw))
	if err != nil {
		return &Error{Path: keyPath, Msg: "not an armored OpenPGP key: " + err.Error()}
	}
	if _, err := openpgp.CheckArmoredDetachedSignature(ring, bytes.NewReader(data), bytes.NewReader(sig), nil); err != nil {
		return &Error{Path: SignatureFile, Msg: "bad signature of SHA256SUMS: " + err.Error()}
	}
	return nil
}

// maxKeyFile bounds a key file (an armored key ring is a few KiB).
const maxKeyFile = 1 << 20

// readKey reads a key file of at most maxKeyFile bytes (a device such as
// /dev/zero or a huge file is refused, not read into memory).
func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("more than the limit of %d bytes", maxKeyFile)
	}
	return data, nil
}
