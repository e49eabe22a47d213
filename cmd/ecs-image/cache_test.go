package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/vmdkstream"
	"github.com/ecs-image/ecs-image/vmdkstream/grainstore"
)

// TestCacheGrainStoresCLI: cache ls lists the VMDK grain stores beside the
// stages; cache prune keeps a recently used one and removes an old one.
func TestCacheGrainStoresCLI(t *testing.T) {
	t.Setenv("ECS_IMAGE_CACHE", t.TempDir())
	dir := builder.DefaultStageCache().GrainStores()
	s := grainstore.New(dir, "app-dev vmdk-1048576 level 1")
	out := filepath.Join(t.TempDir(), "a.vmdk")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	disk := bytes.Repeat([]byte("grain store "), 1<<20/12+1)[:1<<20]
	rec := &grainstore.Recorder{}
	if err := vmdkstream.Write(context.Background(), f, bytes.NewReader(disk), int64(len(disk)), nil, vmdkstream.Options{Record: rec.Record}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := s.Commit(out, rec); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runEnvCLI(t, "cache", "ls")
	if code != exitOK || !strings.Contains(stdout, "VMDK GRAIN STORE") || !strings.Contains(stdout, "app-dev vmdk-1048576 level 1") ||
		!strings.Contains(stdout, "shares its blocks with an output") || !strings.Contains(stderr, "1 VMDK grain stores in "+dir) {
		t.Fatalf("cache ls: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = runEnvCLI(t, "cache", "prune", "--older-than", "1h")
	if code != exitOK || strings.Contains(stdout, "grain store") || !strings.Contains(stderr, "0 VMDK grain stores") {
		t.Fatalf("cache prune of a fresh store: exit %d\n%s%s", code, stdout, stderr)
	}
	ls, _ := grainstore.List(dir)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(strings.TrimSuffix(ls[0].VMDK, ".vmdk")+".idx", old, old)
	code, stdout, stderr = runEnvCLI(t, "cache", "prune", "--older-than", "1h")
	if code != exitOK || !strings.Contains(stdout, "VMDK grain store of app-dev vmdk-1048576 level 1") || !strings.Contains(stderr, "1 VMDK grain stores") {
		t.Fatalf("cache prune of an old store: exit %d\n%s%s", code, stdout, stderr)
	}
	if ls, _ := grainstore.List(dir); len(ls) != 0 {
		t.Fatalf("left after prune: %+v", ls)
	}
}
