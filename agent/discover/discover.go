// Package discover finds the appliance's env.yml. Sources are tried in a
// fixed order: $ENV_YML, /app/env.yml, a drive labelled "cidata" (ISO9660 or
// vfat, read directly without mounting), a drive labelled "config-2"
// (OpenStack config drive), the EC2 metadata service (IMDSv2 with a v1
// fallback) and the GCE metadata service. A source that is absent, broken,
// or present without user-data falls through to the next one.
package discover

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/host"
)

// ErrNotFound is returned when no source holds an env.yml.
var ErrNotFound = errors.New("no env.yml found")

// errAbsent marks a source that does not exist here; errEmpty a source that
// exists but holds no user-data.
var (
	errAbsent = errors.New("absent")
	errEmpty  = errors.New("present, no user-data")
)

// MaxSize bounds what is read from any source.
const MaxSize = 1 << 20

// Defaults.
const (
	DefaultLocalFile = "/app/env.yml"
	DefaultEC2URL    = "http://169.254.169.254"
	DefaultGCEURL    = "http://169.254.169.254"
	DefaultTimeout   = 3 * time.Second
)

// Config says where to look.
type Config struct {
	Host *host.Host
	// EnvYML is the value of $ENV_YML (a path inside the appliance); "" skips it.
	EnvYML string
	// LocalFile is the local env.yml, normally /app/env.yml.
	LocalFile string
	// Devices, when set, replaces block-device discovery: these paths
	// (devices or image files, host paths) are probed for labels.
	Devices []string
	// EC2URL and GCEURL are the metadata base URLs; "-" disables a source.
	EC2URL, GCEURL string
	// Timeout bounds each source.
	Timeout time.Duration
	Client  *http.Client
}

// Attempt is what one source yielded.
type Attempt struct {
	Source string `json:"source"`
	Result string `json:"result"` // "found", "absent", "empty" or "error: ..."
}

// Result is the env.yml found.
type Result struct {
	Data     []byte
	Source   string // e.g. "cidata:/dev/sr0 (iso9660)"
	Attempts []Attempt
}

type source struct {
	name  string
	fetch func(ctx context.Context) (data []byte, where string, err error)
}

// Find tries every source in order and returns the first env.yml found.
func Find(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.LocalFile == "" {
		cfg.LocalFile = DefaultLocalFile
	}
	if cfg.EC2URL == "" {
		cfg.EC2URL = DefaultEC2URL
	}
	if cfg.GCEURL == "" {
		cfg.GCEURL = DefaultGCEURL
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Transport: &http.Transport{Proxy: nil}}
	}
	sources := []source{
		{"$ENV_YML", func(ctx context.Context) ([]byte, string, error) {
			if cfg.EnvYML == "" {
				return nil, "", errAbsent
			}
			return readLocal(cfg.Host, cfg.EnvYML, "env:")
		}},
		{cfg.LocalFile, func(ctx context.Context) ([]byte, string, error) {
			return readLocal(cfg.Host, cfg.LocalFile, "file:")
		}},
		{"cidata drive", func(ctx context.Context) ([]byte, string, error) {
			return findDrive(ctx, cfg, []string{"cidata"}, "user-data", "cidata:")
		}},
		{"config-2 drive", func(ctx context.Context) ([]byte, string, error) {
			return findDrive(ctx, cfg, []string{"config-2"}, "openstack/latest/user_data", "config-2:")
		}},
		{"ec2 metadata", func(ctx context.Context) ([]byte, string, error) {
			if cfg.EC2URL == "-" {
				return nil, "", errAbsent
			}
			return fetchEC2(ctx, cfg.Client, cfg.EC2URL)
		}},
		{"gce metadata", func(ctx context.Context) ([]byte, string, error) {
			if cfg.GCEURL == "-" {
				return nil, "", errAbsent
			}
			return fetchGCE(ctx, cfg.Client, cfg.GCEURL)
		}},
	}
	res := &Result{}
	for _, s := range sources {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		data, where, err := runSource(sctx, s)
		cancel()
		if err == nil {
			data, err = normalise(data)
		}
		switch {
		case err == nil:
			res.Attempts = append(res.Attempts, Attempt{s.name, "found"})
			res.Data, res.Source = data, where
			return res, nil
		case errors.Is(err, errAbsent):
			res.Attempts = append(res.Attempts, Attempt{s.name, "absent"})
		case errors.Is(err, errEmpty):
			res.Attempts = append(res.Attempts, Attempt{s.name, "empty"})
		default:
			res.Attempts = append(res.Attempts, Attempt{s.name, "error: " + err.Error()})
		}
	}
	return res, ErrNotFound
}

// runSource runs one source, giving up when its context ends even if the
// source itself blocks (a hung device read, say).
func runSource(ctx context.Context, s source) ([]byte, string, error) {
	type out struct {
		data  []byte
		where string
		err   error
	}
	ch := make(chan out, 1)
	go func() {
		d, w, err := s.fetch(ctx)
		ch <- out{d, w, err}
	}()
	select {
	case o := <-ch:
		return o.data, o.where, o.err
	case <-ctx.Done():
		return nil, "", fmt.Errorf("timed out")
	}
}

// normalise gunzips gzip'd user-data (EC2 allows it) and rejects empty data.
func normalise(data []byte) ([]byte, error) {
	if len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("gzip user-data: %w", err)
		}
		data, err = io.ReadAll(io.LimitReader(zr, MaxSize+1))
		if err != nil {
			return nil, fmt.Errorf("gzip user-data: %w", err)
		}
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("user-data larger than %d bytes", MaxSize)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, errEmpty
	}
	return data, nil
}

// Summary renders the attempts for a log line.
func (r *Result) Summary() string {
	if r == nil {
		return ""
	}
	parts := make([]string, len(r.Attempts))
	for i, a := range r.Attempts {
		parts[i] = a.Source + ": " + a.Result
	}
	return strings.Join(parts, "; ")
}
