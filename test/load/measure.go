package load

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// Phase is one measured load window and the server CPU it cost.
type Phase struct {
	Out       Outcome
	CPU       time.Duration // server user+system CPU during the window
	ClientCPU time.Duration // this process's (the load client's) CPU during the window
}

// ClientPerCall returns the load client's CPU per answered call.
func (p Phase) ClientPerCall() time.Duration {
	if p.Out.Done == 0 {
		return 0
	}
	return p.ClientCPU / time.Duration(p.Out.Done)
}

// PerCheck returns the server CPU per answered Check.
func (p Phase) PerCheck() time.Duration {
	if p.Out.Done == 0 {
		return 0
	}
	return p.CPU / time.Duration(p.Out.Done)
}

// Busy returns the server's CPU use during the window, in cores.
func (p Phase) Busy() float64 {
	if p.Out.Elapsed <= 0 {
		return 0
	}
	return p.CPU.Seconds() / p.Out.Elapsed.Seconds()
}

// Measurement is a scenario's saturation and fixed-rate windows against one
// server, with the no-op reference measured in windows interleaved with the
// saturation windows (so both see the same machine).
type Measurement struct {
	Key    string // "noop", "a", "b", ...
	Title  string
	Server string
	Sat    Phase // closed loop: throughput at saturation, CPU per Check
	Ref    Phase // the no-op server, closed loop, interleaved with Sat (empty for the no-op itself)
	Peer   Phase // optional second reference interleaved the same way (a@1M: keyauthz on the small store)
	PeerOf string
	Fixed  Phase // open loop at the fixed rate: latency
	Notes  []string
}

// Load says how a measurement drives the server.
type Load struct {
	Warmup    time.Duration
	Duration  time.Duration // total of the saturation windows, and of the fixed-rate window
	Rounds    int           // saturation is measured in this many windows, alternating with the no-op
	Rate      float64       // fixed rate of the open-loop window
	Conns     int
	Workers   int    // closed-loop concurrent calls
	Open      int    // open-loop bound on calls in flight
	Transport string // client transport: TransportH2 (default) or TransportGRPC
}

// Endpoint is a server and the requests to send it.
type Endpoint struct {
	S   *Server
	Src Source
	Seq *atomic.Uint64 // request numbering (fresh-key sources never repeat a key)
	// Addr and Transport, when set, reach S another way than its gRPC
	// listener with l.Transport (keyauthz's http_authz over TransportHTTP1).
	Addr, Transport string
}

// dial connects to e as it says, with l's connection count and transport by default.
func (e *Endpoint) dial(l Load) (*Client, error) {
	if e.Transport != "" {
		return Dial(e.Addr, l.Conns, e.Transport)
	}
	return Dial(e.S.GRPC, l.Conns, l.Transport)
}

// Measure warms the server up, runs the saturation windows (closed loop),
// alternating with windows against ref (the no-op; nil for none), then one
// fixed-rate window (open loop), reading each server's CPU time around every
// window.
//
// peer, when not nil, is a second reference measured the same way (its
// windows rotate with the other two).
func Measure(ctx context.Context, t Endpoint, ref, peer *Endpoint, key, title string, l Load, logf func(string, ...any)) (Measurement, error) {
	m := Measurement{Key: key, Title: title, Server: t.S.Name}
	type leg struct {
		e   *Endpoint
		c   *Client
		dst *Phase
	}
	var legs []leg
	for _, x := range []struct {
		e   *Endpoint
		dst *Phase
	}{{&t, &m.Sat}, {ref, &m.Ref}, {peer, &m.Peer}} {
		if x.e == nil {
			continue
		}
		c, err := x.e.dial(l)
		if err != nil {
			return m, err
		}
		defer c.Close()
		legs = append(legs, leg{x.e, c, x.dst})
	}
	if peer != nil {
		m.PeerOf = peer.S.Name
	}
	if l.Warmup > 0 {
		for _, g := range legs {
			if g.e != &t && g.e != peer {
				continue // the no-op needs no warm-up
			}
			w := g.c.Closed(ctx, g.e.Src, l.Workers, l.Warmup, g.e.Seq)
			if w.Errors > 0 {
				return m, fmt.Errorf("%s warm-up (%s): %d of %d calls failed: %v", key, g.e.S.Name, w.Errors, w.Sent, w.FirstErr)
			}
		}
	}
	rounds := max(l.Rounds, 1)
	win := l.Duration / time.Duration(rounds)
	for i := range rounds {
		for j := range legs {
			g := legs[(i+j)%len(legs)] // rotate the order every round
			p, err := window(g.e.S, func() Outcome { return g.c.Closed(ctx, g.e.Src, l.Workers, win, g.e.Seq) })
			g.dst.add(p)
			if err != nil {
				return m, err
			}
		}
	}
	c := legs[0].c
	refNote := ""
	if ref != nil {
		refNote = fmt.Sprintf("; no-op interleaved: %.0f/s, %.1f µs CPU/check", m.Ref.Out.Rate(), us(m.Ref.PerCheck()))
	}
	if peer != nil {
		refNote += fmt.Sprintf("; %s interleaved: %.0f/s, %.1f µs CPU/check", peer.S.Name, m.Peer.Out.Rate(), us(m.Peer.PerCheck()))
	}
	logf("  %-7s saturation: %7.0f checks/s, server %.2f cores, %6.1f µs CPU/check (client %.1f µs/call), %s%s", key,
		m.Sat.Out.Rate(), m.Sat.Busy(), us(m.Sat.PerCheck()), us(m.Sat.ClientPerCall()), codeSummary(m.Sat.Out), refNote)
	for _, p := range []Phase{m.Sat, m.Ref, m.Peer} {
		if p.Out.Errors > 0 {
			return m, fmt.Errorf("%s saturation: %d of %d calls failed: %v", key, p.Out.Errors, p.Out.Sent, p.Out.FirstErr)
		}
	}
	time.Sleep(100 * time.Millisecond) // let the saturation backlog (GC) settle
	fixed, err := window(t.S, func() Outcome { return c.Open(ctx, t.Src, l.Rate, l.Duration, l.Open, t.Seq) })
	if err != nil {
		return m, err
	}
	m.Fixed = fixed
	logf("  %-7s %5.0f/s fixed: p50 %6.0f µs, p99 %6.0f µs, p99.9 %6.0f µs, %6.1f µs CPU/check", key, m.Fixed.Out.Rate(),
		us(m.Fixed.Out.Pct(50)), us(m.Fixed.Out.Pct(99)), us(m.Fixed.Out.Pct(99.9)), us(m.Fixed.PerCheck()))
	if m.Fixed.Out.Errors > 0 {
		return m, fmt.Errorf("%s fixed rate: %d of %d calls failed: %v", key, m.Fixed.Out.Errors, m.Fixed.Out.Sent, m.Fixed.Out.FirstErr)
	}
	return m, nil
}

// window runs one load window and reads s's and this process's CPU time around it.
func window(s *Server, run func() Outcome) (Phase, error) {
	pid := s.Proc.PID()
	c0, err := CPUTime(pid)
	if err != nil {
		return Phase{}, err
	}
	s0, err := CPUTime(os.Getpid())
	if err != nil {
		return Phase{}, err
	}
	out := run()
	c1, err := CPUTime(pid)
	if err != nil {
		return Phase{}, err
	}
	s1, err := CPUTime(os.Getpid())
	if err != nil {
		return Phase{}, err
	}
	return Phase{Out: out, CPU: c1 - c0, ClientCPU: s1 - s0}, nil
}

// add accumulates another window into p.
func (p *Phase) add(q Phase) {
	p.CPU += q.CPU
	p.ClientCPU += q.ClientCPU
	o := &p.Out
	o.Sent += q.Out.Sent
	o.Done += q.Out.Done
	o.Errors += q.Out.Errors
	o.Elapsed += q.Out.Elapsed
	if o.Codes == nil {
		o.Codes = map[int32]uint64{}
	}
	for k, v := range q.Out.Codes {
		o.Codes[k] += v
	}
	if o.FirstErr == nil {
		o.FirstErr = q.Out.FirstErr
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// codeNames names the google.rpc codes keyauthz answers with.
var codeNames = map[int32]string{0: "OK", 3: "InvalidArgument", 7: "PermissionDenied", 8: "ResourceExhausted", 14: "Unavailable", 16: "Unauthenticated"}

// codes renders an outcome's CheckResponse status codes, e.g. "OK 70.0%, ResourceExhausted 30.0%".
func codeSummary(o Outcome) string {
	var ks []int32
	for k := range o.Codes {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	var parts []string
	for _, k := range ks {
		n := codeNames[k]
		if n == "" {
			n = fmt.Sprintf("code %d", k)
		}
		parts = append(parts, fmt.Sprintf("%s %.1f%%", n, 100*float64(o.Codes[k])/float64(max(o.Done, 1))))
	}
	return strings.Join(parts, ", ")
}

// share returns the fraction of answered calls with status code.
func share(o Outcome, code int32) float64 {
	if o.Done == 0 {
		return 0
	}
	return float64(o.Codes[code]) / float64(o.Done)
}
