// Command startup measures what it costs to start the ecs-image CLI, side
// by side with /bin/true (the floor of any process), a minimal Go program
// built with the same flags (the floor of any Go binary: the runtime's own
// start-up) and cloud-localds (the tool a user would otherwise run for a
// seed): `ecs-image version`, and `ecs-image cidata` of one seed per
// process, as `make build` and the .deb install ecs-image (the front
// program, cmd/ecs-image/main_front.go) and as the complete program alone
// (bin/libexec/ecs-image; what `go install ./cmd/ecs-image` builds).
//
//	go run ./bench/startup [-runs 200] [-ecs-image bin/ecs-image]
//
// -ecs-image names the front program; the complete one is looked for at
// libexec/ecs-image beside it (its rows are skipped when it is not there).
//
// The programs under test are copied into a work directory first, as an
// installer would (see install). The commands run round-robin, so that
// load from other jobs falls on all of them alike; each row gives the
// median and minimum wall time and the median CPU time (user+system of
// the child), which is the steadier number on a loaded machine. `make bench` runs it through BenchmarkStartup.
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
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Config selects what the comparison runs.
type Config struct {
	Runs     int    // runs of each command
	ECSImage string // ecs-image binary; "" builds one as `make build` does
	EnvFile  string // env.yml for the cidata rows (default: cidata/testdata/env.yml)
	Out      io.Writer
}

// Row is one command's measurements.
type Row struct {
	Name string
	Wall time.Duration // median
	Min  time.Duration // minimum wall time
	CPU  time.Duration // median user+system of the process (and its children)
}

// Result holds the rows, in the order printed.
type Result struct{ Rows []Row }

// Get returns the row named name.
func (r *Result) Get(name string) Row {
	for _, row := range r.Rows {
		if row.Name == name {
			return row
		}
	}
	return Row{}
}

// Row names.
const (
	True    = "/bin/true"
	GoFloor = "minimal Go program"
	Version = "ecs-image version"
	CIData  = "ecs-image cidata (one seed)"
	Localds = "cloud-localds (one seed)"
	// The complete program alone (go install; bin/libexec/ecs-image).
	CompleteVersion = "complete program: version"
	CompleteCIData  = "complete program: cidata"
)

func main() {
	cfg := Config{Out: os.Stdout}
	flag.IntVar(&cfg.Runs, "runs", 200, "runs of each command")
	flag.StringVar(&cfg.ECSImage, "ecs-image", "", `ecs-image binary ("" builds one with make build's flags)`)
	flag.StringVar(&cfg.EnvFile, "env", "", "env.yml for the cidata rows (default: cidata/testdata/env.yml)")
	flag.Parse()
	if _, err := Run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "startup bench:", err)
		os.Exit(1)
	}
}

// Run performs the comparison and prints the table to cfg.Out.
func Run(cfg Config) (*Result, error) {
	if cfg.Runs <= 0 {
		return nil, errors.New("-runs must be positive")
	}
	work, err := os.MkdirTemp("", "startup-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	bin := cfg.ECSImage
	if bin == "" {
		if bin, err = buildECSImage(work); err != nil {
			return nil, err
		}
	}
	floor, err := buildGoFloor(work)
	if err != nil {
		return nil, err
	}
	if bin, floor, err = install(work, bin, floor); err != nil {
		return nil, err
	}
	envFile, err := findEnv(cfg.EnvFile)
	if err != nil {
		return nil, err
	}
	meta := filepath.Join(work, "meta-data")
	if err := os.WriteFile(meta, []byte("instance-id: iid-bench\nlocal-hostname: seed.example.org\n"), 0o600); err != nil {
		return nil, err
	}
	cmds := []struct {
		name string
		argv []string
	}{
		{True, []string{"/bin/true"}},
		{GoFloor, []string{floor}},
		{Version, []string{bin, "version"}},
		{CIData, []string{bin, "--log-level", "warn", "cidata", "-e", envFile, "-o", filepath.Join(work, "go.iso")}},
	}
	if complete := filepath.Join(filepath.Dir(bin), "libexec", "ecs-image"); isFile(complete) {
		cmds = append(cmds, []struct {
			name string
			argv []string
		}{
			{CompleteVersion, []string{complete, "version"}},
			{CompleteCIData, []string{complete, "--log-level", "warn", "cidata", "-e", envFile, "-o", filepath.Join(work, "complete.iso")}},
		}...)
	}
	if p, err := exec.LookPath("cloud-localds"); err == nil {
		cmds = append(cmds, struct {
			name string
			argv []string
		}{Localds, []string{p, filepath.Join(work, "cl.iso"), envFile, meta}})
	} else {
		fmt.Fprintln(cfg.Out, "note: cloud-localds not installed (apt-get install cloud-image-utils genisoimage); its row is skipped")
	}
	walls := make([][]time.Duration, len(cmds))
	cpus := make([][]time.Duration, len(cmds))
	for r := -1; r < cfg.Runs; r++ { // r == -1 warms the page cache
		for i, c := range cmds {
			cmd := exec.Command(c.argv[0], c.argv[1:]...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			start := time.Now()
			if err := cmd.Run(); err != nil {
				return nil, fmt.Errorf("%s: %v: %s", c.name, err, strings.TrimSpace(stderr.String()))
			}
			wall := time.Since(start)
			if r >= 0 {
				walls[i] = append(walls[i], wall)
				cpus[i] = append(cpus[i], cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
			}
		}
	}
	res := &Result{}
	for i, c := range cmds {
		slices.Sort(walls[i])
		slices.Sort(cpus[i])
		res.Rows = append(res.Rows, Row{Name: c.name, Wall: walls[i][len(walls[i])/2], Min: walls[i][0], CPU: cpus[i][len(cpus[i])/2]})
	}
	res.print(cfg)
	return res, nil
}

func (res *Result) print(cfg Config) {
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(cfg.Out, "\nCLI start-up: %d runs each, round-robin; load average %s\n", cfg.Runs, strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	tw := tabwriter.NewWriter(cfg.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "command\tmedian wall\tmin wall\tmedian CPU\tover /bin/true (median wall)")
	fmt.Fprintln(tw, "-------\t-----------\t--------\t----------\t----------------------------")
	base := res.Rows[0]
	for _, r := range res.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, ms(r.Wall), ms(r.Min), ms(r.CPU), ms(r.Wall-base.Wall))
	}
	tw.Flush()
	if l := res.Get(Localds); l.Wall > 0 {
		for _, name := range []string{CIData, CompleteCIData} {
			if c := res.Get(name); c.Wall > 0 {
				fmt.Fprintf(cfg.Out, "%s / cloud-localds: %.2f× median wall, %.2f× min wall, %.2f× CPU\n",
					name, float64(c.Wall)/float64(l.Wall), float64(c.Min)/float64(l.Min), float64(c.CPU)/float64(max(l.CPU, 1)))
			}
		}
	}
	fmt.Fprintln(cfg.Out)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// findEnv returns file, or the cidata package's test env.yml found from
// the working directory.
func findEnv(file string) (string, error) {
	if file != "" {
		return file, nil
	}
	for _, c := range []string{"cidata/testdata/env.yml", "../../cidata/testdata/env.yml"} {
		if _, err := os.Stat(c); err == nil {
			return filepath.Abs(c)
		}
	}
	return "", errors.New("cidata/testdata/env.yml not found (run from the module root or pass -env)")
}

// buildECSImage builds ./cmd/ecs-image as `make build` does (static,
// trimmed, stripped: the size of the binary matters here): the front
// program dir/ecs-image and the complete one dir/libexec/ecs-image.
func buildECSImage(dir string) (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "ecs-image")
	for _, b := range [][]string{
		{filepath.Join(dir, "libexec", "ecs-image")},
		{bin, "-tags", "ecsfront"},
	} {
		cmd := exec.Command("go", append([]string{"build", "-trimpath", "-ldflags", "-s -w", "-o"}, append(b, "./cmd/ecs-image")...)...)
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build ./cmd/ecs-image: %v\n%s", err, out)
		}
	}
	return bin, nil
}

// install copies the programs under test into dir/inst as an installer
// would (ecs-image, libexec/ecs-image beside it, go-floor), by write(2):
// the Go linker writes its output through mmap(2), and a binary run
// straight from that page cache took ≈1 ms (≈50 page faults) longer to
// start here than the same bytes written by cp, dpkg or this function,
// which is what a user runs (and what the page cache holds after the
// file has been read back from disk).
func install(dir, bin, floor string) (string, string, error) {
	inst := filepath.Join(dir, "inst")
	if err := os.MkdirAll(filepath.Join(inst, "libexec"), 0o755); err != nil {
		return "", "", err
	}
	copyFile := func(src, dst string) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o755)
	}
	if err := copyFile(bin, filepath.Join(inst, "ecs-image")); err != nil {
		return "", "", err
	}
	if complete := filepath.Join(filepath.Dir(bin), "libexec", "ecs-image"); isFile(complete) {
		if err := copyFile(complete, filepath.Join(inst, "libexec", "ecs-image")); err != nil {
			return "", "", err
		}
	}
	if err := copyFile(floor, filepath.Join(inst, "go-floor")); err != nil {
		return "", "", err
	}
	return filepath.Join(inst, "ecs-image"), filepath.Join(inst, "go-floor"), nil
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// buildGoFloor builds a Go program that only writes a line, with the flags
// of buildECSImage: what any Go binary costs to start.
func buildGoFloor(dir string) (string, error) {
	src := filepath.Join(dir, "floor")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module floor\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nimport \"os\"\n\nfunc main() { os.Stdout.WriteString(\"floor\\n\") }\n"), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "go-floor")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build (minimal Go program): %v\n%s", err, out)
	}
	return bin, nil
}
