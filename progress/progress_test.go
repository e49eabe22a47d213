package progress

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/sirupsen/logrus"
)

// screen is a minimal terminal: enough of VT100 to replay what the display
// writes (printable text, \r, \n, cursor up, erase line, erase below) and
// show what a user would see.
type screen struct {
	lines    [][]rune
	row, col int
	width    int
}

func (s *screen) ensure() {
	for len(s.lines) <= s.row {
		s.lines = append(s.lines, nil)
	}
}

func (s *screen) feed(t *testing.T, data []byte) {
	t.Helper()
	rs := []rune(string(data))
	for i := 0; i < len(rs); i++ {
		switch r := rs[i]; r {
		case '\r':
			s.col = 0
		case '\n':
			s.row++
			s.col = 0 // the pty's output processing turns \n into \r\n
			s.ensure()
		case 0x1b:
			if i+1 >= len(rs) || rs[i+1] != '[' {
				t.Fatalf("unexpected escape at %d: %q", i, string(rs[i:min(i+8, len(rs))]))
			}
			j := i + 2
			for j < len(rs) && (rs[j] >= '0' && rs[j] <= '9' || rs[j] == ';') {
				j++
			}
			if j >= len(rs) {
				t.Fatalf("truncated escape sequence")
			}
			n, _ := strconv.Atoi(string(rs[i+2 : j]))
			switch rs[j] {
			case 'A':
				s.row -= max(n, 1)
				if s.row < 0 {
					t.Fatalf("cursor moved above the screen")
				}
			case 'K': // erase to end of line
				s.ensure()
				if s.col < len(s.lines[s.row]) {
					s.lines[s.row] = s.lines[s.row][:s.col]
				}
			case 'J': // erase to end of screen
				s.ensure()
				if s.col < len(s.lines[s.row]) {
					s.lines[s.row] = s.lines[s.row][:s.col]
				}
				s.lines = s.lines[:s.row+1]
			default:
				t.Fatalf("unexpected escape %q", string(rs[i:j+1]))
			}
			i = j
		default:
			if r < 0x20 {
				t.Fatalf("unexpected control character %#x", r)
			}
			s.ensure()
			if s.col >= s.width {
				t.Fatalf("line %d wraps past %d columns", s.row, s.width)
			}
			l := s.lines[s.row]
			for len(l) <= s.col {
				l = append(l, ' ')
			}
			l[s.col] = r
			s.lines[s.row] = l
			s.col++
		}
	}
}

// text is the screen's non-empty lines.
func (s *screen) text() []string {
	var out []string
	for _, l := range s.lines {
		if t := strings.TrimRight(string(l), " "); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// ptyDisplay is a display on the slave side of a new pseudo-terminal of
// cols columns; read returns what a user would see so far.
func ptyDisplay(t *testing.T, cols int) (d *display, read func() []string) {
	t.Helper()
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatalf("pty: %v", err)
	}
	t.Cleanup(func() { master.Close(); slave.Close() })
	if err := pty.Setsize(master, &pty.Winsize{Rows: 40, Cols: uint16(cols)}); err != nil {
		t.Fatal(err)
	}
	d = newDisplay(slave)
	if !d.terminal {
		t.Fatal("the pty slave is not seen as a terminal")
	}
	var mu sync.Mutex
	var raw bytes.Buffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			mu.Lock()
			raw.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	read = func() []string {
		// Wait until the pty has handed over everything written so far:
		// nothing new for 200 ms (a loaded host delays the reader), at
		// most 5 s.
		last, still := -1, 0
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && still < 10; {
			time.Sleep(20 * time.Millisecond)
			mu.Lock()
			n := raw.Len()
			mu.Unlock()
			if n == last && n > 0 {
				still++
			} else {
				still = 0
			}
			last = n
		}
		mu.Lock()
		data := bytes.ReplaceAll(raw.Bytes(), []byte("\r\n"), []byte("\n"))
		mu.Unlock()
		s := &screen{width: cols}
		s.feed(t, data)
		return s.text()
	}
	return d, read
}

var (
	barRe  = regexp.MustCompile(`^(convert [ab]) \[[=> ]{10,30}\] +\d+\.\d% +[0-9.]+ [KMG]?i?B/[0-9.]+ [KMG]?i?B +[0-9.]+ [KMG]?i?B/s ETA (\d+(:\d\d)+|--:--)$`)
	doneRe = regexp.MustCompile(`^(convert [ab]): [0-9.]+ [KMG]?i?B in [0-9hm.]+s, [0-9.]+ [KMG]?i?B/s$`)
	logRe  = regexp.MustCompile(`^level=info msg="log line \d+"$`)
)

// TestTerminalTwoTasks: two transfers running at once on a terminal get a
// line each, redrawn in place without stale characters; log lines appear
// whole above the bars; finished bars turn into summary lines.
func TestTerminalTwoTasks(t *testing.T) {
	const cols = 100
	d, read := ptyDisplay(t, cols)
	log := logrus.New()
	log.SetOutput(d)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})

	a := d.newTracker("convert a", 3<<30)
	b := d.newTracker("convert b", 100<<20)
	// Long numbers first (a fast start), then shorter ones: without
	// clearing, the old line's tail would stay on the screen.
	a.start = time.Now().Add(-time.Millisecond)
	a.Add(2 << 30)
	b.Add(1 << 20)
	d.mu.Lock()
	d.redrawLocked(time.Now())
	d.mu.Unlock()
	a.start = time.Now().Add(-time.Hour)
	b.start = time.Now().Add(-time.Hour)

	var wg sync.WaitGroup
	for _, tr := range []*Tracker{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				tr.Add(1 << 20)
				time.Sleep(15 * time.Millisecond)
			}
		}()
	}
	for i := 0; i < 5; i++ {
		log.Infof("log line %d", i)
		time.Sleep(40 * time.Millisecond)
	}
	wg.Wait()
	d.mu.Lock()
	d.redrawLocked(time.Now())
	d.mu.Unlock()

	lines := read()
	if len(lines) != 7 {
		t.Fatalf("%d lines on the screen, want 5 log lines and 2 bars:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, l := range lines[:5] {
		if !logRe.MatchString(l) || !strings.Contains(l, "log line "+strconv.Itoa(i)) {
			t.Errorf("log line %d is %q", i, l)
		}
	}
	for i, name := range []string{"convert a", "convert b"} {
		m := barRe.FindStringSubmatch(lines[5+i])
		if m == nil || m[1] != name {
			t.Errorf("bar %d: %q (stale or cut?)", i, lines[5+i])
		}
		if len(lines[5+i]) >= cols {
			t.Errorf("bar %d is %d columns wide on a %d-column terminal", i, len(lines[5+i]), cols)
		}
	}

	b.Done()
	log.Info("log line 5")
	a.Done()
	a.Done() // twice: no second summary
	lines = read()
	if len(lines) != 8 {
		t.Fatalf("%d lines after Done, want 6 log lines and 2 summaries:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if m := doneRe.FindStringSubmatch(lines[5]); m == nil || m[1] != "convert b" {
		t.Errorf("summary of b: %q", lines[5])
	}
	if !logRe.MatchString(lines[6]) {
		t.Errorf("log line after b finished: %q", lines[6])
	}
	if m := doneRe.FindStringSubmatch(lines[7]); m == nil || m[1] != "convert a" {
		t.Errorf("summary of a: %q", lines[7])
	}
	// With no bar running, log output passes straight through.
	log.Info("log line 6")
	if lines = read(); len(lines) != 9 || !logRe.MatchString(lines[8]) {
		t.Errorf("after the bars: %q", lines)
	}
}

// TestNarrowTerminal: bars are cut to the terminal's width, so that they
// never wrap (a wrapped line breaks the redrawing).
func TestNarrowTerminal(t *testing.T) {
	d, read := ptyDisplay(t, 40)
	a := d.newTracker("convert a very long name that does not fit", 1<<30)
	a.Add(1 << 29)
	d.mu.Lock()
	d.redrawLocked(time.Now())
	d.mu.Unlock()
	lines := read()
	if len(lines) != 1 || len([]rune(lines[0])) > 39 {
		t.Fatalf("screen %q", lines)
	}
}

// TestNotTerminal: without a terminal, progress is plain log lines every
// Interval, with no carriage return or escape sequence.
func TestNotTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d := newDisplay(w)
	if d.terminal {
		t.Fatal("a pipe is seen as a terminal")
	}
	var logged bytes.Buffer
	old, oldInterval := logrus.StandardLogger().Out, Interval
	logrus.SetOutput(&logged)
	Interval = 10 * time.Millisecond
	defer func() { logrus.SetOutput(old); Interval = oldInterval }()

	a := d.newTracker("convert a", 10<<20)
	b := d.newTracker("convert b", 0)
	for i := 0; i < 5; i++ {
		time.Sleep(12 * time.Millisecond)
		a.Add(1 << 20)
		b.Add(1 << 20)
	}
	a.Done()
	b.Done()
	if _, err := d.Write([]byte("passed through\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	direct, _ := io.ReadAll(r)
	if string(direct) != "passed through\n" {
		t.Errorf("the display wrote %q to a non-terminal", direct)
	}
	out := logged.String()
	if strings.ContainsAny(out, "\r\x1b") {
		t.Errorf("control characters in plain output: %q", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	na, nb := 0, 0
	for _, l := range lines {
		switch {
		case strings.Contains(l, `msg="convert a [`) && strings.Contains(l, "ETA"):
			na++
		case strings.Contains(l, `msg="convert b `) && strings.Contains(l, "/s"):
			nb++
		default:
			t.Errorf("unexpected line %q", l)
		}
	}
	if na < 3 || nb < 3 {
		t.Errorf("%d lines for a, %d for b, want a few each:\n%s", na, nb, out)
	}
}

func TestClockAndFit(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0:00", 61 * time.Second: "1:01", 3*time.Hour + 4*time.Minute + 5*time.Second: "3:04:05"} {
		if got := clock(d); got != want {
			t.Errorf("clock(%v) = %q, want %q", d, got, want)
		}
	}
	if fit("héllo", 3) != "hél" || fit("abc", 0) != "abc" || fit("abc", 5) != "abc" {
		t.Error("fit")
	}
}
