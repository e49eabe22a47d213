package prepare

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/ecs-image/ecs-image/agent/host"
	"github.com/ecs-image/ecs-image/agent/status"
)

// migrateRunner runs PostgreSQL's clients for real and answers
// docker-compose (the host has no Docker engine): the migration's exit
// from fail. The image and the stack's containers are the fake engine's
// (startDockerd).
type migrateRunner struct {
	exec host.ExecRunner
	mu   sync.Mutex
	fail error
	cmds []string
}

func (r *migrateRunner) Run(ctx context.Context, c host.Cmd) ([]byte, error) {
	switch c.Name {
	case "docker", "docker-compose", "systemctl":
		r.mu.Lock()
		defer r.mu.Unlock()
		r.cmds = append(r.cmds, c.String())
		if c.Name == "docker-compose" {
			return nil, r.fail
		}
		return nil, nil
	}
	return r.exec.Run(ctx, c)
}

func (r *migrateRunner) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.cmds
	r.cmds = nil
	return out
}

const migrateCompose = "services:\n  ecs.web:\n    image: ecs/ecs:latest\n    command: [simple]\n  redis:\n    image: redis:7\n"

// With ecs.migrate.auto, the migrations run through compose's ecs.web
// service after a pg_dump of the database (real PostgreSQL) into
// /data/ecs-pgdump; an unchanged image does not migrate again; a failed
// migration keeps the dump and marks the appliance failed with the reason.
func TestMigrateDumpsThenRunsECSWebMigrate(t *testing.T) {
	pg := startPG(t)
	pg.sql(t, "postgres", "CREATE DATABASE ecs")
	pg.sql(t, "ecs", "CREATE TABLE documents (id int PRIMARY KEY, title text); INSERT INTO documents SELECT g, 'doc ' || g FROM generate_series(1, 500) g")
	a, _ := testAgent(t)
	a.PG = pg.opts()
	r := &migrateRunner{}
	activate(t, a, clientCertEnv)
	a.Host.Runner = r
	d := startDockerd(t, a)
	d.addImage("sha256:v1", "ecs/ecs:latest")
	put(t, a, ComposeFile, []byte(migrateCompose), 0o644)
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.stepMigrate(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	// No container of the stack yet (a first boot): the linked services
	// are not started for the migration.
	cmds := strings.Join(r.take(), "\n")
	want := "docker-compose -p ecs -f " + a.Host.Path(ComposeFile) + " run --rm -T --no-deps ecs.web migrate"
	if !strings.Contains(cmds, want) {
		t.Errorf("commands:\n%s\nwant %s", cmds, want)
	}
	if m := mode(t, a, MigrateDump); m != 0o600 {
		t.Errorf("dump mode %o", m)
	}
	out, err := exec.Command(pg.bin+"/pg_restore", "--list", a.Host.Path(MigrateDump)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "TABLE public documents") || !strings.Contains(string(out), "Format: CUSTOM") {
		t.Errorf("pg_restore --list: %v\n%s", err, out)
	}
	if tag := read(t, a, MigratedTag); tag != "sha256:v1\n" {
		t.Errorf("tag %q", tag)
	}

	// Same image: nothing runs, no new dump.
	before := read(t, a, MigrateDump)
	pg.sql(t, "ecs", "INSERT INTO documents VALUES (1000, 'after')")
	if err := a.stepMigrate(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if cmds := strings.Join(r.take(), "\n"); strings.Contains(cmds, "docker-compose") {
		t.Errorf("unchanged image migrated again:\n%s", cmds)
	}
	if read(t, a, MigrateDump) != before {
		t.Error("unchanged image dumped again")
	}

	// A new image whose migration fails: the dump of the database as it
	// was is kept, the chain fails with the reason. The stack has
	// (stopped) containers: compose starts the linked services, since a
	// `run` container is linked to every container of theirs.
	r.fail = errors.New("docker-compose: exit status 1: django.db.utils.ProgrammingError")
	d.addImage("sha256:v2", "ecs/ecs:latest")
	d.addContainer("0123abcd", "ecs", false)
	d.addContainer("4567ef01", "ecs", false)
	// (prepare-ecs's migrate step, in the chain: the compose file is the
	// test's, so the steps before it do not run)
	err = a.runChain(context.Background(), "prepare-ecs", []Step{{Name: "migrate", Run: a.stepMigrate}})
	if err == nil || !strings.Contains(err.Error(), "migration (ecs.web migrate) failed") || !strings.Contains(err.Error(), "kept in "+MigrateDump) {
		t.Fatalf("err %v", err)
	}
	if cmds := strings.Join(r.take(), "\n"); !strings.Contains(cmds, " run --rm -T ecs.web migrate") {
		t.Errorf("with the stack's containers, commands:\n%s\nwant run --rm -T ecs.web migrate", cmds)
	}
	reason, failed := status.FailedReason(a.Host)
	if !failed || !strings.HasPrefix(reason, "prepare-ecs/migrate: migration (ecs.web migrate) failed") || !strings.Contains(reason, "ProgrammingError") {
		t.Errorf("failed flag %v %q", failed, reason)
	}
	out, _ = exec.Command(pg.bin+"/pg_restore", "--data-only", "-t", "documents", "-f", "-", a.Host.Path(MigrateDump)).CombinedOutput()
	if !strings.Contains(string(out), "after") {
		t.Error("the kept dump is not the one taken before the failed migration")
	}
	if tag := read(t, a, MigratedTag); tag != "sha256:v1\n" {
		t.Errorf("tag after a failed migration %q", tag)
	}
}

// ecs.migrate.auto: false runs nothing; without ecs.web or a hook there is
// nothing to migrate.
func TestMigrateOffOrNothingToRun(t *testing.T) {
	a, rec := testAgent(t)
	d := startDockerd(t, a)
	activate(t, a, clientCertEnv+"ecs:\n  migrate:\n    auto: false\n")
	put(t, a, ComposeFile, []byte(migrateCompose), 0o644)
	e, _ := a.loadActive()
	if err := a.stepMigrate(context.Background(), e); err != nil || len(rec.Recorded()) != 0 || len(d.requests()) != 0 {
		t.Errorf("auto false: %v %q %q", err, rec.Recorded(), d.requests())
	}
	b, rec2 := testAgent(t)
	d2 := startDockerd(t, b)
	activate(t, b, clientCertEnv)
	put(t, b, ComposeFile, []byte("services:\n  web:\n    image: x\n"), 0o644)
	e, _ = b.loadActive()
	if err := b.stepMigrate(context.Background(), e); err != nil || len(rec2.Recorded()) != 0 || len(d2.requests()) != 0 {
		t.Errorf("no ecs.web: %v %q %q", err, rec2.Recorded(), d2.requests())
	}
}

// Image upgrades on the same data disks: v1 then v2 migrate; v1 again is
// refused (its migrations ran before v2's: the schema moved on) without
// running anything, naming the way back; v2 starts again without
// migrating; a data volume from before the history (only the last
// migrated image recorded) counts that image.
func TestMigrateRefusesOlderImage(t *testing.T) {
	a, _ := testAgent(t)
	r := &migrateRunner{}
	activate(t, a, clientCertEnv)
	a.Host.Runner = r
	d := startDockerd(t, a)
	put(t, a, ComposeFile, []byte(migrateCompose), 0o644)
	e, err := a.loadActive()
	if err != nil {
		t.Fatal(err)
	}
	migrate := func(id string) (bool, error) {
		t.Helper()
		d.addImage(id, "ecs/ecs:latest")
		err := a.stepMigrate(context.Background(), e)
		return strings.Contains(strings.Join(r.take(), "\n"), " ecs.web migrate"), err
	}
	for _, id := range []string{"sha256:v1", "sha256:v2"} {
		if ran, err := migrate(id); err != nil || !ran {
			t.Fatalf("%s: ran %v, %v", id, ran, err)
		}
	}
	ran, err := migrate("sha256:v1")
	if !errors.Is(err, ErrOlderImage) || ran {
		t.Fatalf("v1 after v2: ran %v, %v", ran, err)
	}
	for _, want := range []string{"ecs/ecs:latest (sha256:v1) migrated the database before sha256:v2 did", "going back to an older image", MigrateDump, "ecs-agent recover"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal lacks %q: %v", want, err)
		}
	}
	if ran, err := migrate("sha256:v2"); err != nil || ran {
		t.Errorf("v2 again: ran %v, %v", ran, err)
	}
	if got := read(t, a, MigratedHistory); got != "sha256:v1\nsha256:v2\n" {
		t.Errorf("history %q", got)
	}

	// A volume from before the history: only the last migrated image.
	if err := a.Host.Remove(MigratedHistory); err != nil {
		t.Fatal(err)
	}
	if ran, err := migrate("sha256:v3"); err != nil || !ran {
		t.Fatalf("v3: ran %v, %v", ran, err)
	}
	if got := read(t, a, MigratedHistory); got != "sha256:v2\nsha256:v3\n" {
		t.Errorf("history %q", got)
	}
	if _, err := migrate("sha256:v2"); !errors.Is(err, ErrOlderImage) {
		t.Errorf("v2 after v3: %v", err)
	}
}
