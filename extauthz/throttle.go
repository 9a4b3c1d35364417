package extauthz

import (
	"errors"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// ThrottleOptions configure the per-source throttle of unknown keys (config
// throttle): once a source has presented UnknownKeys.N unknown well-formed
// keys within UnknownKeys.Per, its further requests whose key is not cached
// as valid are answered 429 without a store read until that window ends.
type ThrottleOptions struct {
	UnknownKeys    apikey.Rate // unknown keys a source may present per window; zero: throttle off
	TrustedProxies int         // proxies in front of Envoy appending to x-forwarded-for (0: the peer address is the source)
	Sources        int         // sources tracked at once (LRU); required when the throttle is on
}

// MsgThrottled is the 429 answer to a source over its unknown-key budget.
const MsgThrottled = "Too many unknown API keys"

// maxSourceLen bounds the bytes of a source address kept (a forwarded
// address is client text).
const maxSourceLen = 64

// maxRetryCached bounds the Retry-After values whose 429 answers are kept:
// longer waits are built per answer.
const maxRetryCached = 3600

// cachedPeeker is a Keys that can tell, without a store read, whether it
// holds a key (keycache.Cache).
type cachedPeeker interface {
	Cached(d apikey.Digest) (positive, negative bool)
}

// throttle is the per-source state: fixed windows in a sharded LRU of sources.
type throttle struct {
	n       int32
	per     int64 // window, in nanoseconds
	trusted int
	seed    maphash.Seed
	shards  []throttleShard
	mask    uint64
	// until is the latest end (Unix ns) of a window in which some source went
	// over: before it, requests look their source up; after it no source can
	// be over, and the lookup is skipped.
	until atomic.Int64

	resp    *responses
	answers []atomic.Pointer[authv3.CheckResponse] // 429 answers by Retry-After seconds, made on first use
}

// window is one source's count of unknown keys in its current window.
type window struct {
	start int64 // Unix ns
	n     int32
}

// throttleShard is one independently locked part of the throttle.
type throttleShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, window]
	_   [64]byte // keep shards on separate cache lines
}

// minThrottleShard is the fewest sources a shard holds; small throttles get one shard (exact LRU).
const minThrottleShard = 1024

func newThrottle(o ThrottleOptions, resp *responses) (*throttle, error) {
	switch {
	case o.UnknownKeys.N <= 0 || o.UnknownKeys.Per <= 0:
		return nil, errors.New("extauthz: throttle rate must be positive")
	case o.Sources <= 0:
		return nil, errors.New("extauthz: throttle sources must be positive")
	case o.TrustedProxies < 0:
		return nil, errors.New("extauthz: throttle trusted proxies must not be negative")
	}
	n := 1
	for n < 32 && o.Sources/(2*n) >= minThrottleShard {
		n *= 2
	}
	t := &throttle{n: int32(min(o.UnknownKeys.N, 1<<30)), per: int64(o.UnknownKeys.Per), trusted: o.TrustedProxies,
		seed: maphash.MakeSeed(), shards: make([]throttleShard, n), mask: uint64(n - 1), resp: resp}
	for i := range t.shards {
		lru, err := simplelru.NewLRU[string, window]((o.Sources+n-1)/n, nil)
		if err != nil {
			return nil, err
		}
		t.shards[i].lru = lru
	}
	t.answers = make([]atomic.Pointer[authv3.CheckResponse], min(ceilSeconds(o.UnknownKeys.Per), maxRetryCached)+1)
	return t, nil
}

func (t *throttle) shard(src string) *throttleShard {
	return &t.shards[maphash.String(t.seed, src)&t.mask]
}

// over reports whether src has used up its unknown keys in the window now
// falls in, and how long until that window ends.
func (t *throttle) over(src string, now int64) (time.Duration, bool) {
	if now >= t.until.Load() {
		return 0, false
	}
	s := t.shard(src)
	s.mu.Lock()
	w, ok := s.lru.Peek(src)
	s.mu.Unlock()
	if !ok || w.n < t.n || now-w.start >= t.per || now < w.start {
		return 0, false
	}
	return time.Duration(w.start + t.per - now), true
}

// unknown counts one unknown key presented by src at now.
func (t *throttle) unknown(src string, now int64) {
	s := t.shard(src)
	s.mu.Lock()
	w, ok := s.lru.Get(src)
	if !ok || now-w.start >= t.per || now < w.start {
		w = window{start: now}
	}
	w.n++
	if ok {
		s.lru.Add(src, w) // an existing key: updated in place
	} else {
		s.lru.Add(strings.Clone(src), w) // src may alias the request buffer
	}
	s.mu.Unlock()
	if w.n >= t.n {
		for end := w.start + t.per; ; {
			u := t.until.Load()
			if u >= end || t.until.CompareAndSwap(u, end) {
				break
			}
		}
	}
}

// len returns the number of sources tracked.
func (t *throttle) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// answer is the 429 answer telling the client to retry after wait.
func (t *throttle) answer(wait time.Duration) *authv3.CheckResponse {
	secs := max(ceilSeconds(wait), 1)
	if secs >= int64(len(t.answers)) {
		return t.build(secs)
	}
	p := &t.answers[secs]
	if r := p.Load(); r != nil {
		return r
	}
	r := t.build(secs)
	p.Store(r)
	return r
}

func (t *throttle) build(secs int64) *authv3.CheckResponse {
	return t.resp.deny(typev3.StatusCode_TooManyRequests, codes.ResourceExhausted, MsgThrottled, header("retry-after", strconv.FormatInt(secs, 10)))
}

// source is the address a request is throttled by: the peer, or with
// trusted proxies the address that many hops before the peer in
// x-forwarded-for. "" when the request names none.
func (t *throttle) source(req *Request) string {
	src := req.Source
	if t.trusted > 0 {
		if xff, ok := req.headers.get("x-forwarded-for"); ok {
			src = forwardedHop(xff, req.Source, t.trusted)
		}
	}
	if len(src) > maxSourceLen {
		src = src[:maxSourceLen]
	}
	return src
}

// forwardedHop returns the address n hops before the peer in the chain of
// x-forwarded-for value xff followed by peer (not repeated when Envoy, with
// use_remote_address, has appended it already); peer itself when the chain
// is shorter (the request did not come through the trusted proxies).
func forwardedHop(xff, peer string, n int) string {
	rest := xff
	if last, ok := lastHop(rest); ok && last.addr == peer {
		rest = rest[:last.at] // Envoy appended the peer: it is hop 0
	}
	for i := 1; ; i++ {
		h, ok := lastHop(rest)
		if !ok {
			return peer
		}
		if i == n {
			return h.addr
		}
		rest = rest[:h.at]
	}
}

// hop is one x-forwarded-for entry: its address and where its separator starts.
type hop struct {
	addr string
	at   int // the index of the ',' before it, or 0
}

// lastHop returns the last non-empty entry of the comma-separated list s.
func lastHop(s string) (hop, bool) {
	for len(s) > 0 {
		i := strings.LastIndexByte(s, ',')
		a := strings.TrimSpace(s[i+1:])
		if a != "" {
			return hop{addr: a, at: max(i, 0)}, true
		}
		if i < 0 {
			return hop{}, false
		}
		s = s[:i]
	}
	return hop{}, false
}
