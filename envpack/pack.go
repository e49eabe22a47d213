// Package envpack packages an env.yml for safe keeping, like the original
// appliance's env-package.sh but in pure Go: env.yml.pdf (the env as text
// and as QR codes, with restore instructions), env-cidata.iso (the NoCloud
// seed) and, given recipients, DOMAIN.env.DATE.tar.gz.gpg (a tar.gz of the
// three, OpenPGP-encrypted to every recipient).
package envpack

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/env"
)

// Output file names.
const (
	PDFName = "env.yml.pdf"
	ISOName = "env-cidata.iso"
)

// Options configure Package.
type Options struct {
	// EnvFile is the env.yml to package; it must be valid (env.Parse).
	EnvFile string
	// OutDir receives the outputs; default: EnvFile's directory.
	OutDir string
	// Recipients is a keyring of armored OpenPGP public keys (one or more);
	// when set, the encrypted archive is made. RecipientsFile names it.
	Recipients     []byte
	RecipientsFile string
	// MetaData is optional NoCloud meta-data for the seed ISO (e.g. a
	// static network setup); MetaDataFile names it.
	MetaData     []byte
	MetaDataFile string
	// Now stamps the PDF and the archive name; zero means time.Now().
	Now time.Time
	// Progress, if set, receives short status messages; Warn receives the
	// env file's validation warnings (e.g. unknown keys).
	Progress func(msg string)
	Warn     func(msg string)
}

// InputError reports unusable input other than an invalid env.yml (which
// is an *env.Error): bad recipients, bad meta-data.
type InputError struct{ File, Msg string }

func (e *InputError) Error() string { return e.File + ": " + e.Msg }

// Package writes the env package and returns the paths written. Every
// output is written to a temporary name in OutDir, mode 0600, and renamed
// only when all are complete; on error or cancellation nothing is left.
func Package(ctx context.Context, o Options) ([]string, error) {
	progress := o.Progress
	if progress == nil {
		progress = func(string) {}
	}
	now := o.Now
	if now.IsZero() {
		now = time.Now()
	}
	doc, err := env.Load(o.EnvFile) // bounded: env.MaxSize
	if err != nil {
		return nil, err
	}
	data := doc.Raw
	domain := doc.Domain()
	if domain == "" || strings.ContainsAny(domain, "/\\ ") || strings.HasPrefix(domain, ".") {
		return nil, &InputError{o.EnvFile, fmt.Sprintf("appliance.domain %q cannot name the archive", domain)}
	}
	if o.Warn != nil {
		for _, w := range doc.Warnings {
			o.Warn(w.String())
		}
	}
	var recipients openpgp.EntityList
	if o.Recipients != nil {
		if recipients, err = readRecipients(o.RecipientsFile, o.Recipients, now); err != nil {
			return nil, err
		}
	}
	outDir := o.OutDir
	if outDir == "" {
		outDir = filepath.Dir(o.EnvFile)
	}
	// A missing OutDir is created (0700: it holds secrets) only when the
	// outputs are ready to be written.
	if st, err := os.Stat(outDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	} else if err == nil && !st.IsDir() {
		return nil, &InputError{outDir, "not a directory"}
	}

	sum := sha256.Sum256(data)
	progress(fmt.Sprintf("rendering %s (%d QR codes)", PDFName, len(QRChunks(Gzip(data)))))
	pdf, err := renderPDF(pdfInput{Domain: domain, Env: data, SHA256: hex.EncodeToString(sum[:]), Now: now})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", PDFName, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	progress("building " + ISOName)
	iso, err := cidata.Build(cidata.Options{
		UserData: data, UserDataName: o.EnvFile,
		MetaData: o.MetaData, MetaDataName: o.MetaDataFile,
	})
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	outs := []output{{PDFName, pdf}, {ISOName, iso}}
	if recipients != nil {
		name := fmt.Sprintf("%s.env.%s.tar.gz.gpg", domain, now.Format("2006-01-02_15.04"))
		progress(fmt.Sprintf("encrypting %s to %d recipient(s)", name, len(recipients)))
		enc, err := encryptArchive(recipients, now, strings.TrimSuffix(name, ".gpg"), []output{{"env.yml", data}, {PDFName, pdf}, {ISOName, iso}})
		if err != nil {
			return nil, err
		}
		outs = append(outs, output{name, enc})
	}
	return writeAll(ctx, outDir, outs)
}

type output struct {
	name string
	data []byte
}

// rename is os.Rename; tests make it fail half-way.
var rename = os.Rename

// writeAll writes every output to a temporary file, then renames them all:
// all or nothing. Every target must be missing or a regular file (checked
// before anything is renamed); a rename failing half-way puts back the
// files already replaced. It creates dir (0700) if missing, and removes it
// again on failure.
func writeAll(ctx context.Context, dir string, outs []output) ([]string, error) {
	undo, err := atomicfile.MkdirAllUndo(dir, 0o700)
	if err != nil {
		return nil, err
	}
	tmps := make([]string, 0, len(outs))
	cleanup := func() {
		for _, t := range tmps {
			os.Remove(t)
		}
		undo()
	}
	for _, o := range outs {
		if err := atomicfile.CheckTarget(filepath.Join(dir, o.name)); err != nil {
			cleanup()
			return nil, err
		}
	}
	for _, o := range outs {
		f, err := os.CreateTemp(dir, "."+o.name+".tmp-*")
		if err != nil {
			cleanup()
			return nil, err
		}
		tmps = append(tmps, f.Name())
		err = f.Chmod(0o600)
		if err == nil {
			_, err = f.Write(o.data)
		}
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			cleanup()
			return nil, err
		}
	}
	// Keep the files about to be replaced (hard links), to put them back.
	backups := make([]string, len(outs))
	dropBackups := func() {
		for _, b := range backups {
			if b != "" {
				os.Remove(b)
			}
		}
	}
	for i, o := range outs {
		p := filepath.Join(dir, o.name)
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		b := filepath.Join(dir, "."+o.name+".old-"+filepath.Base(tmps[i]))
		if err := os.Link(p, b); err != nil {
			dropBackups()
			cleanup()
			return nil, err
		}
		backups[i] = b
	}
	var done []string
	for i, o := range outs {
		p := filepath.Join(dir, o.name)
		err := atomicfile.CheckTarget(p)
		if err == nil {
			err = rename(tmps[i], p)
		}
		if err != nil {
			for j := range done {
				if backups[j] != "" {
					os.Rename(backups[j], done[j])
				} else {
					os.Remove(done[j])
				}
			}
			dropBackups()
			cleanup()
			return nil, err
		}
		done = append(done, p)
	}
	dropBackups()
	return done, nil
}

// readRecipients parses armored public keys; each must be able to encrypt.
func readRecipients(file string, data []byte, now time.Time) (openpgp.EntityList, error) {
	var all openpgp.EntityList
	// Several armored blocks may be concatenated (like gpgkeys.txt of the
	// original): read them one after the other.
	rest := data
	for len(bytes.TrimSpace(rest)) > 0 {
		i := bytes.Index(rest, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----"))
		if i < 0 {
			if len(all) == 0 {
				return nil, &InputError{file, "no armored OpenPGP public key (-----BEGIN PGP PUBLIC KEY BLOCK-----)"}
			}
			break
		}
		rest = rest[i:]
		j := bytes.Index(rest, []byte("-----END PGP PUBLIC KEY BLOCK-----"))
		if j < 0 {
			return nil, &InputError{file, fmt.Sprintf("line %d: unterminated public key block", lineOf(data, rest))}
		}
		j += len("-----END PGP PUBLIC KEY BLOCK-----")
		block := rest[:j]
		el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(block))
		if err != nil {
			return nil, &InputError{file, fmt.Sprintf("line %d: %v", lineOf(data, rest), err)}
		}
		for _, e := range el {
			if _, ok := e.EncryptionKey(now); !ok {
				return nil, &InputError{file, fmt.Sprintf("line %d: key %s (%s) has no valid encryption key (expired or revoked?)",
					lineOf(data, rest), e.PrimaryKey.KeyIdString(), primaryName(e))}
			}
		}
		all = append(all, el...)
		rest = rest[j:]
	}
	if len(all) == 0 {
		return nil, &InputError{file, "no OpenPGP public key"}
	}
	return all, nil
}

func lineOf(all, at []byte) int {
	return bytes.Count(all[:len(all)-len(at)], []byte("\n")) + 1
}

func primaryName(e *openpgp.Entity) string {
	for name := range e.Identities {
		return name
	}
	return "no user id"
}

// encryptArchive makes a tar.gz of files and encrypts it to recipients.
// The message uses SEIPD v1 (with MDC) and AES-256, which every gpg
// (1.4 and 2.x) decrypts; no AEAD.
func encryptArchive(recipients openpgp.EntityList, now time.Time, name string, files []output) ([]byte, error) {
	var tgz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&tgz, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: 0o600, Size: int64(len(f.data)), ModTime: now.Truncate(time.Second), Typeflag: tar.TypeReg, Uname: "root", Gname: "root", Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	cfg := &packet.Config{DefaultCipher: packet.CipherAES256, DefaultCompressionAlgo: packet.CompressionNone, Time: func() time.Time { return now }}
	var out bytes.Buffer
	w, err := openpgp.Encrypt(&out, recipients, nil, &openpgp.FileHints{IsBinary: true, FileName: name, ModTime: now}, cfg)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	if _, err := w.Write(tgz.Bytes()); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// IsInputError reports whether err is caused by bad input (invalid env.yml,
// recipients or meta-data).
func IsInputError(err error) bool {
	var ie *InputError
	var ee *env.Error
	var ce *cidata.InputError
	return errors.As(err, &ie) || errors.As(err, &ee) || errors.As(err, &ce)
}
