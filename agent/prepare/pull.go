package prepare

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ecs-image/ecs-image/atomicfile"
)

// pullTimeout bounds one image's pull (manifest and layers).
var pullTimeout = 20 * time.Minute

// PullResult is what pullImages did with one image of the index.
type PullResult struct {
	Ref    string `json:"ref"`
	Result string `json:"result"` // updated, current, pinned, unreachable
	ID     string `json:"id,omitempty"`
	Error  string `json:"error,omitempty"`
}

// pullImages is the update's registry step: every image of the index that
// the builder pulled from a registry (its ref, the template's `ref:`) and
// that is not pinned by digest is looked up again; a newer image (another
// config digest than the entry's ID) replaces the entry's tarball in
// /app/images (written beside, then renamed) and its ID in the index, so
// the restart's prepare-ecs loads it, checks its ID, tags it and migrates
// after a dump, as for any changed tarball. An unreachable registry keeps
// the baked image (an appliance without internet updates by bundle); the
// run goes on. It returns whether a tarball changed.
func (a *Agent) pullImages(ctx context.Context) (bool, []PullResult, error) {
	list, err := a.ReadImageIndex()
	if err != nil {
		return false, nil, err
	}
	var results []PullResult
	changed := false
	for i, im := range list {
		if im.Ref == "" {
			continue
		}
		r := PullResult{Ref: im.Ref}
		ref, err := name.ParseReference(im.Ref)
		switch {
		case err != nil:
			return changed, results, fmt.Errorf("%s entry %d: ref %q: %w", ImagesIndex, i, im.Ref, err)
		case isDigest(ref):
			r.Result = "pinned"
			a.logf("appliance-update/images: %s is pinned by digest: updated by a new image or a deploy bundle, not pulled", im.Ref)
			results = append(results, r)
			continue
		}
		id, err := a.pullImage(ctx, ref, im)
		switch {
		case err != nil:
			r.Result, r.Error = "unreachable", err.Error()
			a.logf("appliance-update/images: warning: %s: %v; the loaded image stays", im.Ref, err)
		case id == im.ID:
			r.Result, r.ID = "current", id
			a.logf("appliance-update/images: %s is current (%s)", im.Ref, id)
		default:
			r.Result, r.ID = "updated", id
			list[i].ID = id
			changed = true
			a.logf("appliance-update/images: %s updated: %s → %s (%s)", im.Ref, orNone(im.ID), id, path.Join(ImagesDir, im.File))
		}
		results = append(results, r)
	}
	if changed {
		data, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return changed, results, err
		}
		if _, err := a.Host.WriteFile(ImagesIndex, append(data, '\n'), 0o644); err != nil {
			return changed, results, err
		}
	}
	return changed, results, nil
}

func orNone(s string) string {
	if s == "" {
		return "(no recorded ID)"
	}
	return s
}

func isDigest(r name.Reference) bool {
	_, ok := r.(name.Digest)
	return ok
}

// pullImage looks ref up; when its config digest differs from im.ID it
// writes the image as a docker-archive (tagged with the entry's first tag)
// over im.File. It returns the registry's config digest.
func (a *Agent) pullImage(ctx context.Context, ref name.Reference, im ImageEntry) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	// Credentials as `docker pull` finds them (/root/.docker/config.json);
	// none is anonymous.
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
	if err != nil {
		return "", err
	}
	cfg, err := img.ConfigName()
	if err != nil {
		return "", err
	}
	id := cfg.String()
	if id == im.ID {
		return id, nil
	}
	tag := ref
	if len(im.Tags) > 0 {
		if t, err := name.NewTag(im.Tags[0]); err == nil {
			tag = t
		}
	}
	f, err := atomicfile.Create(a.Host.Path(path.Join(ImagesDir, im.File)), 0o644)
	if err != nil {
		return "", err
	}
	defer f.Abort()
	if err := tarball.Write(tag, img, f); err != nil {
		return "", err
	}
	// A new file: its stamp (size, mtime) tells prepare-ecs to load it.
	return id, f.Commit()
}
