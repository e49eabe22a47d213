package deploy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// DefaultPort is the API's port when HOST names none.
const DefaultPort = "8866"

// Client talks to the push-deploy API with a client certificate.
type Client struct {
	Base string // https://host:port
	HTTP *http.Client
}

// ClientOptions are the client's TLS materials.
type ClientOptions struct {
	CertFile, KeyFile string // client certificate and key (PEM)
	CAFile            string // CA that signed the server certificate (PEM)
	ServerName        string // expected server name, when it differs from HOST
}

// NewClient returns a client for host ("name", "name:port" or an https:// URL).
func NewClient(hostArg string, o ClientOptions) (*Client, error) {
	base, err := baseURL(hostArg)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--ca %s: no PEM certificate", o.CAFile)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS12,
		ServerName:   o.ServerName,
	}
	tr := &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	return &Client{Base: base, HTTP: &http.Client{Transport: tr}}, nil
}

func baseURL(h string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("empty host")
	}
	if !strings.Contains(h, "://") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), DefaultPort)
		}
		h = "https://" + h
	}
	u, err := url.Parse(h)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("host %q: want NAME[:PORT] or https://NAME[:PORT]", h)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// APIError is an error answer of the API.
type APIError struct {
	Code int
	Msg  string
}

func (e *APIError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Code, e.Msg) }

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, size int64, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/x-tar")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ae apiError
		if json.Unmarshal(data, &ae) == nil && ae.Error != "" {
			return &APIError{resp.StatusCode, ae.Error}
		}
		return &APIError{resp.StatusCode, strings.TrimSpace(string(data))}
	}
	return json.Unmarshal(data, out)
}

// Load uploads a docker-archive (.tar or .tar.gz) to deployment name.
func (c *Client) Load(ctx context.Context, name string, r io.Reader, size int64) (*Status, error) {
	var st Status
	err := c.do(ctx, http.MethodPost, "/v1/deployments/"+url.PathEscape(name)+"/load", r, size, &st)
	return &st, err
}

// Action runs start, stop or restart on deployment name.
func (c *Client) Action(ctx context.Context, name, action string) (*Status, error) {
	var st Status
	err := c.do(ctx, http.MethodPost, "/v1/deployments/"+url.PathEscape(name)+"/"+action, nil, 0, &st)
	return &st, err
}

// Get returns one deployment's status.
func (c *Client) Get(ctx context.Context, name string) (*Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/deployments/"+url.PathEscape(name), nil, 0, &st)
	return &st, err
}

// List returns every deployment's status.
func (c *Client) List(ctx context.Context) ([]Status, error) {
	var st []Status
	err := c.do(ctx, http.MethodGet, "/v1/deployments", nil, 0, &st)
	return st, err
}
