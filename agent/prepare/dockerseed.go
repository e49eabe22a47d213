package prepare

import (
	"context"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/ecs-image/ecs-image/contract"
)

// Docker's data root and the build's image store (contract.DockerSeed).
const (
	DockerDir  = contract.DockerDir
	DockerSeed = contract.DockerSeed
)

// dockerImageDB is where a data root's overlay2 image store keeps the
// image configurations, one file per image ID.
const dockerImageDB = "image/overlay2/imagedb/content/sha256"

// dockerSeedTmp is the copy under way, inside the data root (so that the
// renames stay on one file system).
const dockerSeedTmp = DockerDir + "/.ecs-seed.tmp"

// hasDockerImages tells whether the data root under root holds at least one
// image.
func (a *Agent) hasDockerImages(root string) bool {
	entries, err := os.ReadDir(a.Host.Path(path.Join(root, dockerImageDB)))
	return err == nil && len(entries) > 0
}

// emptyLayerStore tells whether root/overlay2 holds no layer (only
// dockerd's "l" directory of short links, or nothing).
func (a *Agent) emptyLayerStore(root string) bool {
	for _, n := range dirNames(a.Host.Path(path.Join(root, "overlay2"))) {
		if n != "l" {
			return false
		}
	}
	return true
}

// dockerSeedPending tells whether the build's image store is to be copied
// into docker's data root: the image has one, and the data root holds no
// image and no layer yet (a first boot, or a new ecs-volatile volume).
// Anything else in the data root — images loaded or pushed at an earlier
// boot, layers left by something else — is never replaced: the images
// step loads what is missing from the tarballs.
func (a *Agent) dockerSeedPending() bool {
	return a.hasDockerImages(DockerSeed) && !a.hasDockerImages(DockerDir) && a.emptyLayerStore(DockerDir)
}

// seedDocker copies the build's image store into docker's empty data root
// while dockerd does not run (quiet: the caller stopped it and starts it
// again, or its start waits for StorageReady; else a running dockerd is
// stopped and its socket started again afterwards), so that dockerd starts with the baked images unpacked
// instead of `docker load` decompressing and unpacking them under
// emulation. The copy goes to a temporary directory in the data root and
// is renamed into place, overlay2/ before image/ (an interrupted copy
// leaves no image store, so the next boot copies again or, with layers
// left behind, loads the tarballs). The images step then finds the images
// by the build's IDs and checks them against the index.
func (a *Agent) seedDocker(ctx context.Context, quiet bool) error {
	const step = "prepare-appliance/storage"
	if !a.dockerSeedPending() {
		return nil
	}
	if !quiet {
		did, err := a.stopDocker(ctx, "to copy the image store")
		if err != nil {
			return err
		}
		if did {
			defer a.startDocker(ctx, step)
		}
	}
	start := time.Now()
	if err := os.RemoveAll(a.Host.Path(dockerSeedTmp)); err != nil {
		return err
	}
	if err := a.Host.MkdirAll(DockerDir, 0o710); err != nil {
		return err
	}
	if _, err := a.Host.Run(ctx, "cp", "-a", "--reflink=auto", a.Host.Path(DockerSeed), a.Host.Path(dockerSeedTmp)); err != nil {
		return fmt.Errorf("copying the build's image store %s to %s: %w", DockerSeed, DockerDir, err)
	}
	for _, d := range []string{"overlay2", "image"} {
		// dockerd's empty skeleton (dockerSeedPending checked it holds
		// no image and no layer).
		if err := os.RemoveAll(a.Host.Path(path.Join(DockerDir, d))); err != nil {
			return err
		}
		if err := os.Rename(a.Host.Path(path.Join(dockerSeedTmp, d)), a.Host.Path(path.Join(DockerDir, d))); err != nil {
			return fmt.Errorf("docker image store: %w", err)
		}
	}
	if err := os.RemoveAll(a.Host.Path(dockerSeedTmp)); err != nil {
		return err
	}
	a.logf("%s: the build's image store copied to %s in %.1fs", step, DockerDir, time.Since(start).Seconds())
	return nil
}
