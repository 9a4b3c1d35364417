package apikey

import (
	"crypto/rand"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
)

const (
	base62        = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	bodyLen       = 43   // 43 base62 characters ≈ 256 bits
	sumLen        = 6    // base62 CRC-32, fixed width
	idLen         = 20   // base62 characters in a key id (≈119 bits)
	displayN      = 4    // body characters shown in listings
	DefaultPrefix = "kz" // DefaultPrefix is the prefix of issued keys when none is configured.
	DefaultMaxLen = 256  // DefaultMaxLen bounds a presented key's length in bytes.
)

// Reasons a presented key is rejected before hashing, in the order they are checked.
var (
	// ErrEmpty means no key was presented.
	ErrEmpty = errors.New("empty key")
	// ErrTooLong means the key is longer than the configured bound.
	ErrTooLong = errors.New("key too long")
	// ErrAlphabet means the key holds a byte outside the key alphabet.
	ErrAlphabet = errors.New("key has bytes outside the key alphabet")
	// ErrPrefix means the key lacks the issued prefix and imported keys are not accepted.
	ErrPrefix = errors.New("key has the wrong prefix or shape")
	// ErrChecksum means the key's checksum does not match its body.
	ErrChecksum = errors.New("key checksum mismatch")
)

// Format describes the keys a deployment issues and accepts.
type Format struct {
	prefix   string // e.g. "kz"; the key starts with prefix + "_"
	maxLen   int
	imported bool // accept keys of any shape within the imported alphabet
}

// NewFormat returns a Format for the prefix; imported allows keys of any shape
// (visible ASCII except ',' and space) alongside issued ones.
func NewFormat(prefix string, maxLen int, imported bool) (*Format, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if maxLen <= 0 {
		maxLen = DefaultMaxLen
	}
	for i := 0; i < len(prefix); i++ {
		if !issuedByte(prefix[i]) {
			return nil, fmt.Errorf("key prefix %q: only letters, digits and '_' are allowed", prefix)
		}
	}
	if n := len(prefix) + 1 + bodyLen + sumLen; n > maxLen {
		return nil, fmt.Errorf("key prefix %q: issued keys (%d bytes) exceed the max length %d", prefix, n, maxLen)
	}
	return &Format{prefix: prefix, maxLen: maxLen, imported: imported}, nil
}

// Prefix returns the issued-key prefix without the trailing '_'.
func (f *Format) Prefix() string { return f.prefix }

func issuedByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_'
}

func importedByte(c byte) bool { return c > ' ' && c < 0x7f && c != ',' }

// Check validates a presented key's shape: length, alphabet, prefix, checksum, in that
// order. It allocates nothing and returns one of the Err* reasons or nil.
func (f *Format) Check(key string) error {
	if key == "" {
		return ErrEmpty
	}
	if len(key) > f.maxLen {
		return ErrTooLong
	}
	issued := true
	for i := 0; i < len(key); i++ {
		c := key[i]
		if issuedByte(c) {
			continue
		}
		if !f.imported || !importedByte(c) {
			return ErrAlphabet
		}
		issued = false
	}
	n := len(f.prefix)
	if !issued || len(key) != n+1+bodyLen+sumLen || key[:n] != f.prefix || key[n] != '_' {
		if f.imported {
			return nil
		}
		return ErrPrefix
	}
	head := key[:len(key)-sumLen]
	var want [sumLen]byte
	encodeSum(&want, crc32.ChecksumIEEE(unsafeBytes(head)))
	if key[len(head):] != string(want[:]) {
		return ErrChecksum
	}
	return nil
}

func encodeSum(dst *[sumLen]byte, v uint32) {
	for i := sumLen - 1; i >= 0; i-- {
		dst[i] = base62[v%62]
		v /= 62
	}
}

// randBase62 fills n base62 characters from crypto/rand without modulo bias.
func randBase62(n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, n+n/2)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("read random: %w", err)
		}
		for _, b := range buf {
			if b < 248 { // 248 = 4*62: keeps the distribution uniform
				out = append(out, base62[b%62])
				if len(out) == n {
					break
				}
			}
		}
	}
	return string(out), nil
}

// Generate returns a new secret key of the issued format.
func (f *Format) Generate() (string, error) {
	body, err := randBase62(bodyLen)
	if err != nil {
		return "", err
	}
	head := f.prefix + "_" + body
	var sum [sumLen]byte
	encodeSum(&sum, crc32.ChecksumIEEE([]byte(head)))
	return head + string(sum[:]), nil
}

// Display returns the listing form of a secret: the prefix and the first body
// characters for issued keys, the first characters for imported ones.
func (f *Format) Display(secret string) string {
	if strings.HasPrefix(secret, f.prefix+"_") && len(secret) >= len(f.prefix)+1+displayN {
		return secret[:len(f.prefix)+1+displayN]
	}
	if len(secret) > displayN {
		return secret[:displayN]
	}
	return ""
}

// NewID returns a fresh, non-secret key id ("key_" + base62).
func NewID() (string, error) {
	s, err := randBase62(idLen)
	if err != nil {
		return "", err
	}
	return "key_" + s, nil
}
