package load

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec passes pre-marshalled request bytes through and reads only the
// response's google.rpc.Status code, so the client spends nothing on protobuf.
// Its name is "proto": on the wire the calls are ordinary application/grpc+proto.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: marshal %T, want *[]byte", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

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
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			st, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, protowire.ParseError(n)
			}
			return innerCode(st)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return 0, nil // no status: OK
}

func innerCode(b []byte) (int32, error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, protowire.ParseError(n)
			}
			return int32(v), nil
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return 0, nil
}

// Source yields the request bytes for request number i. buf is the calling
// worker's scratch buffer, which the returned slice may reuse; a Source is
// called from many workers at once.
type Source interface {
	Next(buf []byte, i uint64) ([]byte, error)
}

// cycle repeats a fixed list of pre-marshalled requests.
type cycle [][]byte

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
	conns []*grpc.ClientConn
}

// Client transports.
const (
	TransportH2   = "h2"
	TransportGRPC = "grpc"
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
		err := cc.Invoke(ctx, CheckMethod, &msg, &r)
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

// Closed runs workers concurrent calls in a closed loop (each worker sends its
// next call when the previous one is answered) for d: the saturation throughput.
// Request numbers start at *seq and advance it.
func (c *Client) Closed(ctx context.Context, src Source, workers int, d time.Duration, seq *atomic.Uint64) Outcome {
	ctx, cancel := context.WithTimeout(ctx, d+callTimeout)
	defer cancel()
	var stop atomic.Bool
	all := make([]counts, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			call := c.caller(w)
			k := &all[w]
			k.codes = map[int32]uint64{}
			var buf []byte
			for !stop.Load() {
				b, err := src.Next(buf, seq.Add(1)-1)
				if errors.Is(err, errExhausted) {
					return
				}
				if err != nil {
					k.add(0, err)
					return
				}
				code, err := call(ctx, b)
				if err == nil {
					buf = b // answered: the transport is done with it
				} else {
					buf = nil
				}
				k.add(code, err)
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-done: // every worker ended early (a bounded Source ran out)
	}
	stop.Store(true)
	<-done
	var o Outcome
	o.Elapsed = time.Since(start)
	merge(all, &o)
	o.Sent = o.Done + o.Errors
	return o
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
	all := make([]counts, workers)
	var wg sync.WaitGroup
	start := time.Now().Add(5 * time.Millisecond)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			call := c.caller(w)
			k := &all[w]
			k.codes = map[int32]uint64{}
			var buf []byte
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
				b, err := src.Next(buf, seq.Add(1)-1)
				if err != nil {
					k.add(0, err)
					return
				}
				code, err := call(ctx, b)
				if err == nil {
					buf = b
					k.lat = append(k.lat, time.Since(from))
				} else {
					buf = nil
				}
				k.add(code, err)
			}
		}()
	}
	wg.Wait()
	var o Outcome
	o.Elapsed = time.Since(start)
	merge(all, &o)
	o.Sent = o.Done + o.Errors
	return o
}
