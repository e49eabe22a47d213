package prepare

import (
	"context"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
)

// copyRunner records every command like a Recorder and runs cp for real,
// so that the seed's copy lands under the test root.
type copyRunner struct{ *host.Recorder }

func (r copyRunner) Run(ctx context.Context, c host.Cmd) ([]byte, error) {
	out, err := r.Recorder.Run(ctx, c)
	if c.Name == "cp" {
		return exec.CommandContext(ctx, "cp", c.Args...).CombinedOutput()
	}
	return out, err
}

const seedImageID = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fakeSeed makes a build's image store with one image and one layer (a
// relative short link, as dockerd's), and dockerd's empty skeleton in the
// data root.
func fakeSeed(t *testing.T, a *Agent) {
	t.Helper()
	put(t, a, path.Join(DockerSeed, dockerImageDB, strings.TrimPrefix(seedImageID, "sha256:")), []byte(`{"config":{}}`), 0o600)
	put(t, a, path.Join(DockerSeed, "image/overlay2/repositories.json"), []byte(`{"Repositories":{}}`), 0o600)
	put(t, a, path.Join(DockerSeed, "overlay2/abc/diff/usr/bin/redis-server"), []byte("ELF"), 0o755)
	put(t, a, path.Join(DockerSeed, "overlay2/abc/link"), []byte("SHORT"), 0o644)
	if err := os.MkdirAll(a.Host.Path(path.Join(DockerSeed, "overlay2/l")), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../abc/diff", a.Host.Path(path.Join(DockerSeed, "overlay2/l/SHORT"))); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dockerImageDB, "overlay2/l"} {
		if err := os.MkdirAll(a.Host.Path(path.Join(DockerDir, d)), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	put(t, a, path.Join(DockerDir, "image/overlay2/repositories.json"), []byte(`{"Repositories":{}}`), 0o600)
}

// TestSeedDockerCopiesIntoEmptyDataRoot: the build's image store lands in
// docker's empty data root while dockerd is stopped (its socket back
// after), with its layers and links, and no temporary copy is left; a
// second run copies nothing.
func TestSeedDockerCopiesIntoEmptyDataRoot(t *testing.T) {
	a, rec := testAgent(t)
	a.Host.Runner = copyRunner{rec}
	fakeSeed(t, a)
	rec.Responses["systemctl is-active docker.socket docker.service"] = host.Response{Stdout: "active\nactive\n"}
	if err := a.seedDocker(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	stop := slices.Index(cmds, "systemctl stop docker.socket docker.service")
	cp := slices.IndexFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "cp -a ") })
	start := slices.Index(cmds, "systemctl start docker.socket")
	if stop < 0 || cp < stop || start < cp {
		t.Errorf("want stop, copy, socket started:\n%s", strings.Join(cmds, "\n"))
	}
	if !a.hasDockerImages(DockerDir) {
		t.Error("no image in the data root after the copy")
	}
	if got, err := os.ReadFile(a.Host.Path(path.Join(DockerDir, "overlay2/l/SHORT/usr/bin/redis-server"))); err != nil || string(got) != "ELF" {
		t.Errorf("layer through its short link: %q %v", got, err)
	}
	if a.Host.Exists(dockerSeedTmp) {
		t.Error("temporary copy left behind")
	}
	if !a.hasDockerImages(DockerSeed) {
		t.Error("the seed itself is gone")
	}

	// The data root has images now: nothing happens.
	rec.Commands = nil
	if err := a.seedDocker(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if cmds := rec.Recorded(); len(cmds) != 0 {
		t.Errorf("second run: %q", cmds)
	}
}

// TestSeedDockerNeverReplacesAStore: a data root with an image, or with
// layers but no image store (an interrupted load), is left alone; no seed
// in the image, nothing happens; when the caller stopped dockerd, the seed
// step does not stop or start it again.
func TestSeedDockerNeverReplacesAStore(t *testing.T) {
	t.Run("images", func(t *testing.T) {
		a, rec := testAgent(t)
		a.Host.Runner = copyRunner{rec}
		fakeSeed(t, a)
		put(t, a, path.Join(DockerDir, dockerImageDB, "feed"), []byte(`{}`), 0o600)
		if err := a.seedDocker(context.Background(), false); err != nil {
			t.Fatal(err)
		}
		if cmds := rec.Recorded(); len(cmds) != 0 {
			t.Errorf("commands: %q", cmds)
		}
		if a.Host.Exists(path.Join(DockerDir, dockerImageDB, strings.TrimPrefix(seedImageID, "sha256:"))) {
			t.Error("the seed was copied over images")
		}
	})
	t.Run("layers", func(t *testing.T) {
		a, rec := testAgent(t)
		a.Host.Runner = copyRunner{rec}
		fakeSeed(t, a)
		put(t, a, path.Join(DockerDir, "overlay2/other/link"), []byte("X"), 0o644)
		if err := a.seedDocker(context.Background(), false); err != nil {
			t.Fatal(err)
		}
		if cmds := rec.Recorded(); len(cmds) != 0 {
			t.Errorf("commands: %q", cmds)
		}
	})
	t.Run("no-seed", func(t *testing.T) {
		a, rec := testAgent(t)
		if err := a.seedDocker(context.Background(), false); err != nil {
			t.Fatal(err)
		}
		if cmds := rec.Recorded(); len(cmds) != 0 {
			t.Errorf("commands: %q", cmds)
		}
	})
	t.Run("stopped-by-caller", func(t *testing.T) {
		a, rec := testAgent(t)
		a.Host.Runner = copyRunner{rec}
		fakeSeed(t, a)
		if err := a.seedDocker(context.Background(), true); err != nil {
			t.Fatal(err)
		}
		for _, c := range rec.Recorded() {
			if strings.HasPrefix(c, "systemctl") {
				t.Errorf("%q: the caller stopped dockerd and starts it", c)
			}
		}
		if !a.hasDockerImages(DockerDir) {
			t.Error("not copied")
		}
	})
}

// TestSeedDockerCopyFailureFails: a failed copy fails the step (the
// appliance is marked failed with the reason) and leaves no image store.
func TestSeedDockerCopyFailureFails(t *testing.T) {
	a, rec := testAgent(t)
	fakeSeed(t, a)
	rec.Responses["cp -a"] = host.Response{Err: os.ErrPermission}
	err := a.seedDocker(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), "copying the build's image store") {
		t.Fatalf("err %v", err)
	}
	if a.hasDockerImages(DockerDir) {
		t.Error("an image store after a failed copy")
	}
}

// TestImagesPresentByIDAreNotLoaded: an image of the index that dockerd has
// already, by the build's config digest (the seed), is tagged and
// recorded, not loaded, and still checked against the index.
func TestImagesPresentByIDAreNotLoaded(t *testing.T) {
	a, rec := testAgent(t)
	put(t, a, ImagesIndex, []byte(`[{"file":"redis.tar","tags":["ecs/redis:local","redis:local"],"id":"`+seedImageID+`"},{"file":"web.tar","tags":["ecs/ecs:latest"],"id":"sha256:beef"}]`), 0o644)
	put(t, a, ImagesDir+"/redis.tar", []byte("x"), 0o644)
	put(t, a, ImagesDir+"/web.tar", []byte("y"), 0o644)
	rec.Responses["docker load"] = host.Response{Stdout: "Loaded image: ecs/ecs:latest\n"}
	d := startDockerd(t, a)
	d.addImage(seedImageID, "ecs/redis:local") // the seed's, with its tarball's tag
	d.loadID["web.tar"] = "sha256:beef"
	if err := a.stepImages(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	cmds := d.log()
	if slices.ContainsFunc(cmds, func(c string) bool { return strings.Contains(c, "docker load") && strings.Contains(c, "redis.tar") }) {
		t.Errorf("the present image was loaded:\n%s", strings.Join(cmds, "\n"))
	}
	if !slices.ContainsFunc(cmds, func(c string) bool { return strings.Contains(c, "docker load") && strings.Contains(c, "web.tar") }) {
		t.Errorf("the missing image was not loaded:\n%s", strings.Join(cmds, "\n"))
	}
	if !slices.Contains(cmds, "POST /images/"+seedImageID+"/tag?repo=redis&tag=local") || slices.Contains(cmds, "POST /images/"+seedImageID+"/tag?repo=ecs/redis&tag=local") {
		t.Errorf("want the missing tag applied, and only that:\n%s", strings.Join(cmds, "\n"))
	}
	load := slices.IndexFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "docker load") })
	if after := cmds[load+1:]; !slices.Contains(after, "GET /images/ecs/redis:local/json") || !slices.Contains(after, "GET /images/ecs/ecs:latest/json") {
		t.Errorf("not verified against the index after the load:\n%s", strings.Join(cmds, "\n"))
	}
	if !a.Host.Exists(TagsDir + "/images/redis.tar.loaded") {
		t.Error("no loaded stamp for the present image")
	}
}

// seedStorageAgent is an agent whose system has the ecs-data and
// ecs-volatile volumes attached and a build's image store, with cp run for
// real.
func seedStorageAgent(t *testing.T) (*Agent, *host.Recorder) {
	t.Helper()
	a, rec := testAgent(t)
	a.Host.Runner = copyRunner{rec}
	fakeSystem(t, a)
	put(t, a, Fstab, []byte(baseFstab), 0o644)
	labelDevice(t, a, "ecs-data", "vdb")
	labelDevice(t, a, "ecs-volatile", "vdc")
	fakeSeed(t, a)
	return a, rec
}

// TestStorageCopiesTheSeedWhileDockerdIsStopped: with the ecs-volatile
// volume and a build's image store, dockerd is stopped for the mount, the
// store is copied onto the volume, and only then is dockerd's socket back.
func TestStorageCopiesTheSeedWhileDockerdIsStopped(t *testing.T) {
	a, rec := seedStorageAgent(t)
	put(t, a, ImagesIndex, []byte(`[{"file":"redis.tar","tags":["ecs/redis:local"],"id":"`+seedImageID+`"}]`), 0o644)
	put(t, a, ImagesDir+"/redis.tar", []byte("x"), 0o644)
	rec.Responses["systemctl is-active docker.socket docker.service"] = host.Response{Stdout: "active\nactive\n"}
	startDockerd(t, a).addImage(seedImageID, "ecs/redis:local") // (what dockerd finds in the copied store)
	activate(t, a, storageEnvText("false"))
	if err := a.PrepareAppliance(context.Background()); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	stop := slices.Index(cmds, "systemctl stop docker.socket docker.service")
	mount := slices.Index(cmds, "mount /volatile")
	cp := slices.IndexFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "cp -a ") && strings.Contains(c, "docker-seed") })
	socket := slices.Index(cmds, "systemctl start docker.socket")
	if stop < 0 || mount < stop || cp < mount || socket < cp || slices.Index(cmds[stop+1:], "systemctl stop docker.socket docker.service") >= 0 {
		t.Errorf("want dockerd stopped once, mount, copy, socket back:\n%s", strings.Join(cmds, "\n"))
	}
	if !a.hasDockerImages(DockerDir) {
		t.Error("the image store was not copied")
	}
	if slices.ContainsFunc(cmds, func(c string) bool { return strings.HasPrefix(c, "docker load") }) {
		t.Errorf("an image of the store was loaded:\n%s", strings.Join(cmds, "\n"))
	}
}

// TestStorageLeavesAWaitingDockerdWaiting: where docker.service's start is
// waiting for the storage step (ExecStartPre, WaitStorage), the step does
// not stop and restart it: it marks itself busy, mounts, copies the store
// and writes StorageReady, which ends the wait.
func TestStorageLeavesAWaitingDockerdWaiting(t *testing.T) {
	a, rec := seedStorageAgent(t)
	rec.Responses["systemctl is-active docker.socket docker.service"] = host.Response{Stdout: "active\nactivating\n"}
	rec.Responses["systemctl show --property SubState --value docker.service"] = host.Response{Stdout: "start-pre\n"}
	activate(t, a, storageEnvText("false"))
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.stepStorage(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	cmds := rec.Recorded()
	if slices.ContainsFunc(cmds, func(c string) bool {
		return strings.HasPrefix(c, "systemctl stop docker") || strings.HasPrefix(c, "systemctl start docker")
	}) {
		t.Errorf("a waiting dockerd was stopped or started:\n%s", strings.Join(cmds, "\n"))
	}
	if !a.hasDockerImages(DockerDir) {
		t.Error("the image store was not copied")
	}
	if !a.Host.Exists(StorageBusy) || !a.Host.Exists(StorageReady) {
		t.Errorf("busy %v, ready %v: want both", a.Host.Exists(StorageBusy), a.Host.Exists(StorageReady))
	}
}
