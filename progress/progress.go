// Package progress reports the progress of long byte transfers. On a
// terminal every running transfer has its own line at the bottom of the
// screen (name, bar, percentage, bytes, rate, ETA), redrawn in place and
// cleared properly; log lines written through LogOutput appear above the
// bars, never inside them. When stderr is not a terminal, a transfer logs a
// plain line every Interval instead.
package progress

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"
	"golang.org/x/term"
)

// Interval is how often a progress line is logged when stderr is not a terminal.
var Interval = 10 * time.Second

// redrawEvery limits how often the bars are redrawn on a terminal.
const redrawEvery = 200 * time.Millisecond

// Tracker counts bytes of one named transfer and reports them.
type Tracker struct {
	name  string
	total int64 // <= 0 when unknown
	d     *display

	mu       sync.Mutex
	done     int64
	start    time.Time
	last     time.Time
	finished bool
}

// stderr is the display of every Tracker: os.Stderr.
var stderr = newDisplay(os.Stderr)

// LogOutput is the writer logrus should write to (logrus.SetOutput): on a
// terminal it moves the running bars below each log line, elsewhere it is
// os.Stderr.
func LogOutput() io.Writer { return stderr }

// New starts tracking a transfer of total bytes (<= 0: unknown).
func New(name string, total int64) *Tracker { return stderr.newTracker(name, total) }

// Add records n more bytes.
func (t *Tracker) Add(n int64) {
	t.mu.Lock()
	t.done += n
	if t.d.terminal {
		t.mu.Unlock()
		t.d.tick()
		return
	}
	defer t.mu.Unlock()
	now := time.Now()
	if now.Sub(t.last) >= Interval {
		t.last = now
		logrus.Info(t.lineLocked(now, 0))
	}
}

// Done finishes the report: on a terminal the bar is replaced by a summary
// line that stays above the running bars.
func (t *Tracker) Done() {
	t.mu.Lock()
	if t.finished {
		t.mu.Unlock()
		return
	}
	t.finished = true
	t.mu.Unlock()
	if t.d.terminal {
		t.d.finish(t)
	}
}

// line is the bar line (width: the terminal's columns, 0: unlimited).
func (t *Tracker) line(now time.Time, width int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lineLocked(now, width)
}

func (t *Tracker) lineLocked(now time.Time, width int) string {
	el := now.Sub(t.start).Seconds()
	var rate float64
	if el > 0 {
		rate = float64(t.done) / el
	}
	if t.total <= 0 {
		return fit(fmt.Sprintf("%s %s %s/s", t.name, Bytes(t.done), Bytes(int64(rate))), width)
	}
	pct := float64(t.done) * 100 / float64(t.total)
	if pct > 100 {
		pct = 100
	}
	eta := "--:--"
	if rate > 0 && t.done > 0 {
		eta = clock(time.Duration(float64(t.total-t.done) / rate * float64(time.Second)))
	}
	stats := fmt.Sprintf(" %5.1f%% %9s/%-9s %9s/s ETA %s", pct, Bytes(t.done), Bytes(t.total), Bytes(int64(rate)), eta)
	// The bar takes what the name and the numbers leave, 10 to 30 columns.
	barWidth := 30
	if width > 0 {
		barWidth = width - utf8.RuneCountInString(t.name) - len(stats) - 4
		barWidth = min(max(barWidth, 10), 30)
	}
	filled := int(pct / 100 * float64(barWidth))
	bar := strings.Repeat("=", filled)
	if filled < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-filled-1)
	}
	return fit(fmt.Sprintf("%s [%s]%s", t.name, bar, stats), width)
}

// summary is the line that replaces a finished bar.
func (t *Tracker) summary(now time.Time) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	el := now.Sub(t.start)
	rate := ""
	if s := el.Seconds(); s > 0 {
		rate = fmt.Sprintf(", %s/s", Bytes(int64(float64(t.done)/s)))
	}
	return fmt.Sprintf("%s: %s in %s%s", t.name, Bytes(t.done), el.Round(100*time.Millisecond), rate)
}

// clock formats a duration as M:SS or H:MM:SS.
func clock(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// fit cuts s to width columns (runes; 0: no limit) so that a line never
// wraps, which would break the redrawing.
func fit(s string, width int) string {
	if width <= 0 || utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width])
}

// display is one terminal (or not) that trackers and log lines share.
type display struct {
	out      io.Writer
	fd       int
	terminal bool

	mu    sync.Mutex
	bars  []*Tracker // running, in start order
	drawn int        // bar lines on the screen below the last log line
	last  time.Time  // last redraw
}

func newDisplay(f *os.File) *display {
	fd := int(f.Fd())
	return &display{out: f, fd: fd, terminal: term.IsTerminal(fd)}
}

func (d *display) newTracker(name string, total int64) *Tracker {
	now := time.Now()
	t := &Tracker{name: name, total: total, d: d, start: now, last: now}
	if d.terminal {
		d.mu.Lock()
		d.bars = append(d.bars, t)
		d.redrawLocked(now)
		d.mu.Unlock()
	}
	return t
}

// width is the usable line width: one less than the terminal's columns,
// so that the cursor never sits past the last column.
func (d *display) width() int {
	if w, _, err := term.GetSize(d.fd); err == nil && w > 1 {
		return w - 1
	}
	return 79
}

// tick redraws the bars if the last redraw is old enough.
func (d *display) tick() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now := time.Now(); now.Sub(d.last) >= redrawEvery {
		d.redrawLocked(now)
	}
}

// clearLocked moves to the first bar line and erases it and everything
// below it.
func (d *display) clearLocked(b *bytes.Buffer) {
	if d.drawn > 0 {
		fmt.Fprintf(b, "\x1b[%dA", d.drawn)
	}
	if d.drawn > 0 || len(d.bars) > 0 {
		b.WriteString("\r\x1b[J")
	}
	d.drawn = 0
}

// drawLocked writes every running bar on its own line, each cleared to
// its end.
func (d *display) drawLocked(b *bytes.Buffer, now time.Time) {
	w := d.width()
	for _, t := range d.bars {
		b.WriteString(t.line(now, w))
		b.WriteString("\x1b[K\n")
	}
	d.drawn = len(d.bars)
	d.last = now
}

func (d *display) redrawLocked(now time.Time) {
	var b bytes.Buffer
	d.clearLocked(&b)
	d.drawLocked(&b, now)
	d.out.Write(b.Bytes())
}

// finish replaces t's bar by its summary line, above the running bars.
func (d *display) finish(t *Tracker) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	var b bytes.Buffer
	d.clearLocked(&b)
	for i, x := range d.bars {
		if x == t {
			d.bars = append(d.bars[:i], d.bars[i+1:]...)
			break
		}
	}
	b.WriteString(fit(t.summary(now), d.width()))
	b.WriteString("\x1b[K\n")
	d.drawLocked(&b, now)
	d.out.Write(b.Bytes())
}

// Write writes log output: on a terminal with bars showing, the bars are
// erased, p is written, and the bars are drawn again below it.
func (d *display) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.terminal || (len(d.bars) == 0 && d.drawn == 0) {
		return d.out.Write(p)
	}
	var b bytes.Buffer
	d.clearLocked(&b)
	b.Write(p)
	if len(p) > 0 && p[len(p)-1] != '\n' {
		b.WriteByte('\n')
	}
	d.drawLocked(&b, time.Now())
	if _, err := d.out.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
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
