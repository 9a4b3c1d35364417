package load

import (
	"hash/crc32"
	"math/rand/v2"
)

const (
	base62  = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	bodyLen = 43 // as apikey's issued format
	sumLen  = 6
)

// Key streams: each is an independent, reproducible sequence of issued-format keys.
// Stored keys come from streamStored; unknown (well-formed, never stored) keys from
// streamUnknown, so the two never collide.
const (
	streamStored  uint64 = 1
	streamUnknown uint64 = 2
)

// keyGen makes issued-format keys ("<prefix>_" + 43 base62 + 6 base62 CRC-32)
// that are a pure function of (seed, stream, i): the seeder and the load client
// derive the same secrets without storing a million of them.
type keyGen struct {
	prefix string
	seed   uint64
}

// key returns key number i of stream s.
func (g keyGen) key(s, i uint64) string {
	b := make([]byte, 0, len(g.prefix)+1+bodyLen+sumLen)
	return string(g.appendKey(b, s, i))
}

// appendKey appends key number i of stream s to dst.
func (g keyGen) appendKey(dst []byte, s, i uint64) []byte {
	r := rand.NewPCG(g.seed^s*0x9E3779B97F4A7C15, i)
	dst = append(dst, g.prefix...)
	dst = append(dst, '_')
	for n := 0; n < bodyLen; {
		v := r.Uint64()
		for k := 0; k < 10 && n < bodyLen; k++ { // 10 × 6 bits per draw
			c := v & 63
			v >>= 6
			if c < 62 {
				dst = append(dst, base62[c])
				n++
			}
		}
	}
	var sum [sumLen]byte
	encodeSum(&sum, crc32.ChecksumIEEE(dst[len(dst)-len(g.prefix)-1-bodyLen:]))
	return append(dst, sum[:]...)
}

// encodeSum is apikey's checksum encoding: fixed-width base62 of a CRC-32.
func encodeSum(dst *[sumLen]byte, v uint32) {
	for i := sumLen - 1; i >= 0; i-- {
		dst[i] = base62[v%62]
		v /= 62
	}
}

// malformed returns k with its last checksum character changed, so the key has
// the issued shape but fails the checksum.
func malformed(k string) string {
	b := []byte(k)
	last := &b[len(b)-1]
	if *last == 'A' {
		*last = 'B'
	} else {
		*last = 'A'
	}
	return string(b)
}
