package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"
)

// hostPort returns host:port of a redis:// or memcached:// URL.
func hostPort(raw, defPort string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("bad URL %q", raw)
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), defPort), nil
	}
	return u.Host, nil
}

// dialService connects to the service at raw (a redis:// or memcached://
// URL; defPort when it names none), with a deadline for the whole exchange.
func dialService(raw, defPort string, deadline time.Duration) (net.Conn, error) {
	addr, err := hostPort(raw, defPort)
	if err != nil {
		return nil, err
	}
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(deadline))
	return c, nil
}

// redisCmd sends one RESP command and returns the first reply line.
func redisCmd(args ...string) (string, error) {
	c, err := dialService(env("REDIS_URL", "redis://redis:6379/0"), "6379", 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "-") {
		return "", errors.New(line[1:])
	}
	if strings.HasPrefix(line, "$") && line != "$-1" {
		v, err := r.ReadString('\n')
		return strings.TrimRight(v, "\r\n"), err
	}
	if strings.HasPrefix(line, "*") && line != "*-1" {
		// BRPOP: [key, value]; return the value.
		var last string
		for i := 0; i < 2; i++ {
			if _, err := r.ReadString('\n'); err != nil {
				return "", err
			}
			if last, err = r.ReadString('\n'); err != nil {
				return "", err
			}
		}
		return strings.TrimRight(last, "\r\n"), nil
	}
	return line, nil
}

// memcachedCmd sends one text-protocol command and returns the reply.
func memcachedCmd(cmd string) (string, error) {
	c, err := dialService(env("MEMCACHED_URL", "memcached://memcached:11211"), "11211", 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	var out strings.Builder
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return out.String(), err
		}
		out.WriteString(line)
		t := strings.TrimRight(line, "\r\n")
		if t == "END" || t == "STORED" || t == "NOT_STORED" || strings.HasPrefix(t, "ERROR") ||
			strings.HasPrefix(t, "CLIENT_ERROR") || strings.HasPrefix(t, "SERVER_ERROR") {
			return out.String(), nil
		}
	}
}

func memcachedSet(key, val string) error {
	out, err := memcachedCmd(fmt.Sprintf("set %s 0 0 %d\r\n%s", key, len(val), val))
	if err == nil && !strings.HasPrefix(out, "STORED") {
		err = fmt.Errorf("memcached set: %q", out)
	}
	return err
}

func memcachedGet(key string) (string, error) {
	out, err := memcachedCmd("get " + key)
	if err != nil {
		return "", err
	}
	lines := strings.Split(out, "\r\n")
	if len(lines) >= 2 && strings.HasPrefix(lines[0], "VALUE ") {
		return lines[1], nil
	}
	return "", nil
}
