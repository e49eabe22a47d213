// Command server is the test application baked into the test and demo
// appliances by package testimage: a static HTTP server that tells which
// version it is and that it runs behind the appliance's nginx.
//
//	GET /         "ecs-testapp version=V host=H proto=P" (text)
//	GET /healthz  "ok"
//	GET /env      the names (not the values) of the ECS_* and APPLIANCE_*
//	              variables it was started with, as a JSON list
//
// It listens on :$PORT (default 8080); $APP_VERSION names the version.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	version := os.Getenv("APP_VERSION")
	if version == "" {
		version = "unknown"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		proto := r.Header.Get("X-Forwarded-Proto")
		if proto == "" {
			proto = "http"
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Testapp-Version", version)
		fmt.Fprintf(w, "ecs-testapp version=%s host=%s proto=%s\n", version, r.Host, proto)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, r *http.Request) {
		names := []string{}
		for _, kv := range os.Environ() {
			k, _, _ := strings.Cut(kv, "=")
			if strings.HasPrefix(k, "ECS_") || strings.HasPrefix(k, "APPLIANCE_") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(names)
	})
	// SIGTERM (docker stop): as a container's PID 1 without a handler it
	// would be ignored, and dockerd would kill the server 10 s later.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-stop
		os.Exit(0)
	}()
	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("ecs-testapp %s listening on :%s", version, port)
	log.Fatal(srv.ListenAndServe())
}
