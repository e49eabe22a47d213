package prepare

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// PrepareECS loads the baked container images, renders the compose file
// and runs the migrations hook.
func (a *Agent) PrepareECS(ctx context.Context) error {
	return a.runChain(ctx, "prepare-ecs", []Step{
		{Name: "images", Run: a.stepImages},
		{Name: "compose", Run: a.stepCompose},
		{Name: "restore-check", Run: a.checkEmptyDatabase},
		{Name: "migrate", Run: a.stepMigrate},
	})
}

// imageStamp identifies a tarball version for the "loaded" tags: its size,
// its mtime and the image ID the index records for it (the build's config
// digest). The ID matters: the builder gives every baked file the same
// mtime, and two builds' tarballs of an image can have the same size (a
// version in the config, one digit for another); the stamp on the data
// volume, written by the image before, must not pass for the new one's
// when the data disks move to a newer appliance.
func imageStamp(fi os.FileInfo, id string) string {
	if id == "" {
		return fmt.Sprintf("%d %d\n", fi.Size(), fi.ModTime().UnixNano())
	}
	return fmt.Sprintf("%d %d %s\n", fi.Size(), fi.ModTime().UnixNano(), id)
}

var (
	unsafeName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`[^A-Za-z0-9_.-]+`) })
	serviceRE  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`) })
)

// stepImages runs `docker load` for every tarball of the images manifest
// that is not loaded yet (tag /app/etc/tags/images/<file>, matching the
// tarball's size and mtime, and the image present in Docker), then applies
// the manifest's tags. No registry is involved.
func (a *Agent) stepImages(ctx context.Context, e *Env) error {
	list, err := a.ReadImageIndex()
	if err != nil {
		return err
	}
	force := a.Host.Exists(ForceLoadFlag)
	type imageFile struct {
		path, stampPath, stamp string
		size                   int64
	}
	files := make([]imageFile, len(list))
	for i, im := range list {
		file := path.Join(ImagesDir, im.File)
		fi, err := os.Stat(a.Host.Path(file))
		if err != nil {
			return fmt.Errorf("%s entry %d: %w", ImagesIndex, i, err)
		}
		files[i] = imageFile{file, path.Join(TagsDir, "images", unsafeName().ReplaceAllString(im.File, "_")+".loaded"), imageStamp(fi, im.ID), fi.Size()}
	}
	// The checks below ask dockerd's API (a docker command would cost
	// about a second under emulation, a request milliseconds).
	done := make([]bool, len(list))
	var loaded []ImageEntry
	if !force {
		// Loaded at an earlier boot: the stamp matches and the first tag
		// names an image.
		for i, f := range files {
			if old, err := a.Host.ReadFile(f.stampPath); err != nil || string(old) != f.stamp {
				continue
			}
			if _, err := a.docker().ImageID(ctx, list[i].Tags[0]); err != nil {
				continue
			}
			a.logf("prepare-ecs/images: %s already loaded as %s", list[i].File, list[i].Tags[0])
			done[i] = true
		}
		// The build's image, by its config digest: from the build's
		// image store (seedDocker), or loaded at an earlier boot whose
		// stamp is gone. Tagged and recorded like a load, and checked
		// with the loaded ones.
		var have map[string]bool
		var present []ImageEntry
		var presentIdx []int
		for i, im := range list {
			if done[i] || im.ID == "" {
				continue
			}
			if have == nil {
				have = a.imageIDs(ctx)
			}
			if have[im.ID] {
				present, presentIdx = append(present, im), append(presentIdx, i)
			}
		}
		if len(present) > 0 {
			if err := a.tagImages(ctx, present); err != nil {
				return err
			}
			for _, i := range presentIdx {
				a.logf("prepare-ecs/images: %s present as %s", list[i].File, list[i].ID)
				if _, err := a.Host.WriteFile(files[i].stampPath, []byte(files[i].stamp), 0o644); err != nil {
					return err
				}
				done[i] = true
			}
			loaded = append(loaded, present...)
		}
	}
	for i, im := range list {
		if done[i] {
			continue
		}
		file, stampPath, stamp := files[i].path, files[i].stampPath, files[i].stamp
		a.logf("prepare-ecs/images: docker load -i %s (%d MiB)", file, files[i].size>>20)
		out, err := a.Host.Run(ctx, "docker", "load", "-i", a.Host.Path(file))
		if err != nil {
			return fmt.Errorf("loading %s: %w", file, err)
		}
		refs := loadedRefs(string(out))
		if len(refs) == 0 {
			return fmt.Errorf("loading %s: docker load reported no image", file)
		}
		for _, t := range im.Tags {
			if contains(refs, t) {
				continue
			}
			if err := a.docker().Tag(ctx, refs[0], t); err != nil {
				return fmt.Errorf("tagging %s as %s: %w", refs[0], t, err)
			}
		}
		if _, err := a.Host.WriteFile(stampPath, []byte(stamp), 0o644); err != nil {
			return err
		}
		loaded = append(loaded, im)
	}
	if err := a.verifyImageIDs(ctx, loaded); err != nil {
		return err
	}
	if len(loaded) > 0 {
		if err := a.removeStackContainers(ctx); err != nil {
			return err
		}
	}
	if force {
		return a.Host.Remove(ForceLoadFlag)
	}
	return nil
}

// imageIDs returns the IDs of the images dockerd has (empty when it
// cannot tell: everything is loaded then).
func (a *Agent) imageIDs(ctx context.Context) map[string]bool {
	ids := map[string]bool{}
	list, err := a.docker().ImageIDs(ctx)
	if err != nil {
		return ids
	}
	for _, id := range list {
		ids[id] = true
	}
	return ids
}

// tagImages gives each image im.ID of list every tag of im that does not
// name it yet (the build's store has the tarballs' own tags).
func (a *Agent) tagImages(ctx context.Context, list []ImageEntry) error {
	d := a.docker()
	for _, im := range list {
		for _, t := range im.Tags {
			if id, err := d.ImageID(ctx, t); err == nil && id == im.ID {
				continue
			}
			if err := d.Tag(ctx, im.ID, t); err != nil {
				return fmt.Errorf("tagging %s as %s: %w", im.ID, t, err)
			}
		}
	}
	return nil
}

// verifyImageIDs checks that the first tag of every
// entry just loaded names the image the builder recorded (its config
// digest): a tarball swapped after the build is reported. Entries loaded
// at an earlier boot are not checked, so an image pushed since by the
// deploy API (which retags) stays.
func (a *Agent) verifyImageIDs(ctx context.Context, list []ImageEntry) error {
	var tags, ids []string
	for _, im := range list {
		if im.ID != "" && len(im.Tags) > 0 {
			tags, ids = append(tags, im.Tags[0]), append(ids, im.ID)
		}
	}
	if len(tags) == 0 {
		return nil
	}
	d := a.docker()
	for i, t := range tags {
		got, err := d.ImageID(ctx, t)
		if err != nil {
			return fmt.Errorf("docker image inspect: %w", err)
		}
		if got != ids[i] {
			if got == "" {
				got = "nothing"
			}
			return fmt.Errorf("%s: %s is %s, not the baked image %s", ImagesIndex, t, got, ids[i])
		}
	}
	a.logf("prepare-ecs/images: %d images verified against the build's digests", len(tags))
	return nil
}

// stepPreloadImages is prepare-appliance's head start on prepare-ecs's
// images step: it starts Docker and loads the baked images dockerd does
// not have yet (the storage step copied the build's image store) while the
// host services start, so that prepare-ecs finds them loaded. It is best
// effort: a problem is logged and left to prepare-ecs, which reports it.
func (a *Agent) stepPreloadImages(ctx context.Context, e *Env) error {
	list, err := a.ReadImageIndex()
	if err != nil || len(list) == 0 {
		return nil // no images, or a bad index that prepare-ecs reports
	}
	if err := a.systemctl(ctx, "start", "docker.service"); err != nil {
		a.logf("prepare-appliance/images: %v; left to prepare-ecs", err)
		return nil
	}
	if err := a.stepImages(ctx, e); err != nil {
		a.logf("prepare-appliance/images: %v; left to prepare-ecs", err)
	}
	return nil
}

// ComposeService is one service of the rendered compose file.
type ComposeService struct {
	Name, Image, EnvFile, DatabaseEnv, Command string
	Ports                                      []string
	Web                                        bool
	WebPort                                    int
}

// ComposePlan is what the compose file runs.
type ComposePlan struct {
	Services []ComposeService
	Web      *ComposeService
}

// PlanCompose derives the compose services from the images manifest.
func (a *Agent) PlanCompose() (*ComposePlan, error) {
	list, err := a.ReadImageIndex()
	if err != nil {
		return nil, err
	}
	plan := &ComposePlan{}
	used := map[string]bool{}
	dbEnv := ""
	if a.Host.Exists(DatabaseEnv) {
		dbEnv = DatabaseEnv
	}
	webSeen := false
	webIdx := -1
	for i, im := range list {
		if im.Web && !im.NoCompose {
			webIdx = i
			break
		}
	}
	for i, im := range list {
		if im.NoCompose {
			continue
		}
		cfg, err := ReadImageConfig(a.Host.Path(path.Join(ImagesDir, im.File)))
		if err != nil {
			return nil, err
		}
		name := im.Service
		if name == "" {
			name = serviceName(im.Tags[0])
		}
		if !serviceRE().MatchString(name) {
			return nil, fmt.Errorf("%s entry %d: bad service name %q", ImagesIndex, i, name)
		}
		base := name
		for n := 2; used[name]; n++ {
			name = fmt.Sprintf("%s%d", base, n)
		}
		used[name] = true
		s := ComposeService{Name: name, Image: im.Tags[0], EnvFile: ActiveEnvCompose, DatabaseEnv: dbEnv}
		if len(im.Command) > 0 {
			cmd, _ := json.Marshal(im.Command)
			s.Command = string(cmd)
		}
		port := im.Port
		if port == 0 && len(cfg.ExposedTCP) > 0 {
			port = cfg.ExposedTCP[0]
		}
		if !webSeen && port > 0 && (webIdx == i || webIdx < 0) {
			s.Web, s.WebPort = true, port
			s.Ports = append(s.Ports, fmt.Sprintf("127.0.0.1:%d:%d", WebPort, port))
		}
		for _, p := range cfg.ExposedTCP {
			if p == SMTPDPort && !(s.Web && port == SMTPDPort) {
				s.Ports = append(s.Ports, fmt.Sprintf("127.0.0.1:%d:%d", SMTPDPort, SMTPDPort))
			}
		}
		plan.Services = append(plan.Services, s)
		if s.Web {
			webSeen = true
		}
	}
	for i := range plan.Services {
		if plan.Services[i].Web {
			plan.Web = &plan.Services[i]
		}
	}
	return plan, nil
}

func serviceName(tag string) string {
	repo := tag
	if i := strings.LastIndex(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	repo = path.Base(repo)
	return strings.Trim(unsafeName().ReplaceAllString(strings.ToLower(repo), "-"), "-.")
}

func (a *Agent) stepCompose(ctx context.Context, e *Env) error {
	st, err := a.ReadStack()
	if err != nil {
		return err
	}
	if st != nil {
		return a.stepStackEnv(ctx, e, st)
	}
	plan, err := a.PlanCompose()
	if err != nil {
		return err
	}
	if len(plan.Services) == 0 {
		a.logf("prepare-ecs/compose: no container images in %s; nothing to run", ImagesIndex)
		return a.Host.Remove(ComposeFile)
	}
	names := make([]string, len(plan.Services))
	for i, s := range plan.Services {
		names[i] = s.Name
	}
	sort.Strings(names)
	out, err := render("docker-compose.yml.tmpl", map[string]any{
		"Index": ImagesIndex, "Project": ComposeProject, "File": ComposeFile, "Services": plan.Services,
	})
	if err != nil {
		return err
	}
	if _, err := a.Host.WriteFile(ComposeFile, out, 0o644); err != nil {
		return err
	}
	web := "none"
	if plan.Web != nil {
		web = fmt.Sprintf("%s:%d", plan.Web.Name, plan.Web.WebPort)
	}
	a.logf("prepare-ecs/compose: %s runs %s (web: %s)", ComposeFile, strings.Join(names, ", "), web)
	return nil
}

// removeStackContainers stops and removes the stack's containers after
// new images were loaded (an upgrade by image, a forced reload): dockerd
// restarts `unless-stopped` containers of the previous image when it
// starts, and they would run the old version against the database while
// it is dumped and migrated, and answer the ready probe. The next `up`
// creates every service from the images just loaded. Data lives in the
// stack's bind mounts, not in the containers.
func (a *Agent) removeStackContainers(ctx context.Context) error {
	ids, err := a.stackContainers(ctx)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return nil
	}
	a.logf("prepare-ecs/images: new images loaded: removing the stack's %d containers of the previous images", len(ids))
	d := a.docker()
	if err := d.StopContainers(ctx, 30*time.Second, ids...); err != nil {
		a.logf("prepare-ecs/images: docker stop: %v (removing them by force)", err)
	}
	if err := d.RemoveContainers(ctx, ids...); err != nil {
		return fmt.Errorf("removing the stack's containers of the previous images: %w", err)
	}
	return nil
}

// stackContainers lists the IDs of the stack's containers, running or not.
func (a *Agent) stackContainers(ctx context.Context) ([]string, error) {
	ids, err := a.docker().ContainersByLabel(ctx, "com.docker.compose.project", a.composeProject())
	if err != nil {
		return nil, fmt.Errorf("listing the stack's containers: %w", err)
	}
	return ids, nil
}
