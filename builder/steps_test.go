package builder

import (
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"go.yaml.in/yaml/v3"
)

func names(steps []multistep.Step) string {
	var n []string
	for _, s := range steps {
		n = append(n, stepName(s))
	}
	return strings.Join(n, ", ")
}

func TestStepOrder(t *testing.T) {
	for _, c := range []struct {
		steps []multistep.Step
		want  string
	}{
		{buildSteps(), "validate, fetch base, work dir, stage keys, stages, generalise, driver check, compact, artifact"},
		{bootedStageSteps(), "overlay disk, seed iso, direct boot, start qemu, wait ssh, provision, boot files, shutdown, commit stage"},
		{offlineStageSteps(), "overlay disk, offline place, commit stage"},
		{chrootStageSteps(), "overlay disk, chroot mount, provision, chroot boot files, chroot finish, commit stage"},
	} {
		if got := names(c.steps); got != c.want {
			t.Errorf("steps:\n got %s\nwant %s", got, c.want)
		}
	}
}

// TestStageModes: every mode chooseMode can return has a step list.
func TestStageModes(t *testing.T) {
	for _, m := range []Mode{ModeBoot, ModeChroot, ModeOffline} {
		if r, ok := stageModes[m]; !ok || r.how == "" || len(r.steps()) == 0 {
			t.Errorf("%s: no step list", m)
		}
	}
	if _, ok := stageModes[ModeAuto]; ok {
		t.Error("auto is resolved before a stage runs")
	}
}

func TestBuildUserData(t *testing.T) {
	ud, err := buildUserData("ssh-ed25519 AAAAC3 ecs-image\n")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Users []struct {
			Name       string   `yaml:"name"`
			Sudo       string   `yaml:"sudo"`
			LockPasswd bool     `yaml:"lock_passwd"`
			Keys       []string `yaml:"ssh_authorized_keys"`
		} `yaml:"users"`
		SSHPwauth bool `yaml:"ssh_pwauth"`
	}
	if !strings.HasPrefix(string(ud), "#cloud-config\n") {
		t.Fatalf("not cloud-config: %q", ud)
	}
	if err := yaml.Unmarshal(ud, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Users) != 1 || cfg.Users[0].Name != BuildUser || cfg.Users[0].Sudo != "ALL=(ALL) NOPASSWD:ALL" ||
		!cfg.Users[0].LockPasswd || len(cfg.Users[0].Keys) != 1 || cfg.Users[0].Keys[0] != "ssh-ed25519 AAAAC3 ecs-image" || cfg.SSHPwauth {
		t.Errorf("user-data: %+v\n%s", cfg, ud)
	}
}
