//go:build !ecsfront

package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"

	"github.com/ecs-image/ecs-image/builder"
	"github.com/ecs-image/ecs-image/release"
)

// remoteEntry is an object of the remote stage cache.
type remoteEntry struct {
	builder.StageEntry
	Object   string
	Size     int64
	Uploaded time.Time
	// Err: stage.json unreadable (the object is listed, and pruned as
	// unusable).
	Err error
}

// listRemote lists the stage objects of t with their stage.json (the
// first tar entry, read with a ranged GET).
func listRemote(ctx context.Context, t *release.S3Target) ([]*remoteEntry, error) {
	objs, err := t.List(ctx, "stages/")
	if err != nil {
		return nil, err
	}
	var out []*remoteEntry
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, ".tar.zst") {
			continue
		}
		e := &remoteEntry{Object: o.Key, Size: o.Size, Uploaded: o.Modified}
		e.Err = readRemoteEntry(ctx, t, o.Key, &e.StageEntry)
		if e.Err == nil && builder.RemoteObject(e.Key) != o.Key {
			e.Err = fmt.Errorf("stage.json key %s does not match the object", e.Key)
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Uploaded.After(out[j].Uploaded) })
	return out, nil
}

func readRemoteEntry(ctx context.Context, t *release.S3Target, key string, e *builder.StageEntry) error {
	head, err := t.ReadPrefix(ctx, key, 64<<10)
	if err != nil {
		return err
	}
	zr, err := zstd.NewReader(bytes.NewReader(head))
	if err != nil {
		return err
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, err := tr.Next()
	if err != nil || h.Name != "stage.json" {
		return fmt.Errorf("no stage.json first")
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		return fmt.Errorf("stage.json: %v", err)
	}
	return json.Unmarshal(data, e)
}

// pruneRemote chooses the objects to delete: uploaded before before, or
// beyond the keep newest of their template and stage name (keep > 0),
// unusable ones (unreadable; without a stage ID, as an older ecs-image
// wrote them; built on another build of their parent stage than the
// remote's, or on a parent stage no longer there), and every object built
// on a chosen one.
func pruneRemote(ents []*remoteEntry, before time.Time, keep int) []*remoteEntry {
	dead := map[string]bool{}
	seen := map[string]int{}
	byObject := map[string]*remoteEntry{}
	for _, e := range ents {
		byObject[e.Object] = e
	}
	for _, e := range ents { // newest first
		if e.Err != nil || e.ID == "" {
			dead[e.Object] = true
			continue
		}
		if !strings.HasPrefix(e.Parent, "base:") {
			if p := byObject[builder.RemoteObject(e.Parent)]; p == nil || p.Err != nil || p.ID != e.ParentID {
				dead[e.Object] = true
				continue
			}
		}
		seen[e.Template+"\x00"+e.Name]++
		if e.Uploaded.Before(before) || (keep > 0 && seen[e.Template+"\x00"+e.Name] > keep) {
			dead[e.Object] = true
		}
	}
	for changed := true; changed; {
		changed = false
		for _, e := range ents {
			if e.Err != nil || dead[e.Object] {
				continue
			}
			for _, p := range []string{e.Parent, e.BootFrom} {
				if p != "" && p != e.Key && dead[builder.RemoteObject(p)] {
					dead[e.Object] = true
					changed = true
				}
			}
		}
	}
	var out []*remoteEntry
	for _, e := range ents {
		if dead[e.Object] {
			out = append(out, e)
		}
	}
	return out
}

var cacheRemoteFlags struct {
	remote        bool
	url, endpoint string
}

// addRemoteFlags adds --remote, --cache-remote and --cache-remote-endpoint
// to a cache command.
func addRemoteFlags(c *cobra.Command) {
	c.Flags().BoolVar(&cacheRemoteFlags.remote, "remote", false, "the remote stage cache (--cache-remote, default $"+cacheRemoteEnv+") instead of the local one")
	c.Flags().StringVar(&cacheRemoteFlags.url, "cache-remote", "", "the remote stage cache s3://bucket/prefix (implies --remote)")
	c.Flags().StringVar(&cacheRemoteFlags.endpoint, "cache-remote-endpoint", "", "S3 endpoint of the remote (default $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL)")
}

// cacheRemote opens the remote of --remote/--cache-remote, or returns nil
// when neither is given.
func cacheRemote(cmd *cobra.Command) (*release.S3Target, error) {
	if !cacheRemoteFlags.remote && cacheRemoteFlags.url == "" {
		return nil, nil
	}
	t, err := openRemote(cmd, cacheRemoteFlags.url, cacheRemoteFlags.endpoint)
	if err == nil && t == nil {
		return nil, badInputf("--remote: no --cache-remote given and $%s is not set", cacheRemoteEnv)
	}
	return t, err
}

func cacheLsRemote(cmd *cobra.Command, t *release.S3Target) error {
	ents, err := listRemote(cmd.Context(), t)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY\tTEMPLATE\tSTAGE\tSIZE\tUPLOADED\tPARENT")
	var total int64
	for _, e := range ents {
		total += e.Size
		if e.Err != nil {
			fmt.Fprintf(w, "%s\t?\t?\t%.0fM\t%s\tunreadable: %v\n", strings.TrimSuffix(strings.TrimPrefix(e.Object, "stages/"), ".tar.zst"), float64(e.Size)/(1<<20), e.Uploaded.Local().Format("2006-01-02 15:04"), e.Err)
			continue
		}
		parent := e.Parent
		if len(parent) > 17 {
			parent = parent[:17]
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%.0fM\t%s\t%s\n", e.Key[:12], e.Template, e.Name, float64(e.Size)/(1<<20), e.Uploaded.Local().Format("2006-01-02 15:04"), parent)
	}
	w.Flush()
	fmt.Fprintf(cmd.ErrOrStderr(), "%d stages (%.0f MiB) in %s\n", len(ents), float64(total)/(1<<20), t)
	return nil
}

func cachePruneRemote(cmd *cobra.Command, t *release.S3Target, before time.Time, keep int) error {
	ents, err := listRemote(cmd.Context(), t)
	if err != nil {
		return err
	}
	var freed int64
	n := 0
	for _, e := range pruneRemote(ents, before, keep) {
		if err := t.Delete(cmd.Context(), e.Object); err != nil {
			return err
		}
		n++
		freed += e.Size
		fmt.Fprintf(cmd.OutOrStdout(), "removed %s (%s/%s)\n", strings.TrimSuffix(strings.TrimPrefix(e.Object, "stages/"), ".tar.zst")[:12], e.Template, e.Name)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "removed %d stages from %s, freed %.0f MiB\n", n, t, float64(freed)/(1<<20))
	// Uploads never completed nor aborted (a builder killed mid-upload):
	// their parts take room but no object is visible.
	ups, err := t.ListUploads(cmd.Context(), "stages/")
	if err != nil {
		return err
	}
	for _, u := range ups {
		if u.Initiated.Before(before) {
			if err := t.AbortUpload(cmd.Context(), u); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "aborted the upload of %s started %s\n", u.Key, u.Initiated.Local().Format("2006-01-02 15:04"))
		}
	}
	return nil
}
