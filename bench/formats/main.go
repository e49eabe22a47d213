// Command formats-bench measures output format conversion: the stream
// VMDK written by package vmdkstream (at level 6 and at its default level,
// ECS_IMAGE_VMDK_LEVEL) and by qemu-img side by side, every
// format on its own (one after another), then all formats in one parallel
// formats.Emit, and prints wall and CPU times (this process and its
// qemu-img children) and output sizes. Run it by hand (minutes on a real
// image; not part of CI):
//
//	go run ./bench/formats -image ~/.cache/ecs-image/images/sha256-....qcow2
//
// The targets are: all formats in parallel take at most 1.3× the slowest
// single conversion, and at most 1.5× the qcow2 alone (issue 19).
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
	"syscall"
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
	vmdkOnly := flag.Bool("vmdk-only", false, "only the side-by-side VMDK runs")
	flag.Parse()
	if *image == "" {
		fmt.Fprintln(os.Stderr, "usage: go run ./bench/formats -image IMAGE.qcow2 [-formats a,b] [-dir DIR]")
		os.Exit(2)
	}
	logrus.SetLevel(logrus.WarnLevel)
	progress.Interval = time.Hour
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *image, strings.Split(*list, ","), *dir, *skipSingle, *vmdkOnly); err != nil {
		fmt.Fprintln(os.Stderr, "formats-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, image string, names []string, dir string, skipSingle, vmdkOnly bool) error {
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

	// The stream VMDK, side by side: qemu-img convert -O vmdk -o
	// subformat=streamOptimized (one thread), then vmdkstream from
	// qemu-img's sparse raw disk (every core).
	// vmdkstream at level 6 (about qemu-img's size) and at its default
	// level (ECS_IMAGE_VMDK_LEVEL unset: 1).
	fmt.Printf("%-50s %8s %8s %12s %s\n", "vmdk writer", "wall", "CPU", "size", "load")
	var vmdkTimes [3]time.Duration
	for i, w := range []struct{ writer, level string }{{"qemu-img", ""}, {"ecs-image", "6"}, {"ecs-image", ""}} {
		os.Setenv(formats.VMDKWriterEnv, w.writer)
		os.Setenv(formats.VMDKLevelEnv, w.level)
		load := loadAvg()
		m, arts, err := emit(ctx, img, dir, []string{"vmdk"})
		if err != nil {
			return err
		}
		vmdkTimes[i] = m.wall
		name := formats.VMDKWriterEnv + "=" + w.writer
		if w.writer == "ecs-image" {
			name += " " + formats.VMDKLevelEnv + "=" + w.level
		}
		fmt.Printf("%-50s %8s %8s %12s %s\n", name, m.wall.Round(100*time.Millisecond), m.cpu.Round(100*time.Millisecond), progress.Bytes(arts[0].Size), load)
	}
	os.Unsetenv(formats.VMDKWriterEnv)
	os.Unsetenv(formats.VMDKLevelEnv)
	fmt.Printf("vmdkstream: %.2f× (level 6), %.2f× (default level) qemu-img's wall time\n\n",
		float64(vmdkTimes[1])/float64(vmdkTimes[0]), float64(vmdkTimes[2])/float64(vmdkTimes[0]))
	if vmdkOnly {
		return nil
	}

	single := map[string]time.Duration{}
	sizes := map[string]int64{}
	var sum, slowest time.Duration
	slowName := ""
	if !skipSingle {
		for _, n := range names {
			m, arts, err := emit(ctx, img, dir, []string{n})
			if err != nil {
				return err
			}
			d := m.wall
			single[n] = d
			sizes[n] = arts[0].Size
			sum += d
			if d > slowest {
				slowest, slowName = d, n
			}
		}
	}
	load := loadAvg()
	pm, arts, err := emit(ctx, img, dir, names)
	if err != nil {
		return err
	}
	par := pm.wall
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
	fmt.Printf("all in parallel:   %s (CPU %s, load before %s)", par.Round(100*time.Millisecond), pm.cpu.Round(100*time.Millisecond), load)
	if slowest > 0 {
		fmt.Printf(" = %.2f× the slowest single (target ≤ 1.30×), %.2f× faster than sequential", float64(par)/float64(slowest), float64(sum)/float64(par))
	}
	if q, ok := single["qcow2"]; ok {
		fmt.Printf(", %.2f× the qcow2 alone (target ≤ 1.50×)", float64(par)/float64(q))
	}
	fmt.Println()
	return nil
}

// measure is one Emit's wall time and the CPU time (user + system) of this
// process and its children meanwhile.
type measure struct{ wall, cpu time.Duration }

func emit(ctx context.Context, img *qemuimg.Info, dir string, names []string) (measure, []formats.Artifact, error) {
	out, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		return measure{}, nil, err
	}
	defer os.RemoveAll(out)
	cpu0 := cpuTime()
	start := time.Now()
	arts, err := formats.Emit(ctx, img, out, "bench", names, formats.Options{})
	return measure{time.Since(start), cpuTime() - cpu0}, arts, err
}

// cpuTime is the user + system time of this process and its waited-for
// children.
func cpuTime() time.Duration {
	var sum time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			sum += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return sum
}

// loadAvg is the 1-minute load average (the machine is shared: every time
// grows with it).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
