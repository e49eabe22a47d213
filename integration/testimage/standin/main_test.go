package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeServer answers each line it reads with reply(line) until the client closes.
func fakeServer(t *testing.T, reply func(r *bufio.Reader, line string) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if out := reply(r, strings.TrimRight(l, "\r\n")); out != "" {
						c.Write([]byte(out))
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

func TestRedisAndMemcachedClients(t *testing.T) {
	redis := fakeServer(t, func(r *bufio.Reader, l string) string {
		if !strings.HasPrefix(l, "*") {
			return ""
		}
		n := 0
		for _, c := range l[1:] {
			n = n*10 + int(c-'0')
		}
		var args []string
		for i := 0; i < n; i++ {
			r.ReadString('\n')
			a, _ := r.ReadString('\n')
			args = append(args, strings.TrimRight(a, "\r\n"))
		}
		switch args[0] {
		case "PING":
			return "+PONG\r\n"
		case "GET":
			return "$3\r\nabc\r\n"
		case "BRPOP":
			return "*2\r\n$4\r\njobs\r\n$3\r\njob\r\n"
		}
		return "-ERR unknown\r\n"
	})
	t.Setenv("REDIS_URL", "redis://"+redis+"/0")
	if out, err := redisCmd("PING"); err != nil || out != "+PONG" {
		t.Errorf("PING: %q %v", out, err)
	}
	if out, err := redisCmd("GET", "k"); err != nil || out != "abc" {
		t.Errorf("GET: %q %v", out, err)
	}
	if out, err := redisCmd("BRPOP", "jobs", "1"); err != nil || out != "job" {
		t.Errorf("BRPOP: %q %v", out, err)
	}
	if _, err := redisCmd("NOPE"); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Errorf("error reply: %v", err)
	}
	store := map[string]string{}
	mc := fakeServer(t, func(r *bufio.Reader, l string) string {
		f := strings.Fields(l)
		switch f[0] {
		case "set":
			v, _ := r.ReadString('\n')
			store[f[1]] = strings.TrimRight(v, "\r\n")
			return "STORED\r\n"
		case "get":
			if v, ok := store[f[1]]; ok {
				return "VALUE " + f[1] + " 0 " + itoa(len(v)) + "\r\n" + v + "\r\nEND\r\n"
			}
			return "END\r\n"
		}
		return "ERROR\r\n"
	})
	t.Setenv("MEMCACHED_URL", "memcached://"+mc)
	if err := memcachedSet("k", "v1"); err != nil {
		t.Fatal(err)
	}
	if v, err := memcachedGet("k"); err != nil || v != "v1" {
		t.Errorf("get: %q %v", v, err)
	}
	if v, err := memcachedGet("missing"); err != nil || v != "" {
		t.Errorf("get missing: %q %v", v, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestSignerReadsTheCertificate(t *testing.T) {
	dir := t.TempDir()
	importCert = filepath.Join(dir, "server.cert.pem")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "a.ecs.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	t.Setenv("HOSTNAME", "a.ecs.test")
	h := signerHandler("pdfas")
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest("GET", "/pdf-as-web/", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("without the certificate: %d", rec.Code)
	}
	os.WriteFile(importCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	rec = httptest.NewRecorder()
	h(rec, httptest.NewRequest("GET", "/pdf-as-web/", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "ecs-standin pdfas version=1 hostname=a.ecs.test cert=a.ecs.test sha256=") {
		t.Errorf("%d %q", rec.Code, rec.Body.String())
	}
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	sum, n, err := store(filepath.Join(dir, "doc.pdf"), strings.NewReader("hello"))
	if err != nil || n != 5 || sum != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Errorf("%s %d %v", sum, n, err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "doc.pdf")); string(data) != "hello" {
		t.Errorf("stored %q", data)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}
