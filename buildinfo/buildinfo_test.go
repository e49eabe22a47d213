package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestLinkTimeValuesWin(t *testing.T) {
	bi := &debug.BuildInfo{Main: debug.Module{Version: "v9.9.9"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "ffffffffffffffffffffffffffffffffffffffff"}, {Key: "CGO_ENABLED", Value: "0"},
	}}
	i := get("v1.2.3", "abc1234", "2026-12-06T01:00:00Z", bi)
	if i.Version != "v1.2.3" || i.Commit != "abc1234" || i.Date != "2026-12-06T01:00:00Z" || i.Modified || i.CGO != "0" {
		t.Fatalf("got %+v", i)
	}
}

func TestGoBuildFallsBackToVCS(t *testing.T) {
	// A plain `go build` in a git work tree: (devel), VCS settings.
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "CGO_ENABLED", Value: "1"},
		{Key: "vcs.revision", Value: "6d61cfd0a1b2c3d4e5f60718293a4b5c6d7e8f90"},
		{Key: "vcs.time", Value: "2026-12-06T01:42:53Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	i := get("dev", "unknown", "", bi)
	want := Info{Version: "dev", Commit: "6d61cfd0a1b2c3d4e5f60718293a4b5c6d7e8f90", Modified: true,
		Date: "2026-12-06T01:42:53Z", GoVersion: "go1.26.8", Platform: i.Platform, CGO: "1"}
	if i != want {
		t.Fatalf("got %+v\nwant %+v", i, want)
	}
	s := i.String("ecs-image")
	for _, w := range []string{"ecs-image dev\n", "commit: 6d61cfd0a1b2c3d4e5f60718293a4b5c6d7e8f90 (modified)", "date:   2026-12-06T01:42:53Z", "go:     go1.26.8 ", "CGO_ENABLED=1"} {
		if !strings.Contains(s, w) {
			t.Errorf("%q lacks %q", s, w)
		}
	}
}

func TestGoInstallAtVersion(t *testing.T) {
	// go install …@v1.4.0: the module version, no VCS settings.
	i := get("", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}})
	if i.Version != "v1.4.0" || i.Commit != "unknown" || i.Modified {
		t.Fatalf("got %+v", i)
	}
	// go install …@latest of an untagged commit: a pseudo-version.
	i = get("dev", "unknown", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261206014253-6d61cfd0a1b2"}})
	if i.Version != "v0.0.0-20261206014253-6d61cfd0a1b2" || i.Commit != "6d61cfd0a1b2" {
		t.Fatalf("got %+v", i)
	}
	i = get("dev", "unknown", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.4-0.20261206014253-6d61cfd0a1b2+dirty"}})
	if i.Commit != "6d61cfd0a1b2" || !i.Modified {
		t.Fatalf("go build of a modified work tree: %+v", i)
	}
	i = get("dev", "unknown", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.4-0.20261206014253-6d61cfd0a1b2"}})
	if i.Commit != "6d61cfd0a1b2" {
		t.Fatalf("got %+v", i)
	}
}

func TestNothingKnown(t *testing.T) {
	i := get("", "", "", nil)
	if i.Version != "dev" || i.Commit != "unknown" || i.GoVersion == "" || i.Date != "" {
		t.Fatalf("got %+v", i)
	}
	if s := i.String("ecs-agent"); strings.Contains(s, "date:") || !strings.HasPrefix(s, "ecs-agent dev\n") {
		t.Fatalf("got %q", s)
	}
}

func TestDirtyDescribe(t *testing.T) {
	if i := get("v1.0.0-3-gabcdef0-dirty", "abcdef0", "", nil); !i.Modified {
		t.Fatalf("got %+v", i)
	}
}

func TestRunningBinary(t *testing.T) {
	// The test binary has build information; Get must not invent a commit.
	i := Get("dev", "unknown", "")
	if i.GoVersion == "" || i.Version == "" || i.Commit == "" {
		t.Fatalf("got %+v", i)
	}
}
