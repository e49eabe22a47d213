package builder

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/sirupsen/logrus"
	"go.yaml.in/yaml/v3"

	"github.com/ecs-image/ecs-image/cidata"
	"github.com/ecs-image/ecs-image/communicator"
)

// stepSeedISO writes the build-time cidata seed: a fresh ed25519 key for
// this boot only, and the build user (password-less sudo, locked password)
// that generalisation removes again.
type stepSeedISO struct {
	// Key is the stage's key (part of the instance-id).
	Key string
	// Stage holds the work directory and receives the seed and the key.
	Stage *stageRun
	Log   logrus.FieldLogger
}

func (s *stepSeedISO) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	sr := s.Stage
	key, err := communicator.GenerateKey()
	if err != nil {
		return halt(state, err)
	}
	sr.sshKey = key
	ud, err := buildUserData(key.AuthorizedKey)
	if err != nil {
		return halt(state, err)
	}
	sr.seed = filepath.Join(sr.dir, "seed.iso")
	err = cidata.Write(sr.seed, cidata.Options{
		UserData: ud, Raw: true, UserDataName: "build user-data",
		// "localhost" resolves without touching /etc/hosts (sudo looks
		// the host name up); the appliance's own seed names it later.
		Hostname: "localhost",
		MetaData: []byte(fmt.Sprintf("instance-id: ecs-build-%s-%d\n", s.Key[:min(12, len(s.Key))], timeNow().UnixNano())),
	})
	if err != nil {
		return halt(state, fmt.Errorf("seed: %w", err))
	}
	s.Log.Debugf("seed %s", sr.seed)
	return multistep.ActionContinue
}

func (s *stepSeedISO) Cleanup(multistep.StateBag) {}

// buildUserData is the cloud-config of build VMs.
func buildUserData(authorizedKey string) ([]byte, error) {
	cfg := map[string]any{
		"users": []any{map[string]any{
			"name":                BuildUser,
			"gecos":               "ecs-image build user (removed by generalisation)",
			"shell":               "/bin/bash",
			"lock_passwd":         true,
			"sudo":                "ALL=(ALL) NOPASSWD:ALL",
			"ssh_authorized_keys": []string{strings.TrimSpace(authorizedKey)},
		}},
		"ssh_pwauth":     false,
		"disable_root":   true,
		"package_update": false,
		// Host keys are removed again by generalisation: one type is
		// enough (a 3072-bit RSA key alone costs seconds under TCG).
		"ssh_genkeytypes": []string{"ed25519"},
		"growpart":        map[string]any{"mode": "auto", "devices": []string{"/"}},
		"resize_rootfs":   true,
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return append([]byte("#cloud-config\n"), data...), nil
}
