// Package progress reports the progress of long byte transfers: a redrawn
// bar on a terminal, periodic log lines otherwise.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/term"
)

// Interval is how often a progress line is logged when stderr is not a terminal.
var Interval = 10 * time.Second

// Tracker counts bytes of one named transfer and reports them.
type Tracker struct {
	name  string
	total int64 // <= 0 when unknown

	mu       sync.Mutex
	done     int64
	start    time.Time
	last     time.Time
	terminal bool
	out      io.Writer
	finished bool
}

// New starts tracking a transfer of total bytes (<= 0: unknown).
func New(name string, total int64) *Tracker {
	now := time.Now()
	return &Tracker{
		name: name, total: total, start: now, last: now,
		terminal: term.IsTerminal(int(os.Stderr.Fd())), out: os.Stderr,
	}
}

// Add records n more bytes.
func (t *Tracker) Add(n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done += n
	now := time.Now()
	if t.terminal {
		if now.Sub(t.last) >= 200*time.Millisecond {
			t.last = now
			fmt.Fprintf(t.out, "\r%s", t.line())
		}
		return
	}
	if now.Sub(t.last) >= Interval {
		t.last = now
		logrus.Info(t.line())
	}
}

// Done finishes the report.
func (t *Tracker) Done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.finished {
		return
	}
	t.finished = true
	if t.terminal {
		fmt.Fprintf(t.out, "\r%s\n", t.line())
	}
}

func (t *Tracker) line() string {
	el := time.Since(t.start).Seconds()
	rate := ""
	if el > 0 {
		rate = fmt.Sprintf(" %s/s", Bytes(int64(float64(t.done)/el)))
	}
	if t.total > 0 {
		pct := float64(t.done) * 100 / float64(t.total)
		const width = 30
		filled := int(pct / 100 * width)
		if filled > width {
			filled = width
		}
		bar := make([]byte, width)
		for i := range bar {
			if i < filled {
				bar[i] = '='
			} else {
				bar[i] = ' '
			}
		}
		return fmt.Sprintf("%s [%s] %5.1f%% %s/%s%s", t.name, bar, pct, Bytes(t.done), Bytes(t.total), rate)
	}
	return fmt.Sprintf("%s %s%s", t.name, Bytes(t.done), rate)
}

// Reader returns r wrapped so that reads are counted.
func (t *Tracker) Reader(r io.Reader) io.Reader { return &reader{r, t} }

// Writer returns w wrapped so that writes are counted.
func (t *Tracker) Writer(w io.Writer) io.Writer { return &writer{w, t} }

type reader struct {
	r io.Reader
	t *Tracker
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.t.Add(int64(n))
	return n, err
}

type writer struct {
	w io.Writer
	t *Tracker
}

func (w *writer) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.t.Add(int64(n))
	return n, err
}

// Bytes formats a byte count in binary units.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
