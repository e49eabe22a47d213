//go:build integration

package integration

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/cidata"
)

// TestCidataCloudInitFormats boots the Debian base with a NoCloud ISO seed
// and a config-2 config drive (CD-ROM, the package's own ISO9660 writer)
// and with a NoCloud vfat seed (virtio disk) and checks that the guest's
// real cloud-init took user, hostname and instance-id from them, through
// the expected datasource, and reached "done". (NoCloud ISO seeds are also
// booted by the machine, agent and builder tests.) Three TCG boots take
// ~15 minutes, so it runs only with ECS_IT_CIDATA_BOOT=1; -run
// 'TestCidataCloudInitFormats/^nocloud$' boots one.
func TestCidataCloudInitFormats(t *testing.T) {
	if os.Getenv("ECS_IT_CIDATA_BOOT") == "" {
		t.Skip("set ECS_IT_CIDATA_BOOT=1 to boot nocloud, config-2 and vfat seeds (~15 min under TCG)")
	}
	base := baseImage(t)
	for _, c := range []struct {
		format cidata.Format
		ds     string // prefix of the datasource in /run/cloud-init/result.json
	}{
		{cidata.NoCloud, "DataSourceNoCloud"},
		{cidata.ConfigDrive, "DataSourceConfigDrive"},
		{cidata.VFAT, "DataSourceNoCloud"},
	} {
		t.Run(string(c.format), func(t *testing.T) {
			host := "cidata-" + strings.ReplaceAll(string(c.format), "-", "")
			g := bootBase(t, bootOptions{Name: host, Image: base, Size: 6 << 30, SeedFormat: c.format, SSHTimeout: 15 * time.Minute})
			ctx, cl, seed := g.Ctx, g.C, g.Seed
			out, err := cl.Output(ctx, "hostname; s=$(cloud-init status --wait); case $s in *'status: done'*) ;; *) echo \"cloud-init: $s\"; exit 1;; esac; cat /var/lib/cloud/data/instance-id; grep -o '\"datasource\": \"[^\"]*\"' /run/cloud-init/result.json", true)
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
