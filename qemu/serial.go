package qemu

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
)

// tailRead is how much of the end of a serial log SerialTail reads.
const tailRead = 256 << 10

// readTail returns the last tailRead bytes of path (nil if unreadable).
func readTail(path string) []byte {
	b, _ := readAllTail(path, tailRead)
	return b
}

// readAllTail returns the last max bytes of path and their offset.
func readAllTail(path string, max int64) ([]byte, int64) {
	f, err := os.Open(path)
	if err != nil {
		return []byte{}, 0
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return []byte{}, 0
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	b, _ := io.ReadAll(io.NewSectionReader(f, off, max))
	if b == nil {
		b = []byte{}
	}
	return b, off
}

// ansi matches terminal escape sequences (CSI and OSC) and stray control
// characters that systemd and the boot loader write to the console.
var ansi = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>c78]|[\x00-\x08\x0b-\x1f\x7f]`)
})

// cleanLine strips escape sequences, control characters and the trailing
// carriage return from one console line.
func cleanLine(b []byte) string {
	s := string(bytes.TrimRight(b, "\r\n"))
	if i := strings.LastIndexByte(s, '\r'); i >= 0 && i < len(s)-1 {
		// A carriage return inside the line: the console overwrote it.
		s = s[i+1:]
	}
	return strings.TrimRight(ansi().ReplaceAllString(s, ""), " \t")
}

// tailLines returns the last n non-empty cleaned lines of data.
func tailLines(data []byte, n int) string {
	if n <= 0 || len(data) == 0 {
		return ""
	}
	raw := bytes.Split(data, []byte("\n"))
	var out []string
	for i := len(raw) - 1; i >= 0 && len(out) < n; i-- {
		if l := cleanLine(raw[i]); l != "" {
			out = append(out, l)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return strings.Join(out, "\n")
}
