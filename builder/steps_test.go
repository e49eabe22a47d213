package builder

import (
	"strings"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
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
		{buildSteps(), "validate, work dir, fetch base, stage keys, stages, generalise, compact, artifact"},
		{bootedStageSteps(), "overlay disk, seed iso, start qemu, wait ssh, provision, boot files, shutdown, commit stage"},
		{offlineStageSteps(), "overlay disk, offline place, commit stage"},
	} {
		if got := names(c.steps); got != c.want {
			t.Errorf("steps:\n got %s\nwant %s", got, c.want)
		}
	}
}
