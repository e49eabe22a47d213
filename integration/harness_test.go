//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/qemu"
)

// binDir holds ecs-image and ecs-agent, built once for the whole run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ecs-image-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, c := range []string{"ecs-image", "ecs-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../cmd/"+c)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", c, err)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ecsImagePath is the path of the ecs-image binary under test.
func ecsImagePath() string { return filepath.Join(binDir, "ecs-image") }

// ecsAgentPath is the path of the static ecs-agent binary under test.
func ecsAgentPath() string { return filepath.Join(binDir, "ecs-agent") }

// ecsImage runs ecs-image with args and returns its stdout; the test fails
// (showing stderr) when it exits non-zero.
func ecsImage(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := ecsImageRun(args...)
	if err != nil {
		t.Fatalf("ecs-image %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// ecsImageRun runs ecs-image and returns stdout, stderr and the exit error.
func ecsImageRun(args ...string) (string, string, error) { return ecsImageRunEnv(nil, args...) }

// ecsImageRunEnv is ecsImageRun with env (KEY=VALUE) added to the environment.
func ecsImageRunEnv(env []string, args ...string) (string, string, error) {
	cmd := exec.Command(ecsImagePath(), args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

var (
	baseMu    sync.Mutex
	baseCache = map[string]string{}
)

// baseImage returns the local Debian 12 base qcow2, built from the package
// mirror with `ecs-image base build` (cached per machine; the first call in
// a fresh cache takes a few minutes). Its stdout is the cached image's path.
func baseImage(t *testing.T) string { t.Helper(); return suiteBase(t, "bookworm") }

// suiteBase is baseImage for another suite (`base build --suite`), e.g.
// trixie, the appliance template's base.
func suiteBase(t *testing.T, suite string) string {
	t.Helper()
	baseMu.Lock()
	defer baseMu.Unlock()
	if p, ok := baseCache[suite]; ok {
		return p
	}
	out, errOut, err := ecsImageRun("base", "build", "--suite", suite)
	if err != nil {
		t.Fatalf("ecs-image base build --suite %s: %v\n%s", suite, err, errOut)
	}
	baseCache[suite] = strings.TrimSpace(out)
	return baseCache[suite]
}

// bootOptions says what bootBase boots and how.
type bootOptions struct {
	Name      string        // QEMU machine name; the guest's hostname with a Raw seed
	Image     string        // backing image of the overlay; "" means the local base (baseImage)
	Size      int64         // overlay size in bytes; 0 keeps the image's
	Timeout   time.Duration // of the context the guest runs under; default 20m
	Memory    int           // MiB; default 1024
	DiskCache string        // QEMU cache mode of the overlay; "" is QEMU's default
	Forwards  []int         // guest TCP ports forwarded to the host, besides 22
	ExtraArgs []string      // more QEMU arguments (e.g. a data disk: -drive file=...,if=virtio)

	// Seed is a ready seed ISO attached as a CD-ROM; bootBase then makes no
	// key and does not wait for SSH. Without it bootBase writes a seed that
	// creates User (password-less sudo, a fresh ed25519 key), boots and
	// waits for SSH as that user.
	Seed string
	User string // of the written seed; default "builder"
	// UserData is appended to the written seed's cloud-config (after its
	// users: list), e.g. an env.yml's appliance: and ecs: keys.
	UserData string
	// Env makes cidata validate the written user-data as an env.yml
	// (otherwise it is plain cloud-config, with Name as the hostname).
	Env bool
	// SeedFormat of the written seed ("" is a NoCloud ISO); a VFAT seed is
	// attached as a read-only virtio disk, the ISO formats as CD-ROMs.
	SeedFormat cidata.Format
	SSHTimeout time.Duration // default 12m
}

// bootedGuest is a guest started by bootBase. It is killed, and the
// console tail logged if the test failed, when the test ends.
type bootedGuest struct {
	Ctx      context.Context // ends after Timeout; cancelled when the test ends
	Dir      string          // the test's temporary directory (overlay, seed, serial.log)
	M        *qemu.Machine
	Serial   string               // path of the serial console log
	Key      *communicator.Key    // nil with a ready Seed
	UserData string               // the written seed's user-data
	Seed     *cidata.Seed         // the written seed (instance-id, ...); nil with a ready Seed
	C        *communicator.Client // SSH as User; nil with a ready Seed
}

// bootBase boots an overlay of the local Debian base (or opts.Image) under
// QEMU with a cidata seed and, unless opts.Seed is given, waits for SSH.
func bootBase(t *testing.T, opts bootOptions) *bootedGuest {
	t.Helper()
	if opts.Image == "" {
		opts.Image = baseImage(t)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 20 * time.Minute
	}
	if opts.Memory == 0 {
		opts.Memory = 1024
	}
	if opts.User == "" {
		opts.User = "builder"
	}
	if opts.SSHTimeout == 0 {
		opts.SSHTimeout = 12 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	t.Cleanup(cancel)
	g := &bootedGuest{Ctx: ctx, Dir: t.TempDir()}
	g.Serial = filepath.Join(g.Dir, "serial.log")
	disk := filepath.Join(g.Dir, "disk.qcow2")
	if err := qemu.Overlay(ctx, opts.Image, "qcow2", disk, opts.Size); err != nil {
		t.Fatal(err)
	}
	cfg := qemu.Config{
		Name: opts.Name, Disk: disk, Memory: opts.Memory, CPUs: 2,
		SerialLog: g.Serial, DiskCache: opts.DiskCache,
	}
	for _, p := range opts.Forwards {
		cfg.Forwards = append(cfg.Forwards, qemu.Forward{Guest: p})
	}
	if opts.Seed != "" {
		cfg.CDROMs = []string{opts.Seed}
	} else {
		key, err := communicator.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		g.Key = key
		g.UserData = "#cloud-config\nusers:\n  - name: " + opts.User + "\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n      - \"" + key.AuthorizedKey + "\"\n" + opts.UserData
		o := cidata.Options{Format: opts.SeedFormat, UserData: []byte(g.UserData), Raw: !opts.Env}
		if !opts.Env {
			o.Hostname = opts.Name
		}
		seed, err := cidata.Prepare(o)
		if err != nil {
			t.Fatal(err)
		}
		img, err := seed.Image()
		if err != nil {
			t.Fatal(err)
		}
		g.Seed = seed
		path := filepath.Join(g.Dir, "seed.img")
		if err := cidata.WriteImage(path, img); err != nil {
			t.Fatal(err)
		}
		if seed.Format == cidata.VFAT {
			cfg.ExtraArgs = []string{"-drive", "file=" + path + ",format=raw,if=virtio,readonly=on"}
		} else {
			cfg.CDROMs = []string{path}
		}
		cfg.Forwards = append([]qemu.Forward{{Guest: 22}}, cfg.Forwards...)
	}
	cfg.ExtraArgs = append(cfg.ExtraArgs, opts.ExtraArgs...)
	m, err := qemu.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	g.M = m
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("serial console tail:\n%s", m.SerialTail(60))
		}
		m.Kill()
		<-m.Done()
	})
	if g.Key == nil {
		return g
	}
	addr := "127.0.0.1:" + strconv.Itoa(m.HostPort(22))
	c, err := communicator.Dial(ctx, addr, opts.User, g.Key.Signer, opts.SSHTimeout, m.Done())
	if err != nil {
		t.Fatalf("SSH to %s: %v (QEMU: %v)", opts.Name, err, m.Err())
	}
	t.Cleanup(func() { c.Close() })
	g.C = c
	t.Logf("%s: boot to SSH %s (accel %s)", opts.Name, time.Since(m.Started).Round(100*time.Millisecond), m.Config.Accel)
	return g
}

// Root runs cmd in the guest with sudo and fails the test when it fails.
func (g *bootedGuest) Root(t *testing.T, cmd string) string {
	t.Helper()
	out, err := g.C.Output(g.Ctx, cmd, true)
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return out
}

// Put writes content to the guest path remote (as root) with mode.
func (g *bootedGuest) Put(t *testing.T, remote, content string, mode os.FileMode) {
	t.Helper()
	local := filepath.Join(g.Dir, "put-"+filepath.Base(remote))
	if err := os.WriteFile(local, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.C.Upload(g.Ctx, local, remote, communicator.UploadOptions{Mode: mode, Sudo: true}); err != nil {
		t.Fatal(err)
	}
}

// cloudInitDone waits for cloud-init in the guest and fails the test
// unless it finished cleanly: `cloud-init status --wait` exits 0 with
// status done, and /run/cloud-init/result.json lists no errors. It returns
// the datasource cloud-init used.
// onlySchemaWarnings: `cloud-init status --long` says "degraded done"
// (exit 2) and its only recoverable errors are schema warnings. Debian 13's
// cloud-init (25) warns about the top-level keys of an env.yml (appliance,
// ecs, …), which the appliance reads from the user-data and cloud-init's
// schema does not know; Debian 12's did not.
func onlySchemaWarnings(out string) bool {
	if !strings.Contains(out, "\nexit=2\n") || !strings.Contains(out, "degraded done") {
		return false
	}
	_, rec, ok := strings.Cut(out, "recoverable_errors:")
	if !ok {
		return false
	}
	n := 0
	for _, l := range strings.Split(rec, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "- ") {
			continue
		}
		if !strings.Contains(l, "failed schema validation") {
			return false
		}
		n++
	}
	return n > 0
}

func cloudInitDone(t *testing.T, ctx context.Context, c *communicator.Client) string {
	t.Helper()
	out, err := c.Output(ctx, "timeout 900 cloud-init status --wait --long; echo \"exit=$?\"", false)
	if err != nil || !strings.Contains(out, "status: done") || !(strings.Contains(out, "\nexit=0\n") || onlySchemaWarnings(out)) {
		t.Errorf("cloud-init did not finish cleanly (%v):\n%s", err, out)
	}
	res, err := c.Output(ctx, "cat /run/cloud-init/result.json", false)
	if err != nil {
		t.Errorf("/run/cloud-init/result.json: %v", err)
		return ""
	}
	var r struct {
		V1 struct {
			Datasource string   `json:"datasource"`
			Errors     []string `json:"errors"`
		} `json:"v1"`
	}
	if err := json.Unmarshal([]byte(res), &r); err != nil {
		t.Errorf("/run/cloud-init/result.json: %v\n%s", err, res)
	} else if len(r.V1.Errors) != 0 {
		t.Errorf("cloud-init reported errors: %q", r.V1.Errors)
	}
	return r.V1.Datasource
}
