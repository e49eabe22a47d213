package prepare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/ecs-image/ecs-image/agent/host"
	"go.yaml.in/yaml/v3"
)

// MigrateService is the compose service whose image carries the
// application's migrations; the original appliance ran them as
// `docker-compose run --no-deps --rm ecs.web migrate`.
const MigrateService = "ecs.web"

// migrateArgs are compose's arguments that run the migrations where the
// stack has containers. Unlike the original, without --no-deps: Compose v2
// links a `run` container to every container of its linked services,
// stopped ones included, and the engine refuses to start a container
// linked to a stopped one ("Cannot link to a non running container") —
// which the stack's are after a restart of appliance.service. Compose
// starts the linked services (redis, memcached) first instead; `up` keeps
// them.
var migrateArgs = []string{"run", "--rm", "-T", MigrateService, "migrate"}

// migrateNoDepsArgs run the migrations where the stack has no container
// (a first boot, or new images after removeStackContainers): as the
// original, with --no-deps, since there is nothing to link to; redis and
// memcached are not started for the migration (they cost 5–15 s under
// emulation at a first boot) but by `up` beside the rest of the stack.
var migrateNoDepsArgs = []string{"run", "--rm", "-T", "--no-deps", MigrateService, "migrate"}

// MigratedTag records the image ID of MigrateService whose migrations ran
// to completion: an unchanged image does not migrate (nor dump) again, as
// the original migrated only when the ecs version changed.
const MigratedTag = TagsDir + "/last_migrated_image"

// MigratedHistory lists every image ID of MigrateService whose migrations
// ran to completion on this data, oldest first (TagsDir is on the ecs-data
// volume: the list travels with the disks). An image in the list that is
// not the last migrated before a newer one: it is older than the schema,
// and it is refused (ErrOlderImage) instead of starting on it.
const MigratedHistory = TagsDir + "/migrated_images"

// ErrOlderImage: the image's migrations ran on this data before a newer
// image's did.
var ErrOlderImage = errors.New("this image is older than the data")

// migratedImages reads MigratedHistory (or, from before it existed, the
// last migrated image).
func (a *Agent) migratedImages() []string {
	data, err := a.Host.ReadFile(MigratedHistory)
	if err != nil {
		data, _ = a.Host.ReadFile(MigratedTag)
	}
	return strings.Fields(string(data))
}

// checkNotOlder refuses imageID when it migrated this data before the last
// migrated image: going back to an older image on a schema a newer one
// moved on would run old code on it.
func (a *Agent) checkNotOlder(image, imageID string) error {
	hist := a.migratedImages()
	if len(hist) == 0 || imageID == "" || hist[len(hist)-1] == imageID || !slices.Contains(hist, imageID) {
		return nil
	}
	return fmt.Errorf("%w: %s (%s) migrated the database before %s did (%s): going back to an older image on data a newer one migrated is refused; "+
		"boot the newer image, or roll back with the dump taken before its migration (%s) or a backup (ecs-agent recover --force --time …) and remove %s and %s",
		ErrOlderImage, image, imageID, hist[len(hist)-1], MigratedHistory, MigrateDump, MigratedTag, MigratedHistory)
}

// recordMigrated notes that imageID's migrations ran to completion.
func (a *Agent) recordMigrated(imageID string) error {
	hist := a.migratedImages()
	if !slices.Contains(hist, imageID) {
		hist = append(hist, imageID)
	}
	if _, err := a.Host.WriteFile(MigratedHistory, []byte(strings.Join(hist, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	_, err := a.Host.WriteFile(MigratedTag, []byte(imageID+"\n"), 0o644)
	return err
}

// composeServiceImage returns the image of service in the compose file,
// and whether the service exists.
func (a *Agent) composeServiceImage(service string) (string, bool) {
	data, err := a.Host.ReadFile(ComposeFile)
	if err != nil {
		return "", false
	}
	var f struct {
		Services map[string]struct {
			Image string `yaml:"image"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return "", false
	}
	s, ok := f.Services[service]
	return s.Image, ok
}

// stepMigrate runs the database migrations unless ecs.migrate.auto is
// false: with a MigrateService in the compose file, its image's `migrate`
// command through compose (as the original appliance did), else
// /app/etc/hooks/migrate when present and executable. Before it, a
// `pg_dump --format=custom` of the database goes to MigrateDump (temp file,
// then renamed) when the database has tables. A failed migration fails the
// step — the appliance is marked failed with the reason — and leaves the
// dump for a roll-back.
func (a *Agent) stepMigrate(ctx context.Context, e *Env) error {
	if !e.Bool("ecs.migrate.auto", true) {
		a.logf("prepare-ecs/migrate: ecs.migrate.auto is false; migrations not run")
		return nil
	}
	image, viaCompose := a.composeServiceImage(MigrateService)
	hook := false
	if fi, err := os.Stat(a.Host.Path(MigrateHook)); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		hook = true
	}
	if !viaCompose && !hook {
		return nil
	}
	imageID := ""
	if viaCompose {
		id, err := a.docker().ImageID(ctx, image)
		if err != nil {
			return fmt.Errorf("image %s of service %s: %w", image, MigrateService, err)
		}
		imageID = id
		if last, err := a.Host.ReadFile(MigratedTag); err == nil && strings.TrimSpace(string(last)) == imageID && imageID != "" {
			a.logf("prepare-ecs/migrate: %s (%s) migrated already", image, imageID)
			return nil
		}
		if err := a.checkNotOlder(image, imageID); err != nil {
			return err
		}
	}
	if err := a.dumpBeforeMigration(ctx, e); err != nil {
		return err
	}
	dumpNote := ""
	if a.Host.Exists(MigrateDump) {
		dumpNote = "; the dump taken before it is kept in " + MigrateDump + " (pg_restore it to roll back)"
	}
	if viaCompose {
		ids, err := a.stackContainers(ctx)
		if err != nil {
			return err
		}
		margs, deps := migrateArgs, "with the linked services"
		if len(ids) == 0 {
			margs, deps = migrateNoDepsArgs, "no container yet: --no-deps"
		}
		name, args := a.composeCommand(margs...)
		a.logf("prepare-ecs/migrate: running %s migrate (%s; %s)", MigrateService, image, deps)
		if _, err := a.Host.RunCmd(ctx, hostCmd(name, args, a.migrateEnv(e))); err != nil {
			return fmt.Errorf("migration (%s migrate) failed: %w%s", MigrateService, err, dumpNote)
		}
		return a.recordMigrated(imageID)
	}
	envv := append(a.migrateEnv(e), "COMPOSE_FILE="+ComposeFile, "COMPOSE_PROJECT_NAME="+ComposeProject)
	a.logf("prepare-ecs/migrate: running %s", MigrateHook)
	if _, err := a.Host.RunCmd(ctx, hostCmd(a.Host.Path(MigrateHook), nil, envv)); err != nil {
		return fmt.Errorf("migration (%s) failed: %w%s", MigrateHook, err, dumpNote)
	}
	return nil
}

// migrateEnv is the environment of a migration: the flattened env.yml and
// DATABASE_URL.
func (a *Agent) migrateEnv(e *Env) []string {
	envv := make([]string, 0, len(e.Vars)+1)
	for _, k := range SortedNames(e.Vars) {
		envv = append(envv, k+"="+e.Vars[k])
	}
	if data, err := a.Host.ReadFile(DatabaseEnv); err == nil {
		envv = append(envv, strings.TrimSpace(string(data)))
	}
	return envv
}

// hostCmd is a command whose output goes to the journal as it comes.
func hostCmd(name string, args, env []string) host.Cmd {
	return host.Cmd{Name: name, Args: args, Env: env, Stdout: os.Stderr, Stderr: os.Stderr}
}
