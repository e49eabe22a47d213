package qemu

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"
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

// WaitSerial waits until a line of the serial console contains pattern.
// It fails at once when QEMU exits first (the error carries the serial
// console's last lines) and when ctx ends.
func (m *Machine) WaitSerial(ctx context.Context, pattern string) error {
	_, err := m.WaitSerialMatch(ctx, regexp.MustCompile(regexp.QuoteMeta(pattern)))
	return err
}

// serialPoll is how often the serial log is re-read.
var serialPoll = 200 * time.Millisecond

// WaitSerialMatch waits until a line of the serial console (from the start
// of the boot) matches re and returns that line, without trailing CR/LF and
// terminal escape sequences.
func (m *Machine) WaitSerialMatch(ctx context.Context, re *regexp.Regexp) (string, error) {
	var off int64
	var partial []byte
	t := time.NewTicker(serialPoll)
	defer t.Stop()
	for {
		exited := m.Exited()
		chunk := m.readSerialFrom(off)
		off += int64(len(chunk))
		partial = append(partial, chunk...)
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			line := cleanLine(partial[:i])
			partial = partial[i+1:]
			if re.MatchString(line) {
				return line, nil
			}
		}
		if exited {
			if line := cleanLine(partial); re.MatchString(line) && line != "" {
				return line, nil
			}
			return "", fmt.Errorf("waiting for %q on the serial console: %w", re.String(), m.exitError())
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q on the serial console: %w\nlast serial console lines:\n%s", re.String(), ctx.Err(), m.SerialTail(30))
		case <-m.done:
		case <-t.C:
		}
	}
}

// readSerialFrom returns the serial log from offset off on.
func (m *Machine) readSerialFrom(off int64) []byte {
	m.mu.Lock()
	saved, base := m.saved, m.savedBase
	m.mu.Unlock()
	if saved != nil || m.Exited() {
		if off < base {
			off = base
		}
		if off-base >= int64(len(saved)) {
			return nil
		}
		return saved[off-base:]
	}
	f, err := os.Open(m.Config.SerialLog)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, _ := io.ReadAll(io.NewSectionReader(f, off, 1<<62))
	return b
}

// SerialTail returns the last n lines of the serial console, cleaned of
// carriage returns and terminal escape sequences.
func (m *Machine) SerialTail(n int) string {
	m.mu.Lock()
	saved := m.saved
	m.mu.Unlock()
	if saved == nil {
		saved = readTail(m.Config.SerialLog)
	}
	return tailLines(saved, n)
}

// SerialLog is the path of the serial console log (removed at exit when
// Start chose it).
func (m *Machine) SerialLog() string { return m.Config.SerialLog }
