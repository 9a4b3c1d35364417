package apikey

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"sort"
	"sync"
	"unsafe"
)

// MinPepperLen is the shortest pepper accepted, in bytes.
const MinPepperLen = 32

// Hasher computes HMAC-SHA-256(pepper, key) under a current pepper version and
// keeps older versions so keys stored under them still verify.
type Hasher struct {
	current int
	pools   map[int]*sync.Pool
	older   []int // other versions, newest first
}

// NewHasher returns a Hasher for the peppers by version; current must be among them.
func NewHasher(peppers map[int][]byte, current int) (*Hasher, error) {
	if len(peppers) == 0 {
		return nil, errors.New("no pepper configured")
	}
	if _, ok := peppers[current]; !ok {
		return nil, fmt.Errorf("current pepper version %d is not configured", current)
	}
	h := &Hasher{current: current, pools: make(map[int]*sync.Pool, len(peppers))}
	for v, p := range peppers {
		if len(p) < MinPepperLen {
			return nil, fmt.Errorf("pepper version %d: %d bytes, need at least %d", v, len(p), MinPepperLen)
		}
		key := append([]byte(nil), p...)
		h.pools[v] = &sync.Pool{New: func() any { return &mac{h: hmac.New(sha256.New, key)} }}
		if v != current {
			h.older = append(h.older, v)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(h.older)))
	return h, nil
}

// Current returns the pepper version new digests use.
func (h *Hasher) Current() int { return h.current }

// Older returns the other configured versions, newest first.
func (h *Hasher) Older() []int { return h.older }

// Sum returns the digest of key under the current pepper.
func (h *Hasher) Sum(key string) Digest {
	d, _ := h.SumVersion(key, h.current)
	return d
}

// SumVersion returns the digest of key under pepper version v.
func (h *Hasher) SumVersion(key string, v int) (Digest, error) {
	p, ok := h.pools[v]
	if !ok {
		return Digest{}, fmt.Errorf("pepper version %d is not configured", v)
	}
	m := p.Get().(*mac)
	m.h.Reset()
	m.h.Write(unsafeBytes(key))
	d := Digest{Version: v}
	copy(d.Sum[:], m.h.Sum(m.buf[:0]))
	p.Put(m)
	return d, nil
}

// mac is a pooled keyed hash with its own output buffer, so hashing allocates nothing.
type mac struct {
	h   hash.Hash
	buf [sha256.Size]byte
}

// unsafeBytes views s as bytes without copying; callers must not modify or retain it.
func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// ParseDigestHex reads a 64-character hex digest sum.
func ParseDigestHex(s string, version int) (Digest, error) {
	d := Digest{Version: version}
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(d.Sum) {
		return Digest{}, fmt.Errorf("digest %q: want 64 hex characters", s)
	}
	copy(d.Sum[:], b)
	return d, nil
}
