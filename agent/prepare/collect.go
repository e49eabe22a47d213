package prepare

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ecs-image/ecs-image/agent/status"
)

// Textfiles written by CollectMetrics (node-exporter's textfile collector).
const (
	ContainerMetrics = MetricsDir + "/appliance_containers.prom"
	StateMetrics     = MetricsDir + "/appliance_state.prom"
)

// CollectMetrics writes what the packaged exporters do not cover into the
// textfile collector's directory (run by ecs-agent-metrics.timer): the
// appliance's own state, each container of the stack from the Docker
// engine's API (cAdvisor is not packaged in Debian), and redis and
// memcached from their own protocols (no memcached exporter in Debian; the
// services live on the compose network, found through the engine).
func (a *Agent) CollectMetrics(ctx context.Context) error {
	var st promText
	_, failed := status.FailedReason(a.Host)
	st.gauge("appliance_failed", "1 if the appliance is failed (/run/appliance-failed).", nil, b2f(failed))
	st.gauge("appliance_metrics_collected_time_seconds", "When ecs-agent metrics collect last ran (Unix time).", nil, float64(time.Now().Unix()))
	if _, err := a.Host.WriteFile(StateMetrics, st.bytes(), 0o644); err != nil {
		return err
	}
	var ct promText
	d := a.docker()
	cs, err := d.containers(ctx)
	ct.gauge("appliance_docker_up", "1 if the Docker engine answered.", nil, b2f(err == nil))
	if err != nil {
		a.logf("metrics: docker: %v", err)
	}
	for _, c := range cs {
		l := map[string]string{"name": c.Name, "service": c.Service, "image": c.Image}
		ct.gauge("appliance_container_running", "1 if the container runs.", l, b2f(c.State == "running"))
		if c.State != "running" {
			continue
		}
		if s, err := d.stats(ctx, c.ID); err == nil {
			ct.counter("appliance_container_cpu_seconds_total", "CPU time the container used.", l, float64(s.CPUStats.CPUUsage.TotalUsage)/1e9)
			ct.gauge("appliance_container_memory_bytes", "Memory the container uses.", l, float64(s.MemoryStats.Usage))
			var rx, tx uint64
			for _, n := range s.Networks {
				rx += n.RxBytes
				tx += n.TxBytes
			}
			ct.counter("appliance_container_network_receive_bytes_total", "Bytes the container received.", l, float64(rx))
			ct.counter("appliance_container_network_transmit_bytes_total", "Bytes the container sent.", l, float64(tx))
		}
		switch c.Service {
		case "redis":
			redisMetrics(ctx, &ct, c.IP+":6379")
		case "memcached":
			memcachedMetrics(ctx, &ct, c.IP+":11211")
		}
	}
	_, err = a.Host.WriteFile(ContainerMetrics, ct.bytes(), 0o644)
	return err
}

// container is one container of the engine.
type container struct {
	ID, Name, Service, Image, State, IP string
}

// metricsGet asks dockerd for the metrics, at most 20 s per call.
func (d *DockerAPI) metricsGet(ctx context.Context, p string, q url.Values, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err := d.do(ctx, http.MethodGet, p, q, v, http.StatusOK)
	return err
}

// containers lists every container of the engine.
func (d *DockerAPI) containers(ctx context.Context) ([]container, error) {
	var list []struct {
		ID              string            `json:"Id"`
		Names           []string          `json:"Names"`
		Image           string            `json:"Image"`
		State           string            `json:"State"`
		Labels          map[string]string `json:"Labels"`
		NetworkSettings struct {
			Networks map[string]struct {
				IPAddress string `json:"IPAddress"`
			} `json:"Networks"`
		} `json:"NetworkSettings"`
	}
	if err := d.metricsGet(ctx, "/containers/json", url.Values{"all": {"1"}}, &list); err != nil {
		return nil, err
	}
	var out []container
	for _, c := range list {
		ct := container{ID: c.ID, Image: c.Image, State: c.State, Service: c.Labels["com.docker.compose.service"]}
		if len(c.Names) > 0 {
			ct.Name = strings.TrimPrefix(c.Names[0], "/")
		}
		nets := make([]string, 0, len(c.NetworkSettings.Networks))
		for n := range c.NetworkSettings.Networks {
			nets = append(nets, n)
		}
		sort.Strings(nets)
		for _, n := range nets {
			if ip := c.NetworkSettings.Networks[n].IPAddress; ip != "" {
				ct.IP = ip
				break
			}
		}
		out = append(out, ct)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type containerStats struct {
	CPUStats struct {
		CPUUsage struct {
			TotalUsage uint64 `json:"total_usage"`
		} `json:"cpu_usage"`
	} `json:"cpu_stats"`
	MemoryStats struct {
		Usage uint64 `json:"usage"`
	} `json:"memory_stats"`
	Networks map[string]struct {
		RxBytes uint64 `json:"rx_bytes"`
		TxBytes uint64 `json:"tx_bytes"`
	} `json:"networks"`
}

// stats is a container's one-shot resource usage.
func (d *DockerAPI) stats(ctx context.Context, id string) (*containerStats, error) {
	var s containerStats
	err := d.metricsGet(ctx, "/containers/"+id+"/stats", url.Values{"stream": {"false"}, "one-shot": {"true"}}, &s)
	return &s, err
}

// redisMetrics reads INFO from a redis server.
func redisMetrics(ctx context.Context, p *promText, addr string) {
	l := map[string]string{"addr": addr}
	info, err := tcpQuery(ctx, addr, "INFO\r\n", func(r *bufio.Reader) (string, error) {
		head, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(head, "$") {
			return "", fmt.Errorf("redis: unexpected reply %q", strings.TrimSpace(head))
		}
		n, err := strconv.Atoi(strings.TrimSpace(head[1:]))
		if err != nil || n < 0 || n > 1<<20 {
			return "", fmt.Errorf("redis: bad length %q", head)
		}
		b := make([]byte, n)
		_, err = io.ReadFull(r, b)
		return string(b), err
	})
	p.gauge("appliance_redis_up", "1 if redis answered INFO.", l, b2f(err == nil))
	if err != nil {
		return
	}
	fields := kv(info, ":")
	for _, m := range []struct{ field, name, help string }{
		{"connected_clients", "appliance_redis_connected_clients", "Clients connected to redis."},
		{"used_memory", "appliance_redis_memory_used_bytes", "Memory redis uses."},
		{"uptime_in_seconds", "appliance_redis_uptime_seconds", "Seconds since redis started."},
	} {
		if v, err := strconv.ParseFloat(fields[m.field], 64); err == nil {
			p.gauge(m.name, m.help, l, v)
		}
	}
	for _, m := range []struct{ field, name, help string }{
		{"keyspace_hits", "appliance_redis_keyspace_hits_total", "Successful key lookups."},
		{"keyspace_misses", "appliance_redis_keyspace_misses_total", "Failed key lookups."},
		{"total_commands_processed", "appliance_redis_commands_processed_total", "Commands processed."},
	} {
		if v, err := strconv.ParseFloat(fields[m.field], 64); err == nil {
			p.counter(m.name, m.help, l, v)
		}
	}
}

// memcachedMetrics reads `stats` from a memcached server.
func memcachedMetrics(ctx context.Context, p *promText, addr string) {
	l := map[string]string{"addr": addr}
	out, err := tcpQuery(ctx, addr, "stats\r\n", func(r *bufio.Reader) (string, error) {
		var b strings.Builder
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			line = strings.TrimSpace(line)
			if line == "END" {
				return b.String(), nil
			}
			if !strings.HasPrefix(line, "STAT ") || b.Len() > 1<<20 {
				return "", fmt.Errorf("memcached: unexpected reply %q", line)
			}
			b.WriteString(strings.Replace(strings.TrimPrefix(line, "STAT "), " ", "=", 1) + "\n")
		}
	})
	p.gauge("appliance_memcached_up", "1 if memcached answered stats.", l, b2f(err == nil))
	if err != nil {
		return
	}
	fields := kv(out, "=")
	for _, m := range []struct{ field, name, help string }{
		{"curr_connections", "appliance_memcached_current_connections", "Open connections."},
		{"curr_items", "appliance_memcached_current_items", "Items stored."},
		{"bytes", "appliance_memcached_current_bytes", "Bytes stored."},
		{"limit_maxbytes", "appliance_memcached_limit_bytes", "Memory limit."},
	} {
		if v, err := strconv.ParseFloat(fields[m.field], 64); err == nil {
			p.gauge(m.name, m.help, l, v)
		}
	}
	for _, m := range []struct{ field, name, help string }{
		{"get_hits", "appliance_memcached_get_hits_total", "Successful gets."},
		{"get_misses", "appliance_memcached_get_misses_total", "Failed gets."},
		{"evictions", "appliance_memcached_evictions_total", "Items evicted."},
	} {
		if v, err := strconv.ParseFloat(fields[m.field], 64); err == nil {
			p.counter(m.name, m.help, l, v)
		}
	}
}

func tcpQuery(ctx context.Context, addr, req string, read func(*bufio.Reader) (string, error)) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	return read(bufio.NewReader(c))
}

func kv(text, sep string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), sep); ok {
			m[k] = v
		}
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promText builds a Prometheus text exposition: each family's HELP, TYPE
// and samples together (the format wants a family's samples contiguous),
// families in the order they first appear.
type promText struct {
	order []string
	fam   map[string]*strings.Builder
}

func (p *promText) sample(name, typ, help string, labels map[string]string, v float64) {
	if p.fam == nil {
		p.fam = map[string]*strings.Builder{}
	}
	b := p.fam[name]
	if b == nil {
		b = &strings.Builder{}
		p.fam[name] = b
		p.order = append(p.order, name)
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	b.WriteString(name)
	if len(labels) > 0 {
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(b, "%s=%q", k, labels[k])
		}
		b.WriteByte('}')
	}
	b.WriteString(" " + strconv.FormatFloat(v, 'g', -1, 64) + "\n")
}

func (p *promText) gauge(name, help string, l map[string]string, v float64) {
	p.sample(name, "gauge", help, l, v)
}

func (p *promText) counter(name, help string, l map[string]string, v float64) {
	p.sample(name, "counter", help, l, v)
}

func (p *promText) bytes() []byte {
	var out strings.Builder
	for _, n := range p.order {
		out.WriteString(p.fam[n].String())
	}
	return []byte(out.String())
}
