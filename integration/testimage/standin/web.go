package main

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

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
