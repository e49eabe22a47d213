package envpack

import (
	"bytes"
	"compress/gzip"
	"encoding/base32"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// ChunkBytes is how many bytes of the gzip'd env each QR code carries. A
// multiple of 5, so that each chunk's base32 text has no padding and the
// chunks concatenate to the base32 of the whole file. 1140 bytes are 1824
// base32 characters, plus a "NN/NN " header: a version 29 QR code at error
// correction level M in alphanumeric mode (capacity 1839), like the
// original appliance's data2qrpdf.sh.
const ChunkBytes = 1140

// Gzip compresses data deterministically (no name, no time stamp).
func Gzip(data []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write(data)
	zw.Close()
	return buf.Bytes()
}

// QRChunks returns the QR code payloads for data (the gzip'd env): each is
// "i/n " followed by base32 (RFC 4648, upper case) of one chunk, with i
// zero-padded so that `sort -n` restores the order. All characters are in
// the QR alphanumeric set.
func QRChunks(gz []byte) []string {
	n := (len(gz) + ChunkBytes - 1) / ChunkBytes
	if n == 0 {
		n = 1
	}
	width := max(2, len(strconv.Itoa(n)))
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		end := min(len(gz), (i+1)*ChunkBytes)
		chunk := gz[i*ChunkBytes : end]
		out = append(out, fmt.Sprintf("%0*d/%0*d %s", width, i+1, width, n, base32.StdEncoding.EncodeToString(chunk)))
	}
	return out
}

// DecodeQRChunks reverses QRChunks: it takes the decoded QR texts in any
// order (one per line, as `zbarimg --raw` prints them), checks that every
// part is present exactly once, and returns the gunzip'd data.
func DecodeQRChunks(texts string) ([]byte, error) {
	type part struct {
		i    int
		data string
	}
	var parts []part
	total := -1
	for _, l := range strings.Split(texts, "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		hdr, data, ok := strings.Cut(l, " ")
		is, ns, ok2 := strings.Cut(hdr, "/")
		i, err1 := strconv.Atoi(is)
		n, err2 := strconv.Atoi(ns)
		if !ok || !ok2 || err1 != nil || err2 != nil || i < 1 || i > n {
			return nil, fmt.Errorf("not an env.yml QR code: %.40q", l)
		}
		if total >= 0 && n != total {
			return nil, fmt.Errorf("QR codes of different sets (%d and %d parts)", total, n)
		}
		total = n
		parts = append(parts, part{i, data})
	}
	if total < 0 {
		return nil, fmt.Errorf("no QR codes")
	}
	sort.Slice(parts, func(a, b int) bool { return parts[a].i < parts[b].i })
	var b32 strings.Builder
	for k, p := range parts {
		if p.i != k+1 {
			if p.i == k {
				return nil, fmt.Errorf("part %d/%d twice", p.i, total)
			}
			return nil, fmt.Errorf("part %d/%d missing", k+1, total)
		}
		b32.WriteString(p.data)
	}
	if len(parts) != total {
		return nil, fmt.Errorf("part %d/%d missing", len(parts)+1, total)
	}
	gz, err := base32.StdEncoding.DecodeString(b32.String())
	if err != nil {
		return nil, fmt.Errorf("base32: %w", err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}
