package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ecs-image/ecs-image/testenv"
)

// freePort returns a free loopback TCP port.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDaemon runs a server in the foreground until the test ends and
// waits until its port accepts connections.
func startDaemon(t *testing.T, port int, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s does not listen on %d:\n%s", name, port, out.String())
}

// startPostgres runs a throwaway cluster as user postgres, reachable over
// TCP with a password (scram-sha-256), as the appliance's containers reach
// the host's, and returns its DATABASE_URL for role and database ecs.
func startPostgres(t *testing.T) string {
	t.Helper()
	testenv.Root(t, "PostgreSQL runs as user postgres")
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(m) == 0 {
		testenv.Missing(t, "PostgreSQL server not installed (make deps: postgresql)")
	}
	bin := filepath.Dir(m[len(m)-1])
	dir, err := os.MkdirTemp("", "ecs-standin-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exec.Command("chown", "postgres:postgres", dir).Run()
	os.Chmod(dir, 0o700)
	port := freePort(t)
	run := func(prog string, args ...string) {
		t.Helper()
		cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", bin + "/" + prog}, args...)...)
		cmd.Dir = "/"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", prog, args, err, out)
		}
	}
	run("initdb", "-D", dir+"/data", "-A", "scram-sha-256", "--auth-local=peer", "-E", "UTF8", "--locale=C.UTF-8", "-U", "postgres")
	run("pg_ctl", "-D", dir+"/data", "-w", "-l", dir+"/log", "-o",
		fmt.Sprintf("-k %s -p %d -c listen_addresses=127.0.0.1 -c fsync=off", dir, port), "start")
	t.Cleanup(func() {
		exec.Command("runuser", "-u", "postgres", "--", bin+"/pg_ctl", "-D", dir+"/data", "-m", "immediate", "stop").Run()
	})
	for _, sql := range []string{"CREATE ROLE ecs LOGIN PASSWORD 'secret'", "CREATE DATABASE ecs OWNER ecs TEMPLATE template0 ENCODING 'UTF8'"} {
		run("psql", "-X", "-q", "-h", dir, "-p", fmt.Sprint(port), "-d", "postgres", "-c", sql)
	}
	return fmt.Sprintf("postgres://ecs:secret@127.0.0.1:%d/ecs", port)
}

// TestStandinAgainstRealServices: the web and smtpd stand-ins against a
// real PostgreSQL, redis-server and memcached on the loopback (what the
// appliance's end-to-end test checks through nginx and stunnel).
func TestStandinAgainstRealServices(t *testing.T) {
	testenv.Tools(t, "redis-server", "memcached")
	dbURL := startPostgres(t)
	rport, mport := freePort(t), freePort(t)
	startDaemon(t, rport, "redis-server", "--port", fmt.Sprint(rport), "--bind", "127.0.0.1", "--save", "", "--dir", t.TempDir())
	startDaemon(t, mport, "memcached", "-l", "127.0.0.1", "-p", fmt.Sprint(mport), "-U", "0", "-u", "nobody")
	t.Setenv("DATABASE_URL", dbURL)
	t.Setenv("REDIS_URL", fmt.Sprintf("redis://127.0.0.1:%d/0", rport))
	t.Setenv("MEMCACHED_URL", fmt.Sprintf("memcached://127.0.0.1:%d", mport))
	vaultDir = t.TempDir()

	if err := migrate(); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	db, err := openDB()
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	srv := httptest.NewServer(webMux(db))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	var h health
	json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if resp.StatusCode != 200 || h.Postgres != "ok" || h.Redis != "ok" || h.Memcached != "ok" || h.Database != "ecs" || h.Collation != "C.UTF-8" {
		t.Errorf("/health: %d %+v", resp.StatusCode, h)
	}

	req, _ := http.NewRequest("PUT", srv.URL+"/upload/doc.pdf", strings.NewReader("%PDF-1.4 test"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("upload: %v %v", err, resp)
	}
	resp.Body.Close()
	if data, _ := os.ReadFile(filepath.Join(vaultDir, "doc.pdf")); string(data) != "%PDF-1.4 test" {
		t.Errorf("vault: %q", data)
	}
	// The upload queued a job in redis.
	if job, err := redisCmd("RPOP", "standin-jobs"); err != nil || job != "upload doc.pdf" {
		t.Errorf("queued job: %q %v", job, err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSMTP(ln, db)
	msg := "From: a@example.org\r\nTo: ecs@a.ecs.test\r\nSubject: host test\r\n\r\nhello\r\n"
	if err := smtp.SendMail(ln.Addr().String(), nil, "a@example.org", []string{"ecs@a.ecs.test"}, []byte(msg)); err != nil {
		t.Fatalf("SMTP: %v", err)
	}
	resp, err = http.Get(srv.URL + "/mails")
	if err != nil {
		t.Fatal(err)
	}
	var mails []struct{ From, To, Data string }
	json.NewDecoder(resp.Body).Decode(&mails)
	resp.Body.Close()
	if len(mails) != 1 || !strings.Contains(mails[0].Data, "Subject: host test") || mails[0].To != "<ecs@a.ecs.test>" {
		t.Errorf("/mails: %+v", mails)
	}
}

// TestMigrateVersions: each image version migrates the schema to what it
// knows, once; version 3's data migration fills the new column from the
// rows there are; an older image refuses the newer schema and changes
// nothing.
func TestMigrateVersions(t *testing.T) {
	t.Setenv("DATABASE_URL", startPostgres(t))
	db, err := openDB()
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	schema := func(want int) {
		t.Helper()
		if got := schemaVersion(db); got != want {
			t.Fatalf("schema version %d, want %d", got, want)
		}
	}
	t.Setenv("APP_VERSION", "1")
	if err := migrate(); err != nil {
		t.Fatal(err)
	}
	schema(1)
	if _, err := db.Exec(`INSERT INTO standin_mail (mail_from, rcpt_to, data) VALUES ('<a@example.org>', '<b@example.org>', E'From: a@example.org\r\nSubject: vote 7\r\n\r\nyes\r\n')`); err != nil {
		t.Fatal(err)
	}
	t.Setenv("APP_VERSION", "2")
	if err := migrate(); err != nil {
		t.Fatal(err)
	}
	schema(2)
	// Again: nothing to do.
	if from, to, err := migrateDB(db, knownSchema()); err != nil || from != 2 || to != 2 {
		t.Fatalf("second migrate of version 2: %d → %d, %v", from, to, err)
	}
	t.Setenv("APP_VERSION", "3")
	if err := migrate(); err != nil {
		t.Fatal(err)
	}
	schema(3)
	var subject string
	var rows int
	if err := db.QueryRow(`SELECT subject, (SELECT count(*) FROM standin_mail) FROM standin_mail`).Scan(&subject, &rows); err != nil || subject != "vote 7" || rows != 1 {
		t.Fatalf("after migration 3: subject %q, %d rows, %v", subject, rows, err)
	}
	// Version 9 knows no more than 3.
	t.Setenv("APP_VERSION", "9")
	if knownSchema() != 3 {
		t.Errorf("version 9 knows schema %d, want 3", knownSchema())
	}
	// The older image refuses, at once (no retries), naming both versions.
	t.Setenv("APP_VERSION", "1")
	start := time.Now()
	err = migrate()
	if !errors.Is(err, errNewerSchema) || !strings.Contains(err.Error(), "schema 3, this image (version 1) knows 1") {
		t.Fatalf("version 1 on schema 3: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("the refusal took %s: retried", time.Since(start))
	}
	schema(3)
}
