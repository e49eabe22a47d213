package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A stream as `make test TESTFLAGS=-json` writes it: make's own lines,
// then events (shape of cmd/test2json's output, Go 1.26).
const stream = `go build -o bin/ecs-image ./cmd/ecs-image
{"Action":"start","Package":"example.org/a"}
{"Action":"run","Package":"example.org/a","Test":"TestOK"}
{"Action":"output","Package":"example.org/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"example.org/a","Test":"TestOK","Output":"--- PASS: TestOK (0.00s)\n"}
{"Action":"pass","Package":"example.org/a","Test":"TestOK","Elapsed":0}
{"Action":"run","Package":"example.org/a","Test":"TestTool"}
{"Action":"output","Package":"example.org/a","Test":"TestTool","Output":"=== RUN   TestTool\n"}
{"Action":"output","Package":"example.org/a","Test":"TestTool","Output":"    a_test.go:9: nginx is not installed (make deps)\n"}
{"Action":"output","Package":"example.org/a","Test":"TestTool","Output":"--- SKIP: TestTool (0.00s)\n"}
{"Action":"skip","Package":"example.org/a","Test":"TestTool","Elapsed":0}
{"Action":"run","Package":"example.org/a","Test":"TestSub"}
{"Action":"run","Package":"example.org/a","Test":"TestSub/one"}
{"Action":"output","Package":"example.org/a","Test":"TestSub/one","Output":"    a_test.go:20: got 1, want 2\n"}
{"Action":"fail","Package":"example.org/a","Test":"TestSub/one","Elapsed":0}
{"Action":"fail","Package":"example.org/a","Test":"TestSub","Elapsed":0}
{"Action":"output","Package":"example.org/a","Output":"FAIL\n"}
{"Action":"fail","Package":"example.org/a","Elapsed":0.1}
{"Action":"start","Package":"example.org/b"}
{"Action":"output","Package":"example.org/b","Output":"panic: boom\n"}
{"Action":"fail","Package":"example.org/b","Elapsed":0.1}
{"ImportPath":"example.org/c","Action":"build-output","Output":"c.go:3:1: syntax error\n"}
{"Action":"fail","Package":"example.org/c","FailedBuild":"example.org/c"}
{"Action":"skip","Package":"example.org/d"}
make: *** [Makefile:57: test] Error 1
`

func TestStreamPrintsTextAndKeepsEvents(t *testing.T) {
	out := filepath.Join(t.TempDir(), "results", "unit.json")
	var text bytes.Buffer
	if err := runStream(strings.NewReader(stream), &text, out); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil || string(raw) != stream {
		t.Errorf("raw events not kept as read: %v\n%s", err, raw)
	}
	for _, want := range []string{
		"go build -o bin/ecs-image ./cmd/ecs-image\n=== RUN   TestOK\n--- PASS: TestOK (0.00s)\n",
		"    a_test.go:9: nginx is not installed (make deps)\n--- SKIP: TestTool (0.00s)\n",
		"panic: boom\n", "c.go:3:1: syntax error\n", "make: *** [Makefile:57: test] Error 1\n",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, text.String())
		}
	}
	if strings.Contains(text.String(), `"Action"`) {
		t.Errorf("JSON in the text output:\n%s", text.String())
	}
}

func TestSummary(t *testing.T) {
	unit, err := summarise("unit", strings.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	ok, err := summarise("integration", strings.NewReader(`{"Action":"pass","Package":"example.org/it","Test":"TestBoot"}`+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	var w bytes.Buffer
	if report(&w, []*summary{unit, ok}) {
		t.Error("report: all passed")
	}
	want := `=== TEST SUMMARY
unit:            4 ran:     1 passed,   2 failed,   1 skipped, 2 package(s) failed outside a test
integration:     1 ran:     1 passed,   0 failed,   0 skipped
total:           5 ran:     2 passed,   2 failed,   1 skipped, 2 package(s) failed outside a test
skipped (unit):
  example.org/a TestTool: a_test.go:9: nginx is not installed (make deps)
FAILED (unit):
  example.org/a TestSub/one
      |     a_test.go:20: got 1, want 2
  example.org/a TestSub
  package example.org/b (no test failed: build error, panic or time-out)
  package example.org/c (build failed: example.org/c)
`
	if w.String() != want {
		t.Errorf("report:\n%s\nwant:\n%s", w.String(), want)
	}
	w.Reset()
	if !report(&w, []*summary{ok}) || strings.Contains(w.String(), "total:") {
		t.Errorf("one passing file:\n%s", w.String())
	}
}
