package deploy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
	"time"
)

// Server serves the push-deploy API.
type Server struct {
	cfg     *Config
	rt      Runtime
	log     *log.Logger
	deps    map[string]*deployment
	order   []string
	handler http.Handler
	// bodyIdle bounds the wait for the next bytes of an upload: a client
	// that stops sending (or trickles) is cut off.
	bodyIdle time.Duration
}

// Upload and connection time-outs. An upload is read and verified into the
// spool before the deployment's lock is taken, so a slow client holds no
// lock; these bound what it holds at all.
const (
	// DefaultBodyIdleTimeout: at most this long without a byte of the body.
	DefaultBodyIdleTimeout = time.Minute
	// IdleTimeout closes keep-alive connections without a request.
	IdleTimeout = 2 * time.Minute
)

type deployment struct {
	Deployment
	mu       sync.Mutex // serialises operations on this deployment
	stateMu  sync.Mutex
	lastOp   string
	lastAt   time.Time
	lastErr  string
	image    string
	loadedAt time.Time
}

// Status is the JSON answer for one deployment.
type Status struct {
	Name      string    `json:"name"`
	Container string    `json:"container"`
	Args      []string  `json:"args,omitempty"`
	Current   Container `json:"current"`
	Image     string    `json:"image,omitempty"` // last image loaded through the API
	LoadedAt  time.Time `json:"loaded_at,omitzero"`
	LastOp    string    `json:"last_op,omitempty"`
	LastAt    time.Time `json:"last_at,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// NewServer builds the API for cfg on rt; logs go to logger (nil: stderr).
func NewServer(cfg *Config, rt Runtime, logger *log.Logger) *Server {
	if logger == nil {
		logger = log.New(os.Stderr, "ecs-agent serve: ", 0)
	}
	s := &Server{cfg: cfg, rt: rt, log: logger, deps: map[string]*deployment{}, bodyIdle: DefaultBodyIdleTimeout}
	for _, d := range cfg.Deployments {
		s.deps[d.Name] = &deployment{Deployment: d}
		s.order = append(s.order, d.Name)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/deployments", s.list)
	mux.HandleFunc("GET /v1/deployments/{name}", s.get)
	mux.HandleFunc("POST /v1/deployments/{name}/{action}", s.action)
	// ed-daemon's short form.
	mux.HandleFunc("POST /v1/{name}/{action}", s.action)
	s.handler = s.audit(mux)
	return s
}

// Handler is the API's HTTP handler (without TLS; Serve adds it).
func (s *Server) Handler() http.Handler { return s.handler }

// TLSConfig is the server side of mutual TLS: the server certificate, and
// client certificates required and verified against the client CA, TLS 1.2+.
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	caPEM, err := os.ReadFile(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client CA %s: no PEM certificate", clientCAFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// Serve listens on cfg.Listen with mutual TLS until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	tc, err := TLSConfig(s.cfg.TLSCert, s.cfg.TLSKey, s.cfg.ClientCA)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.cfg.SpoolDir, 0o700); err != nil {
		return err
	}
	srv := &http.Server{
		Addr:              s.cfg.Listen,
		Handler:           s.handler,
		TLSConfig:         tc,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          s.log,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServeTLS("", "") }()
	s.log.Printf("listening on %s (mutual TLS, %d deployments)", s.cfg.Listen, len(s.deps))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

func (s *Server) audit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := "-"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			who = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		s.log.Printf("%s %s from %s (client %q)", r.Method, r.URL.Path, r.RemoteAddr, who)
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

type apiError struct {
	Error string `json:"error"`
}

func (s *Server) container(d *deployment) string { return s.cfg.ContainerPrefix + d.Name }

func (s *Server) status(ctx context.Context, d *deployment) Status {
	st := Status{Name: d.Name, Container: s.container(d), Args: d.Args}
	c, err := s.rt.Inspect(ctx, s.container(d))
	st.Current = c
	d.stateMu.Lock()
	st.Image, st.LoadedAt, st.LastOp, st.LastAt, st.LastError = d.image, d.loadedAt, d.lastOp, d.lastAt, d.lastErr
	d.stateMu.Unlock()
	if err != nil && st.LastError == "" {
		st.LastError = err.Error()
	}
	return st
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	out := make([]Status, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, s.status(r.Context(), s.deps[n]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	d, ok := s.deps[r.PathValue("name")]
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{fmt.Sprintf("no deployment %q", r.PathValue("name"))})
		return
	}
	writeJSON(w, http.StatusOK, s.status(r.Context(), d))
}

func (s *Server) action(w http.ResponseWriter, r *http.Request) {
	d, ok := s.deps[r.PathValue("name")]
	if !ok {
		writeJSON(w, http.StatusNotFound, apiError{fmt.Sprintf("no deployment %q", r.PathValue("name"))})
		return
	}
	action := r.PathValue("action")
	var op func(context.Context, *deployment, *http.Request) (int, error)
	switch action {
	case "load":
		// Read and verify the upload before taking the lock: a client
		// sending slowly must not block the deployment's other operations.
		spooled, n, code, err := s.receive(w, d, r)
		if spooled != "" {
			defer os.Remove(spooled)
		}
		if err != nil {
			s.finish(w, r, d, action, code, err)
			return
		}
		op = func(ctx context.Context, d *deployment, r *http.Request) (int, error) {
			return s.load(ctx, d, spooled, n)
		}
	case "start":
		op = s.start
	case "stop":
		op = s.stop
	case "restart":
		op = s.restart
	default:
		writeJSON(w, http.StatusNotFound, apiError{fmt.Sprintf("unknown action %q (want load, start, stop or restart)", action)})
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	code, err := op(r.Context(), d, r)
	s.finish(w, r, d, action, code, err)
}

// finish records the outcome of an operation and answers.
func (s *Server) finish(w http.ResponseWriter, r *http.Request, d *deployment, action string, code int, err error) {
	d.stateMu.Lock()
	d.lastOp, d.lastAt, d.lastErr = action, time.Now().UTC(), ""
	if err != nil {
		d.lastErr = err.Error()
	}
	d.stateMu.Unlock()
	if err != nil {
		s.log.Printf("%s %s: %v", d.Name, action, err)
		writeJSON(w, code, apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, s.status(r.Context(), d))
}

// errCode pairs an error with its HTTP status.
func errCode(code int, err error) (int, error) { return code, err }

// receive reads the upload into a spool file and checks it (size, tar
// structure), without any lock; each read waits at most bodyIdle. It
// returns the spool file (to remove) and its size.
func (s *Server) receive(w http.ResponseWriter, d *deployment, r *http.Request) (string, int64, int, error) {
	if r.ContentLength > s.cfg.MaxUploadBytes {
		return "", 0, http.StatusRequestEntityTooLarge, fmt.Errorf("upload of %d bytes exceeds the limit of %d", r.ContentLength, s.cfg.MaxUploadBytes)
	}
	if err := os.MkdirAll(s.cfg.SpoolDir, 0o700); err != nil {
		return "", 0, http.StatusInternalServerError, err
	}
	f, err := os.CreateTemp(s.cfg.SpoolDir, d.Name+"-*.tar")
	if err != nil {
		return "", 0, http.StatusInternalServerError, err
	}
	body := http.MaxBytesReader(nil, r.Body, s.cfg.MaxUploadBytes)
	rc := http.NewResponseController(w)
	n, err := io.Copy(f, &idleReader{r: body, rc: rc, idle: s.bodyIdle})
	// No deadline while docker load runs: the server's background read of
	// the connection would end the request's context when it expired.
	_ = rc.SetReadDeadline(time.Time{})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return f.Name(), 0, http.StatusRequestEntityTooLarge, fmt.Errorf("upload exceeds the limit of %d bytes", s.cfg.MaxUploadBytes)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return f.Name(), 0, http.StatusRequestTimeout, fmt.Errorf("reading upload: no data for %s", s.bodyIdle)
		}
		return f.Name(), 0, http.StatusBadRequest, fmt.Errorf("reading upload: %w", err)
	}
	if n == 0 {
		return f.Name(), 0, http.StatusBadRequest, fmt.Errorf("%w: empty upload", ErrBadArchive)
	}
	if err := CheckArchive(f.Name()); err != nil {
		return f.Name(), 0, http.StatusBadRequest, err
	}
	return f.Name(), n, http.StatusOK, nil
}

// idleReader sets a read deadline of idle before every read of the body.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController // sets the connection's read deadline
	idle time.Duration
}

func (i *idleReader) Read(p []byte) (int, error) {
	if i.idle > 0 {
		_ = i.rc.SetReadDeadline(time.Now().Add(i.idle))
	}
	return i.r.Read(p)
}

// load loads the verified spooled archive (n bytes) and replaces the
// deployment's container; the caller holds the deployment's lock.
func (s *Server) load(ctx context.Context, d *deployment, spooled string, n int64) (int, error) {
	image, err := s.rt.Load(ctx, spooled)
	if err != nil {
		return errCode(http.StatusUnprocessableEntity, fmt.Errorf("docker load: %w; the running container is unchanged", err))
	}
	if d.Image != "" {
		// A stack image: retag and let the stack's `up` recreate its services.
		if err := s.rt.Tag(ctx, image, d.Image); err != nil {
			return errCode(http.StatusInternalServerError, fmt.Errorf("tag %s: %w", d.Image, err))
		}
		if err := s.rt.RestartStack(ctx); err != nil {
			return errCode(http.StatusInternalServerError, fmt.Errorf("restarting the stack: %w", err))
		}
		d.stateMu.Lock()
		d.image, d.loadedAt = image, time.Now().UTC()
		d.stateMu.Unlock()
		s.log.Printf("%s: loaded %s (%d bytes) as %s; restarting %s", d.Name, image, n, d.Image, StackUnit)
		return http.StatusOK, nil
	}
	if err := s.replace(ctx, d, image); err != nil {
		return errCode(http.StatusInternalServerError, err)
	}
	d.stateMu.Lock()
	d.image, d.loadedAt = image, time.Now().UTC()
	d.stateMu.Unlock()
	s.log.Printf("%s: loaded %s (%d bytes) and started %s", d.Name, image, n, s.container(d))
	return http.StatusOK, nil
}

// replace swaps the deployment's container for one running image: the old
// container is stopped and set aside, the new one started; if that fails
// the old one is put back and restarted.
func (s *Server) replace(ctx context.Context, d *deployment, image string) error {
	name := s.container(d)
	candidate := name + ":candidate"
	current := name + ":current"
	if err := s.rt.Tag(ctx, image, candidate); err != nil {
		return fmt.Errorf("tag %s: %w", candidate, err)
	}
	old, err := s.rt.Inspect(ctx, name)
	if err != nil {
		return err
	}
	aside := name + "_previous"
	if old.Exists {
		if prev, _ := s.rt.Inspect(ctx, aside); prev.Exists {
			if err := s.rt.Remove(ctx, aside); err != nil {
				return fmt.Errorf("removing %s: %w", aside, err)
			}
		}
		if old.Running {
			if err := s.rt.Stop(ctx, name); err != nil {
				return fmt.Errorf("stopping %s: %w", name, err)
			}
		}
		if err := s.rt.Rename(ctx, name, aside); err != nil {
			if old.Running {
				_ = s.rt.Start(ctx, name)
			}
			return fmt.Errorf("renaming %s: %w", name, err)
		}
	}
	if err := s.rt.Run(ctx, name, candidate, d.Args); err != nil {
		_ = s.rt.Remove(ctx, name)
		if old.Exists {
			if rerr := s.rt.Rename(ctx, aside, name); rerr != nil {
				return fmt.Errorf("starting new container: %v; restoring the old one: %v", err, rerr)
			}
			if old.Running {
				if rerr := s.rt.Start(ctx, name); rerr != nil {
					return fmt.Errorf("starting new container: %v; restarting the old one: %v", err, rerr)
				}
			}
			return fmt.Errorf("starting new container: %w; the previous container was restored", err)
		}
		return fmt.Errorf("starting new container: %w", err)
	}
	if old.Exists {
		if err := s.rt.Remove(ctx, aside); err != nil {
			s.log.Printf("%s: removing previous container: %v", d.Name, err)
		}
	}
	if err := s.rt.Tag(ctx, candidate, current); err != nil {
		s.log.Printf("%s: tag %s: %v", d.Name, current, err)
	}
	return nil
}

func (s *Server) start(ctx context.Context, d *deployment, r *http.Request) (int, error) {
	c, err := s.rt.Inspect(ctx, s.container(d))
	if err != nil {
		return errCode(http.StatusInternalServerError, err)
	}
	if !c.Exists {
		return errCode(http.StatusConflict, fmt.Errorf("deployment %s has no container yet: load an image first", d.Name))
	}
	if c.Running {
		return http.StatusOK, nil
	}
	if err := s.rt.Start(ctx, s.container(d)); err != nil {
		return errCode(http.StatusInternalServerError, err)
	}
	return http.StatusOK, nil
}

func (s *Server) stop(ctx context.Context, d *deployment, r *http.Request) (int, error) {
	c, err := s.rt.Inspect(ctx, s.container(d))
	if err != nil {
		return errCode(http.StatusInternalServerError, err)
	}
	if !c.Exists {
		return errCode(http.StatusConflict, fmt.Errorf("deployment %s has no container", d.Name))
	}
	if !c.Running {
		return http.StatusOK, nil
	}
	if err := s.rt.Stop(ctx, s.container(d)); err != nil {
		return errCode(http.StatusInternalServerError, err)
	}
	return http.StatusOK, nil
}

func (s *Server) restart(ctx context.Context, d *deployment, r *http.Request) (int, error) {
	if code, err := s.stop(ctx, d, r); err != nil {
		return code, err
	}
	return s.start(ctx, d, r)
}
