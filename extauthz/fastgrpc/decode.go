package fastgrpc

import (
	"errors"
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keyauthz/keyauthz/extauthz"
)

// errMalformed is returned for bytes that are not a well-formed CheckRequest.
var errMalformed = errors.New("malformed CheckRequest")

// Field numbers of the CheckRequest parts the decision reads.
const (
	fAttributes        = 1  // CheckRequest.attributes
	fSource            = 1  // AttributeContext.source (Peer)
	fPeerAddress       = 1  // Peer.address (config.core.v3.Address)
	fSocketAddress     = 1  // Address.socket_address, one of the oneof address
	fPipe              = 2  // Address.pipe, another
	fInternalAddress   = 3  // Address.envoy_internal_address, another
	fSocketAddr        = 2  // SocketAddress.address
	fRequest           = 4  // AttributeContext.request
	fContextExtensions = 10 // AttributeContext.context_extensions (map<string,string>)
	fHTTP              = 2  // AttributeContext.Request.http
	fHeaders           = 3  // HttpRequest.headers (map<string,string>)
	fPath              = 4  // HttpRequest.path
	fHeaderMap         = 13 // HttpRequest.header_map
	fHeaderMapHeaders  = 1  // HeaderMap.headers
	fKey               = 1  // map entry key, HeaderValue.key
	fValue             = 2  // map entry value, HeaderValue.value
	fRawValue          = 3  // HeaderValue.raw_value
)

// maxPooled bounds the pairs a pooled request keeps capacity for, so one
// oversized request does not pin its buffers in the pool.
const maxPooled = 256

// request holds what the decision reads from one CheckRequest, decoded in place:
// its strings alias the message bytes and are valid only while those are.
type request struct {
	path       string
	headers    []extauthz.KV // the headers map, or header_map folded and joined
	ext        []extauthz.KV // context_extensions, last wire entry first
	hmap       []extauthz.KV // header_map entries as sent (value, else raw_value)
	hasHeaders bool          // the headers map was present (Check then ignores header_map)
	source     string        // attributes.source.address.socket_address.address
	socket     bool          // the source's address oneof holds socket_address
}

// part names a message of CheckRequest that the decoder walks with fields. Its
// values leave the low 32 bits clear, so part|field number is one switch key.
type part uint64

const (
	mCheckRequest part = iota << 32 // CheckRequest
	mAttributes                     // AttributeContext
	mRequest                        // AttributeContext.Request
	mHTTP                           // AttributeContext.HttpRequest
	mHeaderMap                      // HeaderMap
)

// walked is, for each part (indexed by part>>32), its validation schema and
// the nesting budget left inside it (validate.go).
var walked = [...]struct {
	schema *vmsg
	depth  int
}{
	mCheckRequest >> 32: {checkRequestSchema, depthCheckRequest},
	mAttributes >> 32:   {attributesSchema, depthAttributes},
	mRequest >> 32:      {requestSchema, depthRequest},
	mHTTP >> 32:         {httpSchema, depthHTTP},
	mHeaderMap >> 32:    {headerMapSchema, depthHeaderMap},
}

// decode reads b, a serialized CheckRequest, with proto.Unmarshal's semantics:
// fields repeated on the wire merge (last scalar wins, later map entries win),
// known fields of an unexpected wire type and unknown fields (groups included)
// are skipped, and b is an error exactly when proto.Unmarshal rejects it
// (malformed anywhere, invalid UTF-8 in a string field, nested too deep): the
// fields it does not read are checked with validField (validate.go).
func (r *request) decode(b []byte) error {
	r.reset()
	if !r.fields(b, mCheckRequest) {
		return errMalformed
	}
	if !r.hasHeaders {
		r.headers = joinFolded(r.headers[:0], r.hmap)
	}
	// extauthz looks extensions up first-match; the proto map keeps the last entry.
	slices.Reverse(r.ext)
	return nil
}

// reset empties r, dropping references to the previous message's bytes.
func (r *request) reset() {
	r.path, r.hasHeaders, r.source, r.socket = "", false, "", false
	r.headers = clearPairs(r.headers)
	r.ext = clearPairs(r.ext)
	r.hmap = clearPairs(r.hmap)
}

func clearPairs(p []extauthz.KV) []extauthz.KV {
	if cap(p) > maxPooled {
		return nil
	}
	clear(p)
	return p[:0]
}

// next splits the first field off b. A length-delimited field is returned with
// its number and contents; any other field is skipped and reported as number 0.
func next(b []byte) (num protowire.Number, v, rest []byte, ok bool) {
	// Fast path: a one-byte tag of a length-delimited field 1-15 with a
	// one-byte length, as most fields of a request are.
	if len(b) >= 2 && b[0] < 0x80 && b[0]&7 == byte(protowire.BytesType) && b[0] >= 1<<3 && b[1] < 0x80 {
		if n := 2 + int(b[1]); n <= len(b) {
			return protowire.Number(b[0] >> 3), b[2:n], b[n:], true
		}
	}
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num > protowire.MaxValidNumber {
		return 0, nil, nil, false
	}
	b = b[n:]
	if typ == protowire.BytesType {
		v, n = protowire.ConsumeBytes(b)
		if n < 0 {
			return 0, nil, nil, false
		}
		return num, v, b[n:], true
	}
	if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
		return 0, nil, nil, false
	}
	return 0, nil, b[n:], true
}

// str views b as a string without copying.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// fields reads b, a message m: each length-delimited field the decision
// needs is read into r (a message the decoder walks, recursively), any other
// is checked with validField; next has checked fields of other wire types.
func (r *request) fields(b []byte, m part) bool {
	for len(b) > 0 {
		num, v, rest, ok := next(b)
		if !ok {
			return false
		}
		b = rest
		if num == 0 {
			continue
		}
		switch m | part(num) {
		case mCheckRequest | fAttributes:
			ok = r.fields(v, mAttributes)
		case mAttributes | fRequest:
			ok = r.fields(v, mRequest)
		case mAttributes | fSource:
			if ok = validField(attributesSchema, num, v, depthAttributes); ok {
				r.peer(v)
			}
		case mAttributes | fContextExtensions:
			r.ext, ok = appendEntry(r.ext, v, false)
		case mRequest | fHTTP:
			ok = r.fields(v, mHTTP)
		case mHTTP | fHeaders:
			r.headers, ok = appendEntry(r.headers, v, false)
			r.hasHeaders = true
		case mHTTP | fPath:
			r.path, ok = str(v), utf8.Valid(v)
		case mHTTP | fHeaderMap:
			ok = r.fields(v, mHeaderMap)
		case mHeaderMap | fHeaderMapHeaders:
			r.hmap, ok = appendEntry(r.hmap, v, true)
		default:
			w := walked[m>>32]
			ok = validField(w.schema, num, v, w.depth)
		}
		if !ok {
			return false
		}
	}
	return true
}

// peer reads the source address from b, a valid Peer, as proto.Unmarshal
// merges it into what earlier fields set: a later socket_address merges into
// an earlier one (its address, when set, wins), a pipe or internal address
// replaces it, and a socket_address after those starts afresh.
func (r *request) peer(b []byte) {
	for len(b) > 0 {
		num, v, rest, _ := next(b)
		b = rest
		if num != fPeerAddress {
			continue
		}
		for len(v) > 0 {
			num, f, rest, _ := next(v)
			v = rest
			switch num {
			case fSocketAddress:
				if !r.socket {
					r.source, r.socket = "", true
				}
				for len(f) > 0 {
					num, a, rest, _ := next(f)
					f = rest
					if num == fSocketAddr {
						r.source = str(a)
					}
				}
			case fPipe, fInternalAddress:
				r.source, r.socket = "", false
			}
		}
	}
}

// appendEntry appends to p one map<string,string> entry, decoded from b, or
// with hv one HeaderValue of header_map as extauthz reads it (its value, else
// its raw_value). Absent fields are "", and a key or value that is not UTF-8
// is an error, as in proto.Unmarshal; a HeaderValue's other fields are checked
// with validField (a map entry has no others to check).
func appendEntry(p []extauthz.KV, b []byte, hv bool) ([]extauthz.KV, bool) {
	var kv extauthz.KV
	var raw string
	for len(b) > 0 {
		num, f, rest, ok := next(b)
		if !ok {
			return p, false
		}
		b = rest
		switch {
		case num == fKey:
			kv.K, ok = str(f), utf8.Valid(f)
		case num == fValue:
			kv.V, ok = str(f), utf8.Valid(f)
		case !hv || num == 0:
		case num == fRawValue:
			raw = str(f)
		default:
			ok = validField(headerValueSchema, num, f, depthHeaderValue)
		}
		if !ok {
			return p, false
		}
	}
	if kv.V == "" {
		kv.V = raw
	}
	return append(p, kv), true
}

// joinFolded appends to dst the header_map entries in src as extauthz's proto
// path reads them: names compared case-insensitively (strings.EqualFold against
// lower-case ASCII names), repeated names joined with ',' in wire order. It
// reorders src. Only a repeated name or a name not already lower-case ASCII
// costs an allocation.
func joinFolded(dst, src []extauthz.KV) []extauthz.KV {
	for i := range src {
		src[i].K = fold(src[i].K)
	}
	slices.SortStableFunc(src, func(a, b extauthz.KV) int { return strings.Compare(a.K, b.K) })
	for i := 0; i < len(src); {
		j := i + 1
		n := len(src[i].V)
		for j < len(src) && src[j].K == src[i].K {
			n += 1 + len(src[j].V)
			j++
		}
		if j == i+1 {
			dst = append(dst, src[i])
			i = j
			continue
		}
		var sb strings.Builder
		sb.Grow(n)
		for k := i; k < j; k++ {
			if k > i {
				sb.WriteByte(',')
			}
			sb.WriteString(src[k].V)
		}
		dst = append(dst, extauthz.KV{K: src[i].K, V: sb.String()})
		i = j
	}
	return dst
}

// fold maps a header name to the lower-case ASCII name it equals under
// strings.EqualFold: ASCII letters are lowered, and the two non-ASCII runes
// whose case orbit holds an ASCII letter (U+212A KELVIN SIGN, U+017F LATIN SMALL
// LETTER LONG S) become 'k' and 's'. Other runes are kept (they match no
// configured name, which is lower-case ASCII); invalid UTF-8 becomes U+FFFD.
func fold(s string) string {
	i := 0
	for ; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf || 'A' <= c && c <= 'Z' {
			break
		}
	}
	if i == len(s) {
		return s
	}
	var sb strings.Builder
	sb.Grow(len(s))
	sb.WriteString(s[:i])
	for _, c := range s[i:] {
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '\u212A':
			c = 'k'
		case c == '\u017F':
			c = 's'
		}
		sb.WriteRune(c)
	}
	return sb.String()
}
