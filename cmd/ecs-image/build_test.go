package main

import (
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/builder"
)

func TestParseSet(t *testing.T) {
	var o builder.Options
	if err := parseSet([]string{"version=1.4.0", "version=1.4.1"}, &o); err != nil || o.Version != "1.4.1" {
		t.Fatalf("version: %v %q", err, o.Version)
	}
	for _, bad := range []string{"version", "version=", "version=1 0", "name=x", "=1"} {
		err := parseSet([]string{bad}, &o)
		if err == nil || !isBadInput(err) {
			t.Errorf("--set %s: %v, want bad input", bad, err)
		}
	}
	// Refused before anything is built: exit 2.
	if code, _, errs := runEnvCLI(t, "build", "does-not-exist.yml", "--set", "colour=blue"); code != exitUsage {
		t.Errorf("build --set colour=blue: exit %d (%s)", code, errs)
	}
	if err := parseSet([]string{"name=x"}, &o); !strings.Contains(err.Error(), `unknown key "name" (keys: version)`) {
		t.Errorf("message: %v", err)
	}
}
