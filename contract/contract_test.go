package contract

import (
	"strings"
	"testing"
)

func TestCheckVolumeSource(t *testing.T) {
	for _, ok := range []string{"/data/ecs-storage-vault", "/volatile/redis", "/app/etc/server.cert.pem", "/data/a/b"} {
		if m := CheckVolumeSource(ok); m != "" {
			t.Errorf("%s: %s", ok, m)
		}
	}
	for p, want := range map[string]string{
		"/srv/x":          "outside",
		"/data":           "outside",
		"/app/ecs":        "outside",
		"/dataX/y":        "outside",
		"/data/../etc":    "clean",
		"/data/x/":        "clean",
		"vault":           "absolute",
		"./x":             "absolute",
		"/var/lib/docker": "outside",
	} {
		if m := CheckVolumeSource(p); !strings.Contains(m, want) {
			t.Errorf("%s: %q, want %q", p, m, want)
		}
	}
}

func TestLinksInsideRoots(t *testing.T) {
	for _, l := range Links {
		if !strings.HasPrefix(l.Target, DataDir+"/") && !strings.HasPrefix(l.Target, VolatileDir+"/") {
			t.Errorf("%s → %s is outside /data and /volatile", l.Link, l.Target)
		}
	}
}
