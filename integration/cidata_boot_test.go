//go:build integration

package integration

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
	"github.com/ecs-image/ecs-image/qemu"
)

// TestCidataCloudInitFormats boots the Debian base with a config-2 config
// drive (CD-ROM) and with a NoCloud vfat seed (virtio disk) and checks that
// the guest's real cloud-init took user, hostname and instance-id from
// them, through the expected datasource. (NoCloud ISO seeds are booted by
// the machine, agent and builder tests.) Two TCG boots take ~10 minutes,
// so it runs only with ECS_IT_CIDATA_BOOT=1.
func TestCidataCloudInitFormats(t *testing.T) {
	if os.Getenv("ECS_IT_CIDATA_BOOT") == "" {
		t.Skip("set ECS_IT_CIDATA_BOOT=1 to boot config-2 and vfat seeds (~10 min under TCG)")
	}
	base := baseImage(t)
	for _, c := range []struct {
		format cidata.Format
		ds     string // prefix of the datasource in /run/cloud-init/result.json
	}{
		{cidata.ConfigDrive, "DataSourceConfigDrive"},
		{cidata.VFAT, "DataSourceNoCloud"},
	} {
		t.Run(string(c.format), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			dir := t.TempDir()
			disk := filepath.Join(dir, "disk.qcow2")
			if err := qemu.Overlay(ctx, base, disk, 6<<30); err != nil {
				t.Fatal(err)
			}
			key, err := communicator.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			host := "cidata-" + strings.ReplaceAll(string(c.format), "-", "")
			ud := "#cloud-config\nusers:\n  - name: builder\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n      - \"" + key.AuthorizedKey + "\"\n"
			seedOpts := cidata.Options{Format: c.format, UserData: []byte(ud), Raw: true, Hostname: host}
			seed, err := cidata.Prepare(seedOpts)
			if err != nil {
				t.Fatal(err)
			}
			seedPath := filepath.Join(dir, "seed.img")
			if err := cidata.Write(seedPath, seedOpts); err != nil {
				t.Fatal(err)
			}
			cfg := qemu.Config{
				Name: host, Disk: disk, Memory: 1024, CPUs: 2,
				Forwards: []qemu.Forward{{Guest: 22}}, SerialLog: filepath.Join(dir, "serial.log"),
			}
			if c.format == cidata.VFAT {
				cfg.ExtraArgs = []string{"-drive", "file=" + seedPath + ",format=raw,if=virtio,readonly=on"}
			} else {
				cfg.CDROMs = []string{seedPath}
			}
			m, err := qemu.Start(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { m.Kill(); <-m.Done() }()
			addr := "127.0.0.1:" + strconv.Itoa(m.HostPort(22))
			cl, err := communicator.Dial(ctx, addr, "builder", key.Signer, 15*time.Minute, m.Done())
			if err != nil {
				t.Fatalf("%v\nserial:\n%s", err, m.SerialTail(40))
			}
			defer cl.Close()
			out, err := cl.Output(ctx, "hostname; cloud-init status --wait >/dev/null; cat /var/lib/cloud/data/instance-id; grep -o '\"datasource\": \"[^\"]*\"' /run/cloud-init/result.json", true)
			if err != nil {
				t.Fatalf("%v: %q", err, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 || lines[0] != host || lines[1] != seed.InstanceID || !strings.Contains(lines[2], c.ds) {
				t.Errorf("guest reports %q; want hostname %s, instance-id %s, datasource %s", out, host, seed.InstanceID, c.ds)
			}
			t.Logf("%s", out)
		})
	}
}
