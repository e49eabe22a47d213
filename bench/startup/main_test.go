package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestStartupSmall keeps the benchmark program working: a few runs, every
// row measured.
func TestStartupSmall(t *testing.T) {
	var out bytes.Buffer
	res, err := Run(Config{Runs: 2, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{True, GoFloor, Version, CIData, CompleteVersion, CompleteCIData} {
		if r := res.Get(name); r.Wall <= 0 || r.Min > r.Wall {
			t.Errorf("%s: %+v", name, r)
		}
	}
	if !strings.Contains(out.String(), "ecs-image version") {
		t.Errorf("table:\n%s", out.String())
	}
}

// BenchmarkStartup prints the side-by-side table once and reports the
// start-up of `ecs-image version` over /bin/true and the cidata ratio.
func BenchmarkStartup(b *testing.B) {
	res, err := Run(Config{Runs: 200, Out: os.Stdout})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(res.Get(Version).Wall-res.Get(True).Wall)/1e6, "ms-over-true")
	b.ReportMetric(float64(res.Get(GoFloor).Wall-res.Get(True).Wall)/1e6, "go-floor-ms-over-true")
	if l := res.Get(Localds); l.Wall > 0 {
		b.ReportMetric(float64(res.Get(CIData).Wall)/float64(l.Wall), "x-of-localds")
	}
	for range b.N {
	}
}
