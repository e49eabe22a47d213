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
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
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
	// SIGTERM (docker stop) ends the program at once, as the real
	// services' own handlers do (uwsgi, celery): as a container's PID 1 a
	// program without a handler would ignore it, and dockerd kill it 10 s
	// later. Each upload and mail is stored when it arrives.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	go func() {
		s := <-stop
		log.Printf("%s: %v: stopping", cmd, s)
		os.Exit(0)
	}()
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
