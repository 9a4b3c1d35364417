package load

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyauthz/keyauthz/test/testenv"
)

// titleHTTP is the HTTP authorization mode's scenario title.
const titleHTTP = "(http) valid key, cache hit, over http_authz (HTTP/1.1 keep-alive)"

// scenarioHTTP measures keyauthz's HTTP authorization listener on a cache
// hit (the hot keys of a) over HTTP/1.1 keep-alive, one connection per
// worker as nginx's upstream keepalive holds them, in windows interleaved
// with the same keyauthz over gRPC and with the no-op gRPC server: CPU per
// decision of the three in the same minutes of the machine.
func (r *runner) scenarioHTTP(ctx context.Context) error {
	addr, err := testenv.TryFreeAddr()
	if err != nil {
		return err
	}
	s, err := r.keyauthz(ctx, "http", KeyauthzConfig{HTTPAuthz: addr})
	if err != nil {
		return err
	}
	defer s.Stop()
	src, err := httpRequests(r.gen, HitKeys)
	if err != nil {
		return err
	}
	ref, err := r.noopServer(ctx)
	if err != nil {
		return err
	}
	grpcView := &Server{Name: "http-grpc", Proc: s.Proc, GRPC: s.GRPC, HTTP: s.HTTP} // the same process
	m, err := Measure(ctx,
		Endpoint{S: s, Src: src, Seq: new(atomic.Uint64), Addr: addr, Transport: TransportHTTP1},
		&Endpoint{S: ref, Src: r.hit, Seq: new(atomic.Uint64)},
		&Endpoint{S: grpcView, Src: r.hit, Seq: new(atomic.Uint64)},
		"http", titleHTTP, r.o.Load, r.logf)
	if err != nil {
		return err
	}
	if err := wantAll(&m, 0); err != nil {
		return err
	}
	if m.Peer.Out.Done > 0 {
		r.res.Facts["http_cpu_us"] = us(m.Sat.PerCheck())
		r.res.Facts["http_grpc_cpu_us"] = us(m.Peer.PerCheck())
		r.res.Facts["http_noop_cpu_us"] = us(m.Ref.PerCheck())
		m.Notes = append(m.Notes, fmt.Sprintf("CPU per decision, cache hit: HTTP/1.1 keep-alive %.1f µs, gRPC (same keyauthz, interleaved) %.1f µs, no-op gRPC server %.1f µs; HTTP ÷ gRPC %.2f, HTTP ÷ no-op %.2f. %d hot keys, one connection per in-flight request.",
			us(m.Sat.PerCheck()), us(m.Peer.PerCheck()), us(m.Ref.PerCheck()),
			ratio(float64(m.Sat.PerCheck()), float64(m.Peer.PerCheck())), ratio(float64(m.Sat.PerCheck()), float64(m.Ref.PerCheck())), HitKeys))
	}
	r.add(m)
	return nil
}

// httpRequests returns the requests of keys [0, n) of the stored stream as
// nginx's auth_request sends them: a GET of the auth location with the key
// and the original URI.
func httpRequests(gen keyGen, n int) (cycle, error) {
	out := make(cycle, n)
	for i := range out {
		k := gen.key(streamStored, uint64(i))
		if k == "" {
			return nil, errors.New("no key")
		}
		out[i] = []byte("GET /_keyauthz HTTP/1.1\r\nHost: keyauthz\r\nX-Original-URI: /v1/things\r\nX-Original-Method: GET\r\nX-Api-Key: " + k + "\r\n\r\n")
	}
	return out, nil
}

// h1pool holds a client's HTTP/1.1 connections, one per worker, dialled on
// first use and kept open across windows (keep-alive).
type h1pool struct {
	addr  string
	mu    sync.Mutex
	conns map[int]*h1conn
}

// h1conn is one keep-alive connection.
type h1conn struct {
	c  net.Conn
	br *bufio.Reader
}

// caller returns worker w's way to call on its own connection.
func (p *h1pool) caller(w int) caller {
	return func(ctx context.Context, msg []byte) (int32, error) {
		p.mu.Lock()
		c := p.conns[w]
		p.mu.Unlock()
		if c == nil {
			nc, err := net.DialTimeout("tcp", p.addr, callTimeout)
			if err != nil {
				return 0, err
			}
			c = &h1conn{c: nc, br: bufio.NewReaderSize(nc, 4096)}
			p.mu.Lock()
			p.conns[w] = c
			p.mu.Unlock()
		}
		code, err := c.call(ctx, msg)
		if err != nil { // a broken connection is not reused
			_ = c.c.Close()
			p.mu.Lock()
			delete(p.conns, w)
			p.mu.Unlock()
		}
		return code, err
	}
}

func (p *h1pool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for w, c := range p.conns {
		_ = c.c.Close()
		delete(p.conns, w)
	}
}

// httpCodes maps keyauthz's HTTP answers to the CheckResponse status codes the report counts.
var httpCodes = map[int]int32{200: 0, 400: 3, 401: 16, 403: 7, 429: 8, 503: 14}

// call sends one request and reads the answer to its end (Content-Length
// bodies only, as keyauthz answers).
func (c *h1conn) call(ctx context.Context, msg []byte) (int32, error) {
	d, ok := ctx.Deadline()
	if !ok || time.Until(d) > callTimeout {
		d = time.Now().Add(callTimeout)
	}
	_ = c.c.SetDeadline(d)
	if _, err := c.c.Write(msg); err != nil {
		return 0, err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	// "HTTP/1.1 200 OK\r\n"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("bad status line %q", line)
	}
	length := 0
	for {
		h, err := c.br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 {
			break
		}
		if name, v, ok := bytes.Cut(h, []byte(":")); ok && bytes.EqualFold(name, []byte("Content-Length")) {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(v))); err != nil {
				return 0, fmt.Errorf("bad content-length %q", v)
			}
		}
	}
	if _, err := c.br.Discard(length); err != nil {
		return 0, err
	}
	code, ok := httpCodes[status]
	if !ok {
		return 0, fmt.Errorf("HTTP status %d", status)
	}
	return code, nil
}
