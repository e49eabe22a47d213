package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// qmp is a minimal client of QEMU's QMP protocol on a unix socket: it
// negotiates capabilities and runs commands one at a time, skipping the
// asynchronous events in between.
type qmp struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
}

type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	QMP   json.RawMessage `json:"QMP"`
}

// dialQMP connects to path, retrying until ctx ends (QEMU creates the socket
// shortly after it starts), and negotiates capabilities.
func dialQMP(ctx context.Context, path string) (*qmp, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			q := &qmp{conn: conn, r: bufio.NewReader(conn)}
			if err := q.handshake(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			return q, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to QMP socket %s: %w", path, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (q *qmp) handshake(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	stop := q.deadline(ctx)
	defer stop()
	var greet qmpMessage
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("QMP greeting: %w", err)
	}
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return fmt.Errorf("QMP greeting: unexpected %q", line)
	}
	_, err = q.executeLocked("qmp_capabilities", nil)
	return err
}

// deadline makes blocking reads and writes end when ctx ends.
func (q *qmp) deadline(ctx context.Context) func() {
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Now()) })
	return func() {
		stop()
		q.conn.SetDeadline(time.Time{})
	}
}

// Execute runs one QMP command and returns its "return" value.
func (q *qmp) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	stop := q.deadline(ctx)
	defer stop()
	return q.executeLocked(cmd, args)
}

func (q *qmp) executeLocked(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("QMP %s: %w", cmd, err)
		}
		var m qmpMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("QMP %s: bad reply %q", cmd, line)
		}
		switch {
		case m.Event != "":
			continue
		case m.Error != nil:
			return nil, fmt.Errorf("QMP %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		case m.Return != nil:
			return m.Return, nil
		}
	}
}

func (q *qmp) Close() error {
	if q == nil {
		return nil
	}
	return q.conn.Close()
}

var errNoQMP = errors.New("no QMP connection")
