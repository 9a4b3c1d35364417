package load

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec passes pre-marshalled request bytes through and reads only the
// response's google.rpc.Status code, so the client spends nothing on protobuf.
// Its name is "proto": on the wire the calls are ordinary application/grpc+proto.
type rawCodec struct{}

// Name returns "proto", the content subtype the calls go out with.
func (rawCodec) Name() string { return "proto" }

// Marshal passes the pre-marshalled request in v (*[]byte) through.
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: marshal %T, want *[]byte", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

// Unmarshal reads only the status code of a CheckResponse into v (*reply).
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*reply)
	if !ok {
		return fmt.Errorf("rawCodec: unmarshal into %T, want *reply", v)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else {
		b = data.Materialize()
	}
	code, err := statusCode(b)
	r.code = code
	return err
}

// reply is what the client keeps of a CheckResponse: its status code.
type reply struct{ code int32 }

// statusCode reads CheckResponse.status.code (field 1, then field 1) off the wire.
func statusCode(b []byte) (int32, error) {
	st, err := field1(b, protowire.BytesType)
	if err != nil || st == nil {
		return 0, err // no status: OK
	}
	v, err := field1(st, protowire.VarintType)
	if err != nil || v == nil {
		return 0, err
	}
	code, n := protowire.ConsumeVarint(v)
	if n < 0 {
		return 0, protowire.ParseError(n)
	}
	return int32(code), nil
}

// field1 returns the encoded value of the first field 1 of type typ in the
// message b (for bytes, the content without its length), or nil if there is none.
func field1(b []byte, typ protowire.Type) ([]byte, error) {
	for len(b) > 0 {
		num, t, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, t, b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		if num == 1 && t == typ {
			if t == protowire.BytesType {
				v, _ := protowire.ConsumeBytes(b)
				return v, nil
			}
			return b[:n], nil
		}
		b = b[n:]
	}
	return nil, nil
}

// Source yields the request bytes for request number i. buf is the calling
// worker's scratch buffer, which the returned slice may reuse; a Source is
// called from many workers at once.
type Source interface {
	Next(buf []byte, i uint64) ([]byte, error)
}

// cycle repeats a fixed list of pre-marshalled requests.
type cycle [][]byte

// Next returns request i modulo the list.
func (c cycle) Next(_ []byte, i uint64) ([]byte, error) { return c[i%uint64(len(c))], nil }

// fresh makes request i from key i of a key stream (every request a new key).
type fresh struct {
	t      *template
	gen    keyGen
	stream uint64
	base   uint64 // first key index
	mod    uint64 // when not 0, key indexes wrap after mod keys
	bad    bool   // break the checksum
}

// Next makes the request with key base+i (wrapped after mod keys) of the stream.
func (f *fresh) Next(buf []byte, i uint64) ([]byte, error) {
	var kb [128]byte
	if f.mod > 0 {
		i %= f.mod
	}
	k := f.gen.appendKey(kb[:0], f.stream, f.base+i)
	if f.bad {
		k = []byte(malformed(string(k)))
	}
	return f.t.fill(buf, k)
}

// errExhausted ends a closed loop when a bounded Source has no more requests.
var errExhausted = errors.New("source exhausted")

// bounded ends src after n requests: request numbers from start to start+n-1.
type bounded struct {
	src   Source
	start uint64
	n     uint64
}

// Next returns src's request i, or errExhausted past start+n-1.
func (b bounded) Next(buf []byte, i uint64) ([]byte, error) {
	if i-b.start >= b.n {
		return nil, errExhausted
	}
	return b.src.Next(buf, i)
}

// Client is a lean ext_authz load client: a few HTTP/2 connections, many
// concurrent unary Check calls on them, pre-marshalled requests. Its default
// transport is a minimal HTTP/2 gRPC client (h2conn); "grpc" uses grpc-go
// with a pass-through codec instead (several times the client CPU per call).
type Client struct {
	h2    []*h2conn
	h1    *h1pool // TransportHTTP1: one keep-alive connection per worker
	conns []*grpc.ClientConn
}

// Client transports.
const (
	TransportH2   = "h2"
	TransportGRPC = "grpc"
	// TransportHTTP1 speaks HTTP/1.1 with keep-alive to keyauthz's http_authz:
	// requests are whole HTTP requests (httpRequests), answers read to the end.
	TransportHTTP1 = "http1"
)

// Dial opens n connections to addr with the transport (TransportH2 or TransportGRPC).
func Dial(addr string, n int, transport string) (*Client, error) {
	c := &Client{}
	for range n {
		switch transport {
		case TransportH2, "":
			h, err := dialH2(addr)
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("dial %s: %w", addr, err)
			}
			c.h2 = append(c.h2, h)
		case TransportHTTP1:
			c.h1 = &h1pool{addr: addr, conns: map[int]*h1conn{}}
			return c, nil
		case TransportGRPC:
			cc, err := grpc.NewClient("passthrough:///"+addr,
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})),
				grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<24),
			)
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("dial %s: %w", addr, err)
			}
			cc.Connect()
			c.conns = append(c.conns, cc)
		default:
			return nil, fmt.Errorf("unknown client transport %q", transport)
		}
	}
	return c, nil
}

// Close closes the connections.
func (c *Client) Close() {
	if c.h1 != nil {
		c.h1.close()
	}
	for _, h := range c.h2 {
		_ = h.Close()
	}
	for _, cc := range c.conns {
		_ = cc.Close()
	}
}

// caller makes one call and returns the CheckResponse status code.
type caller func(ctx context.Context, msg []byte) (int32, error)

// caller returns worker w's way to call: its connection and reusable state.
func (c *Client) caller(w int) caller {
	if c.h1 != nil {
		return c.h1.caller(w)
	}
	if len(c.h2) > 0 {
		conn := c.h2[w%len(c.h2)]
		k := &h2call{done: make(chan struct{}, 1)}
		return func(ctx context.Context, msg []byte) (int32, error) {
			code, err := conn.call(ctx, k, msg)
			if err != nil {
				k = &h2call{done: make(chan struct{}, 1)} // the failed one may still be signalled
			}
			return code, err
		}
	}
	cc := c.conns[w%len(c.conns)]
	var r reply
	return func(ctx context.Context, msg []byte) (int32, error) {
		r.code = 0
		err := cc.Invoke(ctx, authv3.Authorization_Check_FullMethodName, &msg, &r)
		return r.code, err
	}
}

// Outcome counts the results of a run.
type Outcome struct {
	Sent     uint64           // calls started
	Done     uint64           // calls answered (any Check status)
	Errors   uint64           // gRPC-level failures
	Codes    map[int32]uint64 // answered calls by CheckResponse status code
	Elapsed  time.Duration    // wall time of the measured window
	Lat      []time.Duration  // open loop only: latency of each answered call, sorted
	FirstErr error
}

// Rate returns answered calls per second.
func (o *Outcome) Rate() float64 {
	if o.Elapsed <= 0 {
		return 0
	}
	return float64(o.Done) / o.Elapsed.Seconds()
}

// Pct returns the p-th percentile latency (0 < p ≤ 100) of an open-loop run.
func (o *Outcome) Pct(p float64) time.Duration {
	if len(o.Lat) == 0 {
		return 0
	}
	i := int(float64(len(o.Lat))*p/100+0.5) - 1
	return o.Lat[min(max(i, 0), len(o.Lat)-1)]
}

type counts struct {
	done, errs uint64
	codes      map[int32]uint64
	lat        []time.Duration
	err        error
}

func (k *counts) add(code int32, err error) {
	if err != nil {
		k.errs++
		if k.err == nil {
			k.err = err
		}
		return
	}
	k.done++
	k.codes[code]++
}

func merge(all []counts, o *Outcome) {
	o.Codes = map[int32]uint64{}
	for i := range all {
		o.Done += all[i].done
		o.Errors += all[i].errs
		for c, n := range all[i].codes {
			o.Codes[c] += n
		}
		o.Lat = append(o.Lat, all[i].lat...)
		if o.FirstErr == nil {
			o.FirstErr = all[i].err
		}
	}
	slices.Sort(o.Lat)
}

// callTimeout bounds one call so a hung server cannot hang the harness.
const callTimeout = 5 * time.Second

// worker is one goroutine of a loop: its way to call, its counts and its
// request buffer.
type worker struct {
	call caller
	k    *counts
	buf  []byte
}

// send makes request number seq.Add(1)-1 of src, calls it and counts the
// answer. It reports whether the call was answered, and end when the worker
// is to stop because src failed (a failure counted) or ran out (errExhausted).
func (w *worker) send(ctx context.Context, src Source, seq *atomic.Uint64) (answered, end bool) {
	b, err := src.Next(w.buf, seq.Add(1)-1)
	if errors.Is(err, errExhausted) {
		return false, true
	}
	if err != nil {
		w.k.add(0, err)
		return false, true
	}
	code, err := w.call(ctx, b)
	if err == nil {
		w.buf = b // answered: the transport is done with it
	} else {
		w.buf = nil
	}
	w.k.add(code, err)
	return err == nil, false
}

// spawn runs body on n workers, each in its own goroutine; done is closed
// when every body has returned, and then all holds their counts.
func (c *Client) spawn(n int, body func(w *worker)) (all []counts, done <-chan struct{}) {
	all = make([]counts, n)
	var wg sync.WaitGroup
	for i := range n {
		all[i].codes = map[int32]uint64{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			body(&worker{call: c.caller(i), k: &all[i]})
		}()
	}
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return all, ch
}

// outcome merges the workers' counts of a loop that started at start.
func outcome(all []counts, start time.Time) Outcome {
	var o Outcome
	o.Elapsed = time.Since(start)
	merge(all, &o)
	o.Sent = o.Done + o.Errors
	return o
}

// Closed runs workers concurrent calls in a closed loop (each worker sends its
// next call when the previous one is answered) for d: the saturation throughput.
// Request numbers start at *seq and advance it.
func (c *Client) Closed(ctx context.Context, src Source, workers int, d time.Duration, seq *atomic.Uint64) Outcome {
	ctx, cancel := context.WithTimeout(ctx, d+callTimeout)
	defer cancel()
	var stop atomic.Bool
	start := time.Now()
	all, done := c.spawn(workers, func(w *worker) {
		for !stop.Load() {
			if _, end := w.send(ctx, src, seq); end || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return
			}
		}
	})
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-done: // every worker ended early (a bounded Source ran out)
	}
	stop.Store(true)
	<-done
	return outcome(all, start)
}

// Open sends rate calls per second for d on a fixed schedule (open loop).
// Call i is due at start+i/rate; a free worker takes the next call number,
// sleeps until it is due and sends it. When the worker took the call late
// (every worker was busy), its latency counts from when it was due, so a slow
// server is charged for the calls queued behind it (no coordinated omission).
// When a worker was waiting for it, latency counts from the send: Go's timers
// on this kernel wake up to ~1 ms late, and that client-side slack is not the
// server's. workers bounds the calls in flight.
func (c *Client) Open(ctx context.Context, src Source, rate float64, d time.Duration, workers int, seq *atomic.Uint64) Outcome {
	ctx, cancel := context.WithTimeout(ctx, d+callTimeout)
	defer cancel()
	total := uint64(rate * d.Seconds())
	every := time.Duration(float64(time.Second) / rate)
	var next atomic.Uint64
	start := time.Now().Add(5 * time.Millisecond)
	all, done := c.spawn(workers, func(w *worker) {
		for {
			i := next.Add(1) - 1
			if i >= total || ctx.Err() != nil {
				return
			}
			due := start.Add(time.Duration(i) * every)
			from := due // taken late: every worker was busy, charge from due
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
				from = time.Now() // a worker was waiting: timer slack is not latency
			}
			answered, end := w.send(ctx, src, seq)
			if end {
				return
			}
			if answered {
				w.k.lat = append(w.k.lat, time.Since(from))
			}
		}
	})
	<-done
	return outcome(all, start)
}
