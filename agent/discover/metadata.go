package discover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

func get(ctx context.Context, c *http.Client, method, url string, hdr map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxSize+1))
	return resp, body, err
}

// fetchEC2 speaks the EC2 instance metadata protocol: IMDSv2 (PUT a
// session token, then GET with it) and, when the token endpoint is not
// offered, IMDSv1 (plain GET).
func fetchEC2(ctx context.Context, c *http.Client, base string) ([]byte, string, error) {
	base = strings.TrimRight(base, "/")
	resp, tok, err := get(ctx, c, http.MethodPut, base+"/latest/api/token",
		map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "300"})
	if err != nil {
		// Nothing answers: not on EC2.
		return nil, "", fmt.Errorf("%w (%v)", errAbsent, shortNetErr(err))
	}
	hdr := map[string]string{}
	mode := "imdsv1"
	switch {
	case resp.StatusCode == http.StatusOK && len(tok) > 0:
		hdr["X-aws-ec2-metadata-token"] = strings.TrimSpace(string(tok))
		mode = "imdsv2"
	case resp.StatusCode == http.StatusForbidden, resp.StatusCode == http.StatusNotFound,
		resp.StatusCode == http.StatusMethodNotAllowed, resp.StatusCode == http.StatusBadRequest:
		// No IMDSv2 here: fall back to v1.
	default:
		return nil, "", fmt.Errorf("ec2 metadata token: HTTP %d", resp.StatusCode)
	}
	resp, body, err := get(ctx, c, http.MethodGet, base+"/latest/user-data", hdr)
	if err != nil {
		return nil, "", fmt.Errorf("ec2 user-data: %v", shortNetErr(err))
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return body, "ec2-metadata (" + mode + ")", nil
	case http.StatusNotFound, http.StatusNoContent:
		return nil, "", errEmpty
	}
	return nil, "", fmt.Errorf("ec2 user-data: HTTP %d", resp.StatusCode)
}

// fetchGCE speaks the GCE metadata protocol: requests carry
// "Metadata-Flavor: Google" and a genuine server answers with the same header.
func fetchGCE(ctx context.Context, c *http.Client, base string) ([]byte, string, error) {
	base = strings.TrimRight(base, "/")
	resp, body, err := get(ctx, c, http.MethodGet, base+"/computeMetadata/v1/instance/attributes/user-data",
		map[string]string{"Metadata-Flavor": "Google"})
	if err != nil {
		return nil, "", fmt.Errorf("%w (%v)", errAbsent, shortNetErr(err))
	}
	if resp.Header.Get("Metadata-Flavor") != "Google" {
		return nil, "", fmt.Errorf("%w (server is not GCE metadata)", errAbsent)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return body, "gce-metadata", nil
	case http.StatusNotFound:
		return nil, "", errEmpty
	}
	return nil, "", fmt.Errorf("gce user-data: HTTP %d", resp.StatusCode)
}

func shortNetErr(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}
