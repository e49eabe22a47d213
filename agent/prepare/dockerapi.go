package prepare

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DockerSocket is dockerd's API socket (docker.socket; the CLI's
// /var/run/docker.sock is the same file). A connection to it starts
// dockerd, as a docker command does. (A variable: tests.)
var DockerSocket = "/run/docker.sock"

// dockerAPIVersion is the Engine API version the agent asks for: Docker
// 20.10's (Debian 12), which later engines (Debian 13's 26.1) still serve,
// with the same answers for the calls below.
const dockerAPIVersion = "v1.41"

// errNoSuchImage is what DockerAPI.ImageID answers (wrapped) for an image
// dockerd does not have.
var errNoSuchImage = errors.New("no such image")

// DockerAPI is the part of dockerd's Engine API the agent uses for
// queries and small changes (images, tags, the stack's containers), over
// its unix socket. Under emulation each docker CLI run costs 0.4–1 s of
// CPU (a large Go program's start); a request costs milliseconds. `docker
// load` and Compose stay CLI runs.
type DockerAPI struct {
	c *http.Client
}

// docker returns the agent's client of dockerd's API (the socket under
// the host's root).
func (a *Agent) docker() *DockerAPI {
	sock := a.Host.Path(DockerSocket)
	var d net.Dialer
	return &DockerAPI{c: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", sock)
		},
		// A connection per request, as a CLI run has: dockerd is stopped
		// and started again (the storage step) between calls.
		DisableKeepAlives: true,
	}}}
}

// dockerAPIError is an answer of dockerd that is not a success.
type dockerAPIError struct {
	call   string // "GET /images/ecs/ecs:latest/json"
	status int
	msg    string // dockerd's message
}

func (e *dockerAPIError) Error() string {
	return fmt.Sprintf("docker API %s: dockerd answered %d %s: %s", e.call, e.status, http.StatusText(e.status), e.msg)
}

// do sends one request and decodes a JSON answer into out (when not nil);
// an answer with a status not in ok is an error naming the call and what
// dockerd said.
func (d *DockerAPI) do(ctx context.Context, method, p string, q url.Values, out any, ok ...int) (int, error) {
	call := method + " " + p
	if len(q) > 0 {
		raw, _ := url.QueryUnescape(q.Encode())
		call += "?" + raw
	}
	u := url.URL{Scheme: "http", Host: "docker", Path: "/" + dockerAPIVersion + p, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return 0, fmt.Errorf("docker API %s: %w", call, err)
	}
	resp, err := d.c.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the dial error names the socket; the URL's host is made up
		}
		return 0, fmt.Errorf("docker API %s: %w", call, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("docker API %s: reading the answer: %w", call, err)
	}
	for _, s := range ok {
		if resp.StatusCode != s {
			continue
		}
		if out != nil && s != http.StatusNoContent && s != http.StatusNotModified {
			if err := json.Unmarshal(body, out); err != nil {
				return s, fmt.Errorf("docker API %s: dockerd's answer: %w", call, err)
			}
		}
		return s, nil
	}
	var m struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &m) == nil && m.Message != "" {
		msg = m.Message
	}
	return resp.StatusCode, &dockerAPIError{call: call, status: resp.StatusCode, msg: msg}
}

// ImageIDs lists the IDs of every image dockerd has, intermediate ones
// included (`docker images --all --no-trunc --quiet`).
func (d *DockerAPI) ImageIDs(ctx context.Context) ([]string, error) {
	var list []struct {
		ID string `json:"Id"`
	}
	if _, err := d.do(ctx, http.MethodGet, "/images/json", url.Values{"all": {"1"}}, &list, http.StatusOK); err != nil {
		return nil, err
	}
	ids := make([]string, len(list))
	for i, im := range list {
		ids[i] = im.ID
	}
	return ids, nil
}

// ImageID returns the ID of the image ref names (a tag, an ID): `docker
// image inspect --format {{.Id}} REF`. An image dockerd does not have is
// an error that wraps errNoSuchImage.
func (d *DockerAPI) ImageID(ctx context.Context, ref string) (string, error) {
	var im struct {
		ID string `json:"Id"`
	}
	status, err := d.do(ctx, http.MethodGet, "/images/"+ref+"/json", nil, &im, http.StatusOK)
	if status == http.StatusNotFound {
		return "", noSuchImage{err}
	}
	if err != nil {
		return "", err
	}
	return im.ID, nil
}

// noSuchImage is dockerd's 404 for an image: its message, and
// errors.Is(err, errNoSuchImage).
type noSuchImage struct{ error }

func (e noSuchImage) Is(target error) bool { return target == errNoSuchImage }
func (e noSuchImage) Unwrap() error        { return e.error }

// Tag gives the image source (a tag or an ID) the name target (`docker
// tag SOURCE TARGET`).
func (d *DockerAPI) Tag(ctx context.Context, source, target string) error {
	repo, tag, err := splitImageRef(target)
	if err != nil {
		return err
	}
	_, err = d.do(ctx, http.MethodPost, "/images/"+source+"/tag", url.Values{"repo": {repo}, "tag": {tag}}, nil, http.StatusCreated, http.StatusOK)
	return err
}

// splitImageRef splits an image reference into its repository and tag as
// `docker tag` does: the tag follows the last colon after the last slash
// (a colon before it belongs to a registry's host:port), and none means
// latest. A reference with a digest cannot name a tag.
func splitImageRef(ref string) (repo, tag string, err error) {
	if strings.Contains(ref, "@") {
		return "", "", fmt.Errorf("%s: a reference with a digest cannot be a tag", ref)
	}
	repo, tag = ref, "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	if repo == "" || tag == "" {
		return "", "", fmt.Errorf("%q: not an image reference", ref)
	}
	return repo, tag, nil
}

// ContainersByLabel lists the IDs of the containers, running or not, that
// have the label key=value (`docker ps -aq --filter label=KEY=VALUE`).
func (d *DockerAPI) ContainersByLabel(ctx context.Context, key, value string) ([]string, error) {
	filters, err := json.Marshal(map[string]map[string]bool{"label": {key + "=" + value: true}})
	if err != nil {
		return nil, err
	}
	var list []struct {
		ID string `json:"Id"`
	}
	if _, err := d.do(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(filters)}}, &list, http.StatusOK); err != nil {
		return nil, err
	}
	ids := make([]string, len(list))
	for i, c := range list {
		ids[i] = c.ID
	}
	return ids, nil
}

// StopContainers stops the containers ids at once, each given timeout
// before it is killed (`docker stop --time N ID…`); a stopped one is no
// error. The errors are joined.
func (d *DockerAPI) StopContainers(ctx context.Context, timeout time.Duration, ids ...string) error {
	q := url.Values{"t": {strconv.Itoa(int(timeout / time.Second))}}
	return eachContainer(ids, func(id string) error {
		_, err := d.do(ctx, http.MethodPost, "/containers/"+id+"/stop", q, nil, http.StatusNoContent, http.StatusNotModified)
		return err
	})
}

// RemoveContainers removes the containers ids at once, running or not,
// keeping their volumes (`docker rm --force ID…`); one that is gone
// already is no error. The errors are joined.
func (d *DockerAPI) RemoveContainers(ctx context.Context, ids ...string) error {
	return eachContainer(ids, func(id string) error {
		status, err := d.do(ctx, http.MethodDelete, "/containers/"+id, url.Values{"force": {"1"}}, nil, http.StatusNoContent)
		if status == http.StatusNotFound {
			return nil
		}
		return err
	})
}

// eachContainer runs f for every id concurrently, as the docker CLI does
// for several containers, and joins the errors in the order of ids.
func eachContainer(ids []string, f func(id string) error) error {
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { errs[i] = f(id) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// PruneImages removes the dangling images (`docker image prune -f`).
func (d *DockerAPI) PruneImages(ctx context.Context) error {
	_, err := d.do(ctx, http.MethodPost, "/images/prune", nil, nil, http.StatusOK)
	return err
}
