// Command testsummary turns `go test -json` into what CI shows: with
// -stream it copies standard input to -o (the raw events) and prints the
// tests' text output as it arrives (what `go test -v` prints; lines that
// are not JSON, such as make's, pass through unchanged). Given files, it
// prints one summary: how many tests ran, passed, failed and skipped per
// file and in all, every skipped test with its reason, every failed test
// with the last lines it printed (so a log's tail shows why), and packages that failed outside a test (build errors, panics, time-outs).
// It exits 1 when anything failed.
//
//	make test TESTFLAGS=-json | testsummary -stream -o out/unit.json
//	testsummary out/unit.json out/integration.json
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json's TestEvent).
type event struct {
	Action      string
	Package     string
	Test        string
	Output      string
	FailedBuild string
}

func main() {
	stream := flag.Bool("stream", false, "copy standard input to -o and print the tests' output")
	out := flag.String("o", "", "with -stream: file for the raw JSON events")
	flag.Parse()
	if *stream {
		if err := runStream(os.Stdin, os.Stdout, *out); err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			os.Exit(1)
		}
		return
	}
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: testsummary -stream -o FILE < go-test-json | testsummary FILE...")
		os.Exit(2)
	}
	var sums []*summary
	for _, f := range flag.Args() {
		s, err := readFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			os.Exit(1)
		}
		sums = append(sums, s)
	}
	if !report(os.Stdout, sums) {
		os.Exit(1)
	}
}

// runStream copies r to the file out line by line and writes the text
// output of each event to w.
func runStream(r io.Reader, w io.Writer, out string) error {
	var raw io.Writer = io.Discard
	if out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer f.Close()
		raw = f
	}
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			if _, werr := io.WriteString(raw, line); werr != nil {
				return werr
			}
			var e event
			if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil && e.Action != "" {
				io.WriteString(w, e.Output)
			} else {
				io.WriteString(w, line)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// summary is what one file of events says.
type summary struct {
	name                    string
	passed, failed, skipped []string // package + " " + test
	skipReason              map[string]string
	failOutput              map[string][]string // failed test → its last output lines
	failedPkgs              []string            // failed outside any test
}

func (s *summary) ran() int { return len(s.passed) + len(s.failed) + len(s.skipped) }

func readFile(path string) (*summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	return summarise(name, f)
}

// summarise reads events from r; lines that are not events are ignored.
func summarise(name string, r io.Reader) (*summary, error) {
	s := &summary{name: name, skipReason: map[string]string{}, failOutput: map[string][]string{}}
	lastOut := map[string]string{}  // test → its last meaningful output line
	tail := map[string][]string{}   // test → its last failTail output lines
	failedTest := map[string]bool{} // package → a test in it failed
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadString('\n')
		var e event
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil {
			id := e.Package + " " + e.Test
			switch {
			case e.Action == "output" && e.Test != "":
				if l := strings.TrimSpace(e.Output); l != "" && !strings.HasPrefix(l, "=== ") && !strings.HasPrefix(l, "--- ") {
					lastOut[id] = l
				}
				if l := strings.TrimRight(e.Output, "\n"); strings.TrimSpace(l) != "" && !strings.HasPrefix(l, "=== ") {
					tail[id] = appendTail(tail[id], l)
				}
			case e.Test != "" && e.Action == "pass":
				s.passed = append(s.passed, id)
				delete(tail, id)
			case e.Test != "" && e.Action == "fail":
				s.failed = append(s.failed, id)
				s.failOutput[id] = tail[id]
				failedTest[e.Package] = true
			case e.Test != "" && e.Action == "skip":
				s.skipped = append(s.skipped, id)
				s.skipReason[id] = lastOut[id]
			case e.Test == "" && e.Action == "fail" && e.Package != "":
				if !failedTest[e.Package] {
					why := "no test failed: build error, panic or time-out"
					if e.FailedBuild != "" {
						why = "build failed: " + e.FailedBuild
					}
					s.failedPkgs = append(s.failedPkgs, e.Package+" ("+why+")")
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// report prints the summary and reports whether everything passed.
func report(w io.Writer, sums []*summary) bool {
	var all summary
	fmt.Fprintln(w, "=== TEST SUMMARY")
	for _, s := range sums {
		fmt.Fprintf(w, "%-12s %5d ran: %5d passed, %3d failed, %3d skipped%s\n", s.name+":", s.ran(), len(s.passed), len(s.failed), len(s.skipped), pkgNote(s.failedPkgs))
		all.passed = append(all.passed, s.passed...)
		all.failed = append(all.failed, s.failed...)
		all.skipped = append(all.skipped, s.skipped...)
		all.failedPkgs = append(all.failedPkgs, s.failedPkgs...)
	}
	if len(sums) > 1 {
		fmt.Fprintf(w, "%-12s %5d ran: %5d passed, %3d failed, %3d skipped%s\n", "total:", all.ran(), len(all.passed), len(all.failed), len(all.skipped), pkgNote(all.failedPkgs))
	}
	for _, s := range sums {
		if len(s.skipped) > 0 {
			fmt.Fprintf(w, "skipped (%s):\n", s.name)
			ids := append([]string(nil), s.skipped...)
			sort.Strings(ids)
			for _, id := range ids {
				fmt.Fprintf(w, "  %s: %s\n", id, orNone(s.skipReason[id]))
			}
		}
	}
	for _, s := range sums {
		if len(s.failed)+len(s.failedPkgs) > 0 {
			fmt.Fprintf(w, "FAILED (%s):\n", s.name)
			for _, id := range s.failed {
				fmt.Fprintf(w, "  %s\n", id)
				for _, l := range s.failOutput[id] {
					fmt.Fprintf(w, "      | %s\n", l)
				}
			}
			for _, p := range s.failedPkgs {
				fmt.Fprintf(w, "  package %s\n", p)
			}
		}
	}
	return len(all.failed)+len(all.failedPkgs) == 0
}

// failTail is how many of its last output lines a failed test shows in
// the summary, each cut at failLineMax bytes.
const (
	failTail    = 25
	failLineMax = 600
)

// appendTail adds line to the last failTail lines in tail.
func appendTail(tail []string, line string) []string {
	if len(line) > failLineMax {
		line = line[:failLineMax] + " …"
	}
	tail = append(tail, line)
	if len(tail) > failTail {
		tail = append(tail[:0:0], tail[len(tail)-failTail:]...)
	}
	return tail
}

func pkgNote(p []string) string {
	if len(p) == 0 {
		return ""
	}
	return fmt.Sprintf(", %d package(s) failed outside a test", len(p))
}

func orNone(s string) string {
	if s == "" {
		return "(no reason given)"
	}
	return s
}
