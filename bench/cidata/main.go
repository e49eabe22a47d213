// Command cidata compares ecs-image's seed writer with cloud-localds
// (Debian's cloud-image-utils, which runs genisoimage): the time for one
// seed, and for N seeds from N distinct env.yml files, printed side by side.
//
//	go run ./bench/cidata [-n 1000] [-runs 15] [-ecs-image bin/ecs-image]
//
// `make bench` runs it through BenchmarkCompare (main_test.go).
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ecs-image/ecs-image/cidata"
)

// Config selects what the comparison runs.
type Config struct {
	N        int    // seeds in the batch
	Runs     int    // repetitions for the one-seed median
	EnvFile  string // template env.yml (its appliance.domain is varied)
	ECSImage string // ecs-image binary for the per-process rows; "" builds one, "-" skips them
	Out      io.Writer
}

// Result holds the measured durations.
type Result struct {
	Rows []Row
}

// Row is one tool's measurements; a zero duration means not measured.
type Row struct {
	Name  string
	One   time.Duration // median wall time for one seed
	Batch time.Duration // wall time for N seeds
	CPU   time.Duration // CPU time (user+system, this process and its children) for N seeds
}

func main() {
	cfg := Config{Out: os.Stdout}
	flag.IntVar(&cfg.N, "n", 1000, "number of seeds (and env files) in the batch")
	flag.IntVar(&cfg.Runs, "runs", 15, "repetitions for the one-seed median")
	flag.StringVar(&cfg.EnvFile, "env", "", "template env.yml (default: cidata/testdata/env.yml)")
	flag.StringVar(&cfg.ECSImage, "ecs-image", "", `ecs-image binary for the per-process rows ("" builds one, "-" skips)`)
	flag.Parse()
	if _, err := Run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "cidata bench:", err)
		os.Exit(1)
	}
}

// Run performs the comparison and prints the table to cfg.Out.
func Run(cfg Config) (*Result, error) {
	if cfg.N <= 0 || cfg.Runs <= 0 {
		return nil, errors.New("-n and -runs must be positive")
	}
	if _, err := exec.LookPath("cloud-localds"); err != nil {
		return nil, errors.New("cloud-localds not installed (apt-get install cloud-image-utils genisoimage)")
	}
	tmpl, err := readTemplate(cfg.EnvFile)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "cidata-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	// N distinct env.yml files (the domain differs), and for cloud-localds
	// the matching meta-data files, prepared untimed.
	envs := make([]string, cfg.N)
	metas := make([]string, cfg.N)
	for i := range envs {
		domain := fmt.Sprintf("seed%05d.example.org", i)
		envs[i] = filepath.Join(work, fmt.Sprintf("env%05d.yml", i))
		metas[i] = filepath.Join(work, fmt.Sprintf("meta%05d", i))
		data := bytes.Replace(tmpl, []byte("\n  domain: "+templateDomain+"\n"), []byte("\n  domain: "+domain+"\n"), 1)
		if err := os.WriteFile(envs[i], data, 0o600); err != nil {
			return nil, err
		}
		md := fmt.Sprintf("instance-id: iid-%05d\nlocal-hostname: %s\n", i, domain)
		if err := os.WriteFile(metas[i], []byte(md), 0o600); err != nil {
			return nil, err
		}
	}

	bin := cfg.ECSImage
	if bin == "" {
		if bin, err = buildECSImage(work); err != nil {
			fmt.Fprintf(cfg.Out, "note: ecs-image process rows skipped: %v\n", err)
			bin = "-"
		}
	}

	out := func(kind string, i int) string {
		return filepath.Join(work, fmt.Sprintf("%s%05d.iso", kind, i))
	}
	writeTo := func(dir string) func(int) error {
		return func(i int) error {
			data, err := os.ReadFile(envs[i])
			if err != nil {
				return err
			}
			return cidata.Write(filepath.Join(dir, fmt.Sprintf("go%05d.iso", i)), cidata.Options{UserData: data, UserDataName: envs[i]})
		}
	}
	inProcess := writeTo(work)
	process := func(i int) error {
		return run(bin, "--log-level", "warn", "cidata", "-e", envs[i], "-o", out("cli", i))
	}
	localds := func(i int) error {
		return run("cloud-localds", out("cl", i), envs[i], metas[i])
	}

	workers := runtime.GOMAXPROCS(0)
	type tool struct {
		name string
		fn   func(int) error
		par  int
	}
	tools := []tool{{"cloud-localds (genisoimage)", localds, 1}}
	if bin != "-" {
		tools = append(tools, tool{"ecs-image cidata (one process per seed)", process, 1})
	}
	tools = append(tools, tool{"ecs-image in-process (cidata.Write)", inProcess, 1})
	// The same with the output on tmpfs, which separates ecs-image's own
	// cost from the file system's (creating a file on a slow disk costs
	// milliseconds).
	if shm, err := os.MkdirTemp("/dev/shm", "cidata-bench-"); err == nil {
		defer os.RemoveAll(shm)
		tools = append(tools,
			tool{"ecs-image in-process, output on tmpfs", writeTo(shm), 1},
			tool{fmt.Sprintf("ecs-image in-process, output on tmpfs, %d workers", workers), writeTo(shm), workers})
	}

	res := &Result{}
	for _, t := range tools {
		row := Row{Name: t.name}
		if t.par == 1 {
			times := make([]time.Duration, cfg.Runs)
			for r := range times {
				start := time.Now()
				if err := t.fn(r % cfg.N); err != nil {
					return nil, fmt.Errorf("%s: %w", t.name, err)
				}
				times[r] = time.Since(start)
			}
			slices.Sort(times)
			row.One = times[len(times)/2]
		}
		cpu0, start := cpuTime(), time.Now()
		if err := batch(cfg.N, t.par, t.fn); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		row.Batch, row.CPU = time.Since(start), cpuTime()-cpu0
		res.Rows = append(res.Rows, row)
	}

	// The outputs must be real seeds: spot-check with the reader.
	for _, p := range []string{out("go", 0), out("go", cfg.N-1)} {
		info, err := cidata.Inspect(p)
		if err != nil || info.Label != "cidata" || len(info.Files) != 2 {
			return nil, fmt.Errorf("%s is not a valid seed: %v", p, err)
		}
	}
	res.print(cfg)
	return res, nil
}

func batch(n, par int, fn func(int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, par)
	for w := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += par {
				if err := fn(i); err != nil {
					errs[w] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (res *Result) print(cfg Config) {
	base := res.Rows[0]
	fmt.Fprintf(cfg.Out, "\ncidata seeds: ecs-image vs cloud-localds — %d env files, %d CPUs, median of %d for one seed\n", cfg.N, runtime.NumCPU(), cfg.Runs)
	fmt.Fprintf(cfg.Out, "(wall times; CPU = user+system of the batch including child processes, robust to load from other jobs)\n\n")
	tw := tabwriter.NewWriter(cfg.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "tool\tone seed\tspeed-up\t%d seeds\tseeds/s\tspeed-up\tCPU/seed\tCPU speed-up\n", cfg.N)
	fmt.Fprintf(tw, "----\t--------\t--------\t%s\t-------\t--------\t--------\t------------\n", strings.Repeat("-", len(fmt.Sprint(cfg.N))+6))
	for _, r := range res.Rows {
		one, oneX := "-", "-"
		if r.One > 0 {
			one = fmtDur(r.One)
			oneX = fmt.Sprintf("%.1f×", float64(base.One)/float64(r.One))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f\t%.1f×\t%s\t%.1f×\n", r.Name, one, oneX, fmtDur(r.Batch),
			float64(cfg.N)/r.Batch.Seconds(), float64(base.Batch)/float64(r.Batch),
			fmtDur(r.CPU/time.Duration(cfg.N)), float64(base.CPU)/float64(max(r.CPU, 1)))
	}
	tw.Flush()
	fmt.Fprintln(cfg.Out)
}

// cpuTime is the user+system time of this process and its waited-for
// children so far.
func cpuTime() time.Duration {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

const templateDomain = "seed.example.org"

// readTemplate returns the template env.yml: file, or the cidata
// package's test env found from the working directory.
func readTemplate(file string) ([]byte, error) {
	candidates := []string{file}
	if file == "" {
		candidates = []string{"cidata/testdata/env.yml", "../../cidata/testdata/env.yml"}
	}
	var lastErr error
	for _, c := range candidates {
		data, err := os.ReadFile(c)
		if err == nil {
			if !bytes.Contains(data, []byte("\n  domain: "+templateDomain+"\n")) {
				return nil, fmt.Errorf("%s: no line %q to vary", c, "  domain: "+templateDomain)
			}
			return data, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// buildECSImage builds ./cmd/ecs-image of the module this program is in
// as make build installs it: the front program (-tags ecsfront), which
// writes seeds itself, with the complete program in libexec/ beside it.
func buildECSImage(dir string) (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	bin := filepath.Join(dir, "ecs-image")
	for _, b := range [][]string{
		{filepath.Join(dir, "libexec", "ecs-image")},
		{bin, "-tags", "ecsfront"},
	} {
		cmd := exec.Command("go", append([]string{"build", "-o"}, append(b, "./cmd/ecs-image")...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build ./cmd/ecs-image: %v\n%s", err, out)
		}
	}
	return bin, nil
}
