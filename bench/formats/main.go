// Command formats-bench measures output format conversion: every format on
// its own (one after another), then all formats in one parallel
// formats.Emit, and prints times and output sizes. Run it by hand (minutes
// on a real image; not part of CI):
//
//	go run ./bench/formats -image ~/.cache/ecs-image/images/sha256-....qcow2
//
// The target is: all formats in parallel take at most 1.3× the slowest
// single conversion.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ecs-image/ecs-image/formats"
	"github.com/ecs-image/ecs-image/progress"
	"github.com/ecs-image/ecs-image/qemuimg"
)

func main() {
	image := flag.String("image", "", "input qcow2 (e.g. the cached base image)")
	list := flag.String("formats", strings.Join(formats.Names(), ","), "formats to measure")
	dir := flag.String("dir", "", "scratch directory (default: a temp dir beside the image)")
	skipSingle := flag.Bool("parallel-only", false, "skip the one-at-a-time runs")
	flag.Parse()
	if *image == "" {
		fmt.Fprintln(os.Stderr, "usage: go run ./bench/formats -image IMAGE.qcow2 [-formats a,b] [-dir DIR]")
		os.Exit(2)
	}
	logrus.SetLevel(logrus.WarnLevel)
	progress.Interval = time.Hour
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *image, strings.Split(*list, ","), *dir, *skipSingle); err != nil {
		fmt.Fprintln(os.Stderr, "formats-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, image string, names []string, dir string, skipSingle bool) error {
	img, err := formats.Inspect(ctx, image)
	if err != nil {
		return err
	}
	if dir == "" {
		if dir, err = os.MkdirTemp(filepath.Dir(image), ".formats-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	st, _ := os.Stat(image)
	fmt.Printf("input %s: virtual %s, file %s; %d CPUs\n\n", image, progress.Bytes(img.VirtualSize), progress.Bytes(st.Size()), runtime.NumCPU())

	single := map[string]time.Duration{}
	sizes := map[string]int64{}
	var sum, slowest time.Duration
	slowName := ""
	if !skipSingle {
		for _, n := range names {
			d, arts, err := emit(ctx, img, dir, []string{n})
			if err != nil {
				return err
			}
			single[n] = d
			sizes[n] = arts[0].Size
			sum += d
			if d > slowest {
				slowest, slowName = d, n
			}
		}
	}
	par, arts, err := emit(ctx, img, dir, names)
	if err != nil {
		return err
	}
	for _, a := range arts {
		sizes[a.Format] = a.Size
	}

	sort.Strings(names)
	fmt.Printf("%-20s %10s %12s\n", "format", "alone", "size")
	for _, n := range names {
		alone := "-"
		if d, ok := single[n]; ok {
			alone = d.Round(100 * time.Millisecond).String()
		}
		fmt.Printf("%-20s %10s %12s\n", n, alone, progress.Bytes(sizes[n]))
	}
	fmt.Println()
	if !skipSingle {
		fmt.Printf("one after another: %s (slowest single: %s, %s)\n", sum.Round(100*time.Millisecond), slowName, slowest.Round(100*time.Millisecond))
	}
	fmt.Printf("all in parallel:   %s", par.Round(100*time.Millisecond))
	if slowest > 0 {
		fmt.Printf(" = %.2f× the slowest single (target ≤ 1.30×), %.2f× faster than sequential", float64(par)/float64(slowest), float64(sum)/float64(par))
	}
	fmt.Println()
	return nil
}

func emit(ctx context.Context, img *qemuimg.Info, dir string, names []string) (time.Duration, []formats.Artifact, error) {
	out, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(out)
	start := time.Now()
	arts, err := formats.Emit(ctx, img, out, "bench", names, formats.Options{})
	return time.Since(start), arts, err
}
