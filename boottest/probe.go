package boottest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Loopback is the host address of a forwarded guest port.
func Loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// Transport is an HTTPS transport to the guest's web server through addr
// (a forwarded loopback port): the appliance's certificate is self-signed
// (or for a domain that does not resolve to this loopback forward), so it
// is not verified; SNI is host; one connection a request.
func Transport(addr, host string) *http.Transport {
	return &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: host},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
}

// WaitSSH waits until the forwarded port answers with an SSH banner.
func WaitSSH(ctx context.Context, port int) error {
	addr := Loopback(port)
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			stop := context.AfterFunc(ctx, func() { c.Close() })
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4)
			_, err = io.ReadFull(c, buf)
			stop()
			c.Close()
			if err == nil && string(buf) == "SSH-" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// WaitHTTPS polls https://DOMAIN/ at addr (the forwarded 443 port) until
// it answers 200 (want200) or anything (otherwise), stopped is closed (QEMU
// exited) or ctx ends.
func WaitHTTPS(ctx context.Context, log logrus.FieldLogger, addr, domain string, want200 bool, stopped <-chan struct{}) (int, string, error) {
	host := domain
	if host == "" {
		host = "localhost"
	}
	tr := Transport(addr, host)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	url := "https://" + host + "/"
	var last string
	status := 0
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			status = resp.StatusCode
			if status == http.StatusOK || !want200 {
				return status, string(body), nil
			}
			if msg := fmt.Sprintf("HTTP %d", status); msg != last {
				log.Infof("%s via %s answered %s, waiting for 200", url, addr, msg)
				last = msg
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return status, "", fmt.Errorf("%s via %s: no 200 before the time-out (last: %s)", url, addr, last)
		case <-stopped:
			return status, "", fmt.Errorf("%s via %s: QEMU exited before it answered 200", url, addr)
		case <-time.After(2 * time.Second):
		}
	}
}

var (
	htmlDrop = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`(?is)<(script|style|head)\b.*?</(script|style|head)>`)
	})
	htmlTag = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?s)<[^>]*>`) })
)

// pageText is the visible text of an HTML page, whitespace collapsed, cut
// at max bytes.
func pageText(body string, max int) string {
	t := htmlTag().ReplaceAllString(htmlDrop().ReplaceAllString(body, " "), " ")
	t = strings.NewReplacer("&amp;", "&", "&lt;", "<", "&gt;", ">", "&quot;", `"`, "&#39;", "'", "&nbsp;", " ").Replace(t)
	t = strings.Join(strings.Fields(t), " ")
	if len(t) > max {
		t = t[:max] + "…"
	}
	return t
}
