// Command standin stands in for the ECS application's containers in tests
// and the demo appliance (the real images cannot be pulled here). One
// static binary, several commands, the same interfaces as the real stack:
//
//	standin simple|web   ecs.web: HTTP on $PORT (5000) and 1717; /health
//	                      checks PostgreSQL ($DATABASE_URL), redis
//	                      ($REDIS_URL) and memcached ($MEMCACHED_URL);
//	                      PUT/POST /upload/NAME stores the body in
//	                      /app/ecs-storage-vault; /mails lists received mail
//	standin worker        ecs.worker: takes jobs from redis, heartbeat in memcached
//	standin run … beat    ecs.beat: queues a job in redis every 5 s
//	standin smtpd         ecs.smtpd: SMTP on 8025, each mail stored in PostgreSQL
//	standin migrate       migrates its tables in PostgreSQL to the image's
//	                      schema version and exits (refuses a newer schema)
//	standin pdfas|mocca   HTTP on 8080 under /pdf-as-web or /bkuonline:
//	                      reads /app/import/server.cert.pem, shows $HOSTNAME
//
// It is not ECS: it has no user interface, no Django, no celery.
package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	_ "github.com/lib/pq"
)

// Paths inside the containers (the stack's volume mapping); variables for
// the tests.
var (
	vaultDir   = "/app/ecs-storage-vault"
	importCert = "/app/import/server.cert.pem"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("standin: ")
	cmd := "simple"
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	if cmd == "run" && strings.Contains(strings.Join(os.Args, " "), "beat") {
		cmd = "beat"
	}
	var err error
	switch cmd {
	case "simple", "web":
		err = web()
	case "worker":
		err = worker()
	case "beat":
		err = beat()
	case "smtpd":
		err = smtpd(env("SMTPD_ADDR", ":8025"))
	case "migrate":
		// What the agent runs before the stack (compose run ecs.web migrate).
		if err = migrate(); err == nil {
			return
		}
	case "pdfas":
		err = signer("pdfas", "/pdf-as-web")
	case "mocca":
		err = signer("mocca", "/bkuonline")
	default:
		err = fmt.Errorf("unknown command %q (simple, web, worker, run … beat, smtpd, migrate, pdfas, mocca)", cmd)
	}
	log.Fatal(err)
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// version is $APP_VERSION (set in the image config).
func version() string { return env("APP_VERSION", "1") }

// openDB connects to $DATABASE_URL, retrying while PostgreSQL starts.
func openDB() (*sql.DB, error) {
	u := os.Getenv("DATABASE_URL")
	if u == "" {
		return nil, errors.New("DATABASE_URL is not set (database_url.env)")
	}
	if !strings.Contains(u, "sslmode=") {
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		u += sep + "sslmode=disable"
	}
	db, err := sql.Open("postgres", u)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	return db, nil
}

// migrations are the stand-in's schema changes, in order; an image of
// version N (its $APP_VERSION) knows the first min(N, len(migrations)).
// Like an application's migrations they run once each, the schema version
// (how many ran) is recorded in the database (standin_schema), and a
// database whose schema is newer than the image knows is refused: an older
// image does not run on data a newer one migrated.
var migrations = []string{
	// 1: the mail table of the smtpd.
	`CREATE TABLE IF NOT EXISTS standin_mail (
		id serial PRIMARY KEY, received timestamptz NOT NULL DEFAULT now(),
		mail_from text NOT NULL, rcpt_to text NOT NULL, data text NOT NULL)`,
	// 2: an index.
	`CREATE INDEX IF NOT EXISTS standin_mail_received ON standin_mail (received)`,
	// 3: a column filled from the rows there are (a data migration).
	`ALTER TABLE standin_mail ADD COLUMN IF NOT EXISTS subject text;
	UPDATE standin_mail SET subject = coalesce(substring(data from '(?n)^Subject: ([^\r\n]*)'), '') WHERE subject IS NULL`,
}

// knownSchema is the schema version this image migrates to.
func knownSchema() int {
	n := 0
	fmt.Sscan(version(), &n)
	return max(1, min(n, len(migrations)))
}

// migrate brings the database to knownSchema, retrying while PostgreSQL
// starts.
func migrate() error {
	db, err := openDB()
	if err != nil {
		return err
	}
	defer db.Close()
	for i := 0; ; i++ {
		var from, to int
		if from, to, err = migrateDB(db, knownSchema()); err == nil {
			log.Printf("migrate: schema %d → %d (image version %s)", from, to, version())
			return nil
		}
		if errors.Is(err, errNewerSchema) || i == 30 {
			return err
		}
		time.Sleep(time.Second)
	}
}

var errNewerSchema = errors.New("the database schema is newer than this image")

// migrateDB runs the migrations after the recorded schema version up to
// want in one transaction, and returns the version before and after.
func migrateDB(db *sql.DB, want int) (int, int, error) {
	tx, err := db.Begin()
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`CREATE TABLE IF NOT EXISTS standin_schema (version int NOT NULL);
		LOCK TABLE standin_schema`); err != nil {
		return 0, 0, err
	}
	have := 0
	if err := tx.QueryRow(`SELECT coalesce(max(version), 0) FROM standin_schema`).Scan(&have); err != nil {
		return 0, 0, err
	}
	if have > want {
		return have, have, fmt.Errorf("%w: schema %d, this image (version %s) knows %d", errNewerSchema, have, version(), want)
	}
	for v := have + 1; v <= want; v++ {
		if _, err := tx.Exec(migrations[v-1]); err != nil {
			return have, have, fmt.Errorf("migration %d: %w", v, err)
		}
	}
	if _, err := tx.Exec(`DELETE FROM standin_schema`); err != nil {
		return have, have, err
	}
	if _, err := tx.Exec(`INSERT INTO standin_schema (version) VALUES ($1)`, want); err != nil {
		return have, have, err
	}
	return have, want, tx.Commit()
}

// ensureSchema creates the mail table when the migrations have not run
// (the smtpd and /mails need it).
func ensureSchema(db *sql.DB) error {
	_, err := db.Exec(migrations[0])
	return err
}

// schemaVersion is the recorded schema version (0: none).
func schemaVersion(db *sql.DB) int {
	v := 0
	_ = db.QueryRow(`SELECT coalesce(max(version), 0) FROM standin_schema`).Scan(&v)
	return v
}

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

// redisCmd sends one RESP command and returns the first reply line.
func redisCmd(args ...string) (string, error) {
	addr, err := hostPort(env("REDIS_URL", "redis://redis:6379/0"), "6379")
	if err != nil {
		return "", err
	}
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
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
	addr, err := hostPort(env("MEMCACHED_URL", "memcached://memcached:11211"), "11211")
	if err != nil {
		return "", err
	}
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
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

// health is what /health reports.
type health struct {
	Version   string            `json:"version"`
	Schema    int               `json:"schema"`
	Postgres  string            `json:"postgres"`
	Database  string            `json:"database,omitempty"`
	Collation string            `json:"collation,omitempty"`
	Redis     string            `json:"redis"`
	Memcached string            `json:"memcached"`
	Worker    string            `json:"worker,omitempty"`
	Beat      string            `json:"beat,omitempty"`
	Errors    map[string]string `json:"errors,omitempty"`
}

func web() error {
	db, err := openDB()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(vaultDir, 0o755); err != nil {
		return err
	}
	mux := webMux(db)
	errc := make(chan error, 2)
	for _, addr := range []string{":" + env("PORT", "5000"), ":1717"} {
		go func(addr string) {
			log.Printf("web %s listening on %s", version(), addr)
			errc <- (&http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe()
		}(addr)
	}
	return <-errc
}

// webMux is the web stand-in's handler.
func webMux(db *sql.DB) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "ecs-standin web version=%s host=%s proto=%s\n", version(), r.Host, r.Header.Get("X-Forwarded-Proto"))
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		h := health{Version: version(), Errors: map[string]string{}}
		check := func(name string, dst *string, f func() error) {
			if err := f(); err != nil {
				*dst = "error"
				h.Errors[name] = err.Error()
			} else {
				*dst = "ok"
			}
		}
		check("postgres", &h.Postgres, func() error {
			h.Schema = schemaVersion(db)
			return db.QueryRowContext(r.Context(), "SELECT current_database(), datcollate FROM pg_database WHERE datname = current_database()").Scan(&h.Database, &h.Collation)
		})
		check("redis", &h.Redis, func() error {
			out, err := redisCmd("PING")
			if err == nil && out != "+PONG" {
				err = fmt.Errorf("PING: %q", out)
			}
			return err
		})
		check("memcached", &h.Memcached, func() error {
			if err := memcachedSet("standin-web", time.Now().UTC().Format(time.RFC3339)); err != nil {
				return err
			}
			_, err := memcachedGet("standin-web")
			return err
		})
		h.Worker, _ = memcachedGet("standin-worker")
		h.Beat, _ = redisCmd("GET", "standin-beat")
		w.Header().Set("Content-Type", "application/json")
		if len(h.Errors) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
	mux.HandleFunc("/upload/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut && r.Method != http.MethodPost {
			http.Error(w, "PUT or POST", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/upload/")
		if !safeName.MatchString(name) {
			http.Error(w, "bad name", http.StatusBadRequest)
			return
		}
		sum, n, err := store(filepath.Join(vaultDir, name), io.LimitReader(r.Body, 64<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if _, err := redisCmd("LPUSH", "standin-jobs", "upload "+name); err != nil {
			log.Printf("queue: %v", err)
		}
		fmt.Fprintf(w, "stored %s %d bytes sha256=%s\n", filepath.Join(vaultDir, name), n, sum)
	})
	mux.HandleFunc("/vault/", func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/vault/")
		if !safeName.MatchString(name) {
			http.Error(w, "bad name", http.StatusBadRequest)
			return
		}
		http.ServeFile(w, r, filepath.Join(vaultDir, name))
	})
	mux.HandleFunc("/mails", func(w http.ResponseWriter, r *http.Request) {
		if err := ensureSchema(db); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		rows, err := db.QueryContext(r.Context(), "SELECT id, mail_from, rcpt_to, data FROM standin_mail ORDER BY id")
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer rows.Close()
		type mail struct {
			ID   int64  `json:"id"`
			From string `json:"from"`
			To   string `json:"to"`
			Data string `json:"data"`
		}
		list := []mail{}
		for rows.Next() {
			var m mail
			if err := rows.Scan(&m.ID, &m.From, &m.To, &m.Data); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			list = append(list, m)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(list)
	})
	return mux
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// store writes r to file through a temporary file and a rename.
func store(file string, r io.Reader) (string, int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(file), ".upload-*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	return hex.EncodeToString(h.Sum(nil)), n, err
}

func worker() error {
	log.Printf("worker %s: waiting for jobs", version())
	for {
		job, err := redisCmd("BRPOP", "standin-jobs", "5")
		if err != nil {
			log.Printf("worker: redis: %v", err)
			time.Sleep(2 * time.Second)
			continue
		}
		if job != "*-1" && job != "" {
			log.Printf("worker: job %q", job)
		}
		if err := memcachedSet("standin-worker", time.Now().UTC().Format(time.RFC3339)); err != nil {
			log.Printf("worker: memcached: %v", err)
		}
	}
}

func beat() error {
	log.Printf("beat %s: a job every 5 s", version())
	for {
		now := time.Now().UTC().Format(time.RFC3339)
		if _, err := redisCmd("SET", "standin-beat", now); err != nil {
			log.Printf("beat: redis: %v", err)
		} else if _, err := redisCmd("LPUSH", "standin-jobs", "beat "+now); err != nil {
			log.Printf("beat: redis: %v", err)
		}
		time.Sleep(5 * time.Second)
	}
}

// smtpd receives mail (a minimal SMTP server: what stunnel and postfix
// speak) and stores each message in PostgreSQL.
func smtpd(addr string) error {
	db, err := openDB()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("smtpd %s listening on %s", version(), addr)
	return serveSMTP(ln, db)
}

func serveSMTP(ln net.Listener, db *sql.DB) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go smtpSession(c, db)
	}
}

func smtpSession(c net.Conn, db *sql.DB) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	r := bufio.NewReader(c)
	say := func(s string) { _, _ = io.WriteString(c, s+"\r\n") }
	say("220 ecs-standin smtpd")
	var from string
	var rcpt []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		switch verb {
		case "EHLO", "HELO":
			say("250 ecs-standin")
		case "MAIL":
			from, rcpt = strings.TrimSpace(line[strings.IndexByte(line, ':')+1:]), nil
			say("250 ok")
		case "RCPT":
			rcpt = append(rcpt, strings.TrimSpace(line[strings.IndexByte(line, ':')+1:]))
			say("250 ok")
		case "DATA":
			if from == "" || len(rcpt) == 0 {
				say("503 need MAIL and RCPT")
				continue
			}
			say("354 end with .")
			var data strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if strings.TrimRight(l, "\r\n") == "." {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			if err := ensureSchema(db); err != nil {
				log.Printf("smtpd: %v", err)
				say("451 database unavailable")
				continue
			}
			if _, err := db.Exec("INSERT INTO standin_mail (mail_from, rcpt_to, data) VALUES ($1, $2, $3)", from, strings.Join(rcpt, ","), data.String()); err != nil {
				log.Printf("smtpd: %v", err)
				say("451 database unavailable")
				continue
			}
			log.Printf("smtpd: stored a mail from %s to %s (%d bytes)", from, strings.Join(rcpt, ","), data.Len())
			say("250 stored")
			from, rcpt = "", nil
		case "RSET":
			from, rcpt = "", nil
			say("250 ok")
		case "NOOP":
			say("250 ok")
		case "QUIT":
			say("221 bye")
			return
		default:
			say("502 not implemented")
		}
	}
}

// signer stands in for pdf-as and mocca: it serves prefix on :8080 and
// reports the appliance certificate it was given.
func signer(name, prefix string) error {
	h := signerHandler(name)
	mux := http.NewServeMux()
	mux.HandleFunc(prefix+"/", h)
	mux.HandleFunc(prefix, h)
	addr := ":" + env("PORT", "8080")
	log.Printf("%s %s listening on %s%s", name, version(), addr, prefix)
	return (&http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}).ListenAndServe()
}

func signerHandler(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		data, err := os.ReadFile(importCert)
		if err != nil {
			http.Error(w, fmt.Sprintf("%s: %v", name, err), http.StatusServiceUnavailable)
			return
		}
		b, _ := pem.Decode(data)
		if b == nil {
			http.Error(w, name+": "+importCert+": no PEM block", http.StatusServiceUnavailable)
			return
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			http.Error(w, name+": "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		sum := sha256.Sum256(b.Bytes)
		fmt.Fprintf(w, "ecs-standin %s version=%s hostname=%s cert=%s sha256=%s\n", name, version(), os.Getenv("HOSTNAME"), cert.Subject.CommonName, hex.EncodeToString(sum[:]))
	}
}
