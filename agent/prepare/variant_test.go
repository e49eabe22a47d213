package prepare

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/status"
	"github.com/ecs-image/ecs-image/env"
)

// Without any env.yml, dev and test images activate the built-in
// development env (the original's default-env fallback) with a warning;
// production images, and images that do not say, fail.
func TestDevEnvFallbackOnlyInDevAndTest(t *testing.T) {
	for _, tc := range []struct {
		variant  string // "" = no variant file
		fallback bool
	}{{"dev", true}, {"test", true}, {"prod", false}, {"", false}, {"production", false}, {"dev-ish", false}} {
		t.Run("variant="+tc.variant, func(t *testing.T) {
			a, _ := testAgent(t)
			if tc.variant != "" {
				put(t, a, VariantFile, []byte(tc.variant+"\n"), 0o644)
			}
			err := a.PrepareEnv(context.Background())
			if !tc.fallback {
				if err == nil || !strings.Contains(err.Error(), "no env.yml found") {
					t.Fatalf("err %v", err)
				}
				if a.Host.Exists(ActiveEnv) {
					t.Error("an env was activated")
				}
				if r, _ := status.FailedReason(a.Host); !strings.Contains(r, "no env.yml found") {
					t.Errorf("failed flag %q", r)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := read(t, a, ActiveEnv); got != string(env.DevelopmentEnv()) {
				t.Error("active env is not the development env")
			}
			if src := read(t, a, ActiveEnvSource); src != DevEnvSource+"\n" {
				t.Errorf("source %q", src)
			}
			st, _ := status.Read(a.Host)
			if st.Domain != "localhost" || !strings.Contains(st.Warnings["env"], "built-in development env") ||
				!strings.Contains(st.Warnings["env"], "this is a "+tc.variant+" image") {
				t.Errorf("state %+v", st)
			}
			if log := a.Log.(*bytes.Buffer).String(); !strings.Contains(log, "prepare-env: warning: no env.yml found") {
				t.Errorf("journal:\n%s", log)
			}
			// An env.yml found later wins, and the warning goes.
			put(t, a, "/app/env.yml", []byte(clientCertEnv), 0o600)
			if err := a.PrepareEnv(context.Background()); err != nil {
				t.Fatal(err)
			}
			st, _ = status.Read(a.Host)
			if st.Domain != "ecs.example.org" || st.Warnings["env"] != "" {
				t.Errorf("after an env.yml appeared: %+v", st)
			}
		})
	}
}

// The built-in env is the compat default-env.yml, and valid.
func TestDevelopmentEnvIsDefaultEnv(t *testing.T) {
	if !bytes.Equal(env.DevelopmentEnv(), defaultEnvData(t)) {
		t.Error("env.DevelopmentEnv differs from default-env.yml")
	}
	if _, err := env.Parse("builtin", env.DevelopmentEnv()); err != nil {
		t.Error(err)
	}
}
