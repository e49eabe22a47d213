// Package release turns a directory of build artifacts into a release:
// SHA256SUMS, its detached OpenPGP signature and manifest.json, and
// publishes it to a file:// or s3:// destination, manifest last.
package release

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ecs-image/ecs-image/atomicfile"
	"github.com/ecs-image/ecs-image/progress"
)

// Names of the files a release adds to its directory.
const (
	SumsFile      = "SHA256SUMS"
	SignatureFile = "SHA256SUMS.asc"
	ManifestFile  = "manifest.json"
	// BuildManifestFile is what the builder leaves beside its artifacts; its
	// fields are carried into manifest.json.
	BuildManifestFile = "build-manifest.json"
)

// Sum is one line of SHA256SUMS.
type Sum struct {
	Name   string // file name relative to the release directory
	SHA256 string // lower-case hex
	Size   int64  // filled by Verify and hashing, not stored in SHA256SUMS
}

// Error is a problem with a release directory's content (bad checksum
// file, digest mismatch, bad key): bad input, exit code 2.
type Error struct {
	Path string
	Line int // 0 if not about a line
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
	}
	return e.Path + ": " + e.Msg
}

// IsBadInput reports whether err is a release input problem.
func IsBadInput(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// HashFile returns the hex SHA-256 and size of the file at path, with
// progress for large files.
func HashFile(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	var r io.Reader = f
	var tr *progress.Tracker
	if st.Size() > 256<<20 {
		tr = progress.New("sha256 "+filepath.Base(path), st.Size())
		r = tr.Reader(r)
		defer tr.Done()
	}
	return atomicfile.SHA256(ctx, r)
}

// ctxReader stops reading once ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// FormatSums renders sums in GNU coreutils format ("<hex>  <name>"),
// sorted by name, as `sha256sum -c` reads it.
func FormatSums(sums []Sum) []byte {
	s := append([]Sum(nil), sums...)
	sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	var b bytes.Buffer
	for _, x := range s {
		fmt.Fprintf(&b, "%s  %s\n", x.SHA256, x.Name)
	}
	return b.Bytes()
}

// ReadSums parses a SHA256SUMS file (GNU text or binary mode lines).
// Names must be plain file names in the same directory.
func ReadSums(path string) ([]Sum, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{Path: path, Msg: errText(err)}
	}
	defer f.Close()
	var sums []Sum
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		hexSum, name, ok := strings.Cut(text, " ")
		if !ok || len(name) < 2 || (name[0] != ' ' && name[0] != '*') {
			return nil, &Error{Path: path, Line: line, Msg: `want "<sha256 hex>  <file name>"`}
		}
		name = name[1:]
		if b, err := hex.DecodeString(hexSum); err != nil || len(b) != sha256.Size {
			return nil, &Error{Path: path, Line: line, Msg: fmt.Sprintf("%q is not a SHA-256 hex digest", hexSum)}
		}
		if name != filepath.Base(name) || name == "." || name == ".." || strings.HasPrefix(name, ".") {
			return nil, &Error{Path: path, Line: line, Msg: fmt.Sprintf("file name %q must be a plain name in the release directory", name)}
		}
		if seen[name] {
			return nil, &Error{Path: path, Line: line, Msg: fmt.Sprintf("%s listed twice", name)}
		}
		seen[name] = true
		sums = append(sums, Sum{Name: name, SHA256: strings.ToLower(hexSum)})
	}
	if err := sc.Err(); err != nil {
		return nil, &Error{Path: path, Msg: err.Error()}
	}
	if len(sums) == 0 {
		return nil, &Error{Path: path, Msg: "lists no file"}
	}
	return sums, nil
}

// Verify checks every file SHA256SUMS in dir lists against its digest and
// returns the entries with sizes.
func Verify(ctx context.Context, dir string) ([]Sum, error) {
	sumsPath := filepath.Join(dir, SumsFile)
	sums, err := ReadSums(sumsPath)
	if err != nil {
		return nil, err
	}
	for i, s := range sums {
		p := filepath.Join(dir, s.Name)
		got, size, err := HashFile(ctx, p)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, &Error{Path: sumsPath, Msg: fmt.Sprintf("%s: %s", s.Name, errText(err))}
		}
		if got != s.SHA256 {
			return nil, &Error{Path: sumsPath, Msg: fmt.Sprintf("%s: SHA-256 mismatch: file has %s, SHA256SUMS says %s", s.Name, got, s.SHA256)}
		}
		sums[i].Size = size
	}
	return sums, nil
}

func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
