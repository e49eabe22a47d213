package builder

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/qemu"
	"github.com/ecs-image/ecs-image/qemu/qemutest"
	"github.com/ecs-image/ecs-image/testenv"
)

// watchSeed against real QEMU guests whose boot sector prints what a build
// VM's console shows: cloud-init falling back to DataSourceNone fails at
// once, a login prompt fails after the grace, a real datasource stops the
// watch without failing.
func TestWatchSeed(t *testing.T) {
	testenv.Tools(t, qemu.DefaultBinary)
	for _, tc := range []struct {
		name, console string
		want          string // in the error; "" means no failure
	}{
		{"none", "cloud-init[512]: Cloud-init v. 22.4.2 finished at Sun, 06 Dec 2026. Datasource DataSourceNone.  Up 42.6 seconds\r\n",
			`it fell back to DataSourceNone ("cloud-init[512]: Cloud-init v. 22.4.2 finished at Sun, 06 Dec 2026. Datasource DataSourceNone.  Up 42.6 seconds")`},
		{"login", "cloud-init[301]: Cloud-init v. 22.4.2 running 'init' at Sun, 06 Dec 2026.\r\n\r\nDebian GNU/Linux 12 localhost ttyS0\r\n\r\nlocalhost login: ",
			`the VM reached its login prompt ("Debian GNU/Linux 12 localhost ttyS0") 2s ago`},
		// What Debian's cloud kernel showed with the seed on a SATA CD-ROM.
		{"no-cloud-init", "[  OK  ] Started serial-getty@ttyS0\xe2\x80\xa6rvice - Serial Getty on ttyS0.\r\n\r\nDebian GNU/Linux 12 debian ttyS0\r\n\r\ndebian login: ",
			`cloud-init never ran: ds-identify found no datasource`},
		{"nocloud", "cloud-init[512]: Cloud-init v. 22.4.2 finished at Sun. Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].\r\nDebian GNU/Linux 12 localhost ttyS0\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := filepath.Join(t.TempDir(), "boot.raw")
			if err := qemutest.BootDisk(disk, tc.console); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			m, err := qemu.Start(ctx, qemu.Config{Disk: disk, DiskFormat: "raw", Accel: qemu.AccelTCG, Memory: 64})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { m.Kill(); <-m.Done() }()
			wctx, stop := context.WithCancelCause(ctx)
			start := time.Now()
			done := make(chan struct{})
			go func() { watchSeed(wctx, m, 2*time.Second, stop); close(done) }()
			if tc.want == "" {
				select {
				case <-done:
				case <-time.After(30 * time.Second):
					t.Fatal("watchSeed did not return after a real datasource")
				}
				if cause := context.Cause(wctx); cause != nil {
					t.Fatalf("failed: %v", cause)
				}
				return
			}
			<-wctx.Done()
			var ns *noSeedError
			if cause := context.Cause(wctx); !errors.As(cause, &ns) || !strings.Contains(cause.Error(), tc.want) {
				t.Fatalf("cause %v, want %q", cause, tc.want)
			}
			if d := time.Since(start); d > 40*time.Second {
				t.Errorf("took %s", d)
			}
			if tc.name == "login" && !strings.Contains(ns.Error(), "running 'init'") {
				t.Errorf("the error does not quote cloud-init's console lines: %v", ns)
			}
			t.Log(ns)
		})
	}
}
