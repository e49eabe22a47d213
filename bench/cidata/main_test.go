package main

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ecs-image/ecs-image/testenv"
)

// TestCompareSmall runs the comparison on a few seeds so that the
// benchmark program itself stays working (it needs cloud-localds).
func TestCompareSmall(t *testing.T) {
	testenv.Tools(t, "cloud-localds")
	var out bytes.Buffer
	res, err := Run(Config{N: 4, Runs: 1, ECSImage: "-", Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) < 2 || !strings.Contains(out.String(), "cloud-localds (genisoimage)") {
		t.Errorf("table:\n%s", out.String())
	}
	for _, r := range res.Rows {
		if r.Batch <= 0 {
			t.Errorf("%s: no batch time", r.Name)
		}
	}
}

var compare struct {
	once sync.Once
	res  *Result
	err  error
}

// BenchmarkCompare prints the side-by-side table (once per `go test`
// run; the work is not repeated for b.N). ECS_BENCH_SEEDS overrides the
// batch size of 1000.
func BenchmarkCompare(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("ECS_BENCH_SEEDS")); err == nil && v > 0 {
		n = v
	}
	compare.once.Do(func() { compare.res, compare.err = Run(Config{N: n, Runs: 15, Out: os.Stdout}) })
	if compare.err != nil {
		b.Fatal(compare.err)
	}
	res := compare.res
	for _, r := range res.Rows {
		if strings.HasPrefix(r.Name, "ecs-image in-process (") {
			b.ReportMetric(float64(r.One)/1e6, "ms/seed")
			b.ReportMetric(r.Batch.Seconds(), "s/batch")
			b.ReportMetric(float64(res.Rows[0].One)/float64(r.One), "x-vs-localds")
		}
	}
}
