package extauthz

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Answer is the storage of one allowed CheckResponse: the response and every
// message it points to, in one value that can be reused once the response has
// been marshalled. The zero value is ready to use.
type Answer struct {
	resp  authv3.CheckResponse
	oneof authv3.CheckResponse_OkResponse
	ok    authv3.OkHttpResponse
	rate  rateBlock

	// Upstream identity headers (key id, workspace).
	idVals [2]corev3.HeaderValue
	idOpts [2]corev3.HeaderValueOption
	idPtrs [2]*corev3.HeaderValueOption

	// Dynamic metadata: the map is made once and keeps pointing at vals, whose
	// strings change per answer, so reuse allocates nothing.
	meta  structpb.Struct
	vals  [2]structpb.Value
	kinds [2]structpb.Value_StringValue

	md *metaBlock // forwarded key metadata; made on the first answer that forwards any

	marked []*corev3.HeaderValueOption // upstream headers of a report-only allow marked WouldDenyHeader
}

// Response returns the response a holds (meaningful after DecideInto allowed a request).
func (a *Answer) Response() *authv3.CheckResponse { return &a.resp }

// fill builds the allowed response for k in a and returns it. In report-only
// mode, mark (a WouldDenyHeader) is added upstream when enforce mode would
// deny, and clean is set when it would allow: the client's WouldDenyHeader is
// then removed.
func (a *Answer) fill(s *Service, k *apikey.Key, rate []*corev3.HeaderValueOption, mark *corev3.HeaderValueOption, clean bool) *authv3.CheckResponse {
	for i, kv := range [2][2]string{{s.opt.KeyIDHeader, k.ID}, {s.opt.WorkspaceHeader, k.Workspace}} {
		a.idVals[i] = corev3.HeaderValue{Key: kv[0], Value: kv[1]}
		a.idOpts[i] = corev3.HeaderValueOption{Header: &a.idVals[i], AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
		a.idPtrs[i] = &a.idOpts[i]
	}
	if a.meta.Fields == nil {
		a.meta.Fields = map[string]*structpb.Value{MetadataKeyID: &a.vals[0], MetadataWorkspace: &a.vals[1]}
		a.vals[0].Kind, a.vals[1].Kind = &a.kinds[0], &a.kinds[1]
	}
	a.kinds[0].StringValue, a.kinds[1].StringValue = k.ID, k.Workspace

	headers, remove := a.idPtrs[:], s.remove
	if clean {
		remove = s.ro.remove
	}
	switch {
	case len(s.meta) > 0:
		headers, remove = a.fillMeta(s, k.Metadata, clean)
	case a.md != nil:
		a.unsetMeta()
	}
	if mark != nil {
		a.marked = append(append(a.marked[:0], headers...), mark)
		headers = a.marked
	}
	a.ok = authv3.OkHttpResponse{Headers: headers, HeadersToRemove: remove, ResponseHeadersToAdd: rate}
	a.oneof.OkResponse = &a.ok
	a.resp = authv3.CheckResponse{Status: okStatus, HttpResponse: &a.oneof, DynamicMetadata: &a.meta}
	return &a.resp
}

// MetadataFields is the dynamic-metadata field, set on allow when the key has
// any forwarded metadata field, holding a struct of those fields' values.
const MetadataFields = "metadata"

// maxMetaValue is the most bytes of a forwarded metadata value, escapes included.
const maxMetaValue = 256

// metaField is one forwarded metadata field.
type metaField struct {
	name   string // as configured: the key's metadata field, and its name in the dynamic metadata
	header string // config.MetaPrefix + lower(name)
}

// metaFields checks Options.Metadata and returns the forwarded fields.
func metaFields(fields []string) ([]metaField, error) {
	if len(fields) > config.MaxMetaHeaders {
		return nil, fmt.Errorf("extauthz: %d metadata fields, at most %d", len(fields), config.MaxMetaHeaders)
	}
	out := make([]metaField, 0, len(fields))
	seen := map[string]bool{}
	for _, f := range fields {
		h := config.MetaPrefix + strings.ToLower(f)
		if !metaName(f) || seen[h] {
			return nil, errors.New("extauthz: metadata fields must be distinct (ignoring case) 1-64 ASCII letters, digits, '-' or '_'")
		}
		seen[h] = true
		out = append(out, metaField{name: f, header: h})
	}
	return out, nil
}

// metaName reports whether f can be a forwarded field, and so part of a header name.
func metaName(f string) bool {
	if f == "" || len(f) > 64 {
		return false
	}
	for i := 0; i < len(f); i++ {
		if c := f[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_')) {
			return false
		}
	}
	return true
}

// metaBlock is an Answer's storage for forwarded metadata, sized for the
// service's fields and reused by later answers.
type metaBlock struct {
	headers []*corev3.HeaderValueOption // the identity headers, then the metadata ones
	vals    []corev3.HeaderValue
	opts    []corev3.HeaderValueOption
	remove  []string // the API-key headers and those of the fields the key lacks
	buf     []byte   // escaped values

	set   bool // a.meta.Fields holds MetadataFields
	dyn   structpb.Value
	kind  structpb.Value_StructValue
	inner structpb.Struct
	fvals []structpb.Value
	fstrs []structpb.Value_StringValue
}

func newMetaBlock(n int) *metaBlock {
	m := &metaBlock{
		headers: make([]*corev3.HeaderValueOption, 0, n+2),
		vals:    make([]corev3.HeaderValue, n),
		opts:    make([]corev3.HeaderValueOption, n),
		fvals:   make([]structpb.Value, n),
		fstrs:   make([]structpb.Value_StringValue, n),
		inner:   structpb.Struct{Fields: make(map[string]*structpb.Value, n)},
	}
	m.dyn.Kind, m.kind.StructValue = &m.kind, &m.inner
	return m
}

// unsetMeta drops the metadata struct from the dynamic metadata.
func (a *Answer) unsetMeta() {
	if a.md.set {
		delete(a.meta.Fields, MetadataFields)
		a.md.set = false
	}
}

// fillMeta sets the forwarded metadata of a key with metadata md and returns
// the response's headers and headers to remove. A field the key lacks, or
// holds empty (Envoy drops an empty header value, which would leave the
// client's), has its header removed and no dynamic-metadata entry.
func (a *Answer) fillMeta(s *Service, md map[string]string, clean bool) ([]*corev3.HeaderValueOption, []string) {
	remove, noMeta := s.remove, s.noMeta
	if clean {
		remove, noMeta = s.ro.remove, s.ro.noMeta
	}
	if len(md) == 0 { // most keys: nothing forwarded, every metadata header removed
		if a.md != nil {
			a.unsetMeta()
		}
		return a.idPtrs[:], noMeta
	}
	if a.md == nil || len(a.md.vals) < len(s.meta) {
		if a.md != nil {
			a.unsetMeta()
		}
		a.md = newMetaBlock(len(s.meta))
	}
	m := a.md
	m.headers = append(m.headers[:0], a.idPtrs[:]...)
	m.remove = m.remove[:0]
	m.buf = m.buf[:0]
	clear(m.inner.Fields)
	n, missing := 0, false
	for _, f := range s.meta {
		v := md[f.name]
		if v == "" {
			if !missing {
				m.remove, missing = append(m.remove, remove...), true
			}
			m.remove = append(m.remove, f.header)
			continue
		}
		if !headerSafe(v) {
			start := len(m.buf)
			m.buf = appendHeaderSafe(m.buf, v)
			b := m.buf[start:] // a later append may move m.buf; this string keeps pointing here
			v = unsafe.String(unsafe.SliceData(b), len(b))
		}
		m.vals[n] = corev3.HeaderValue{Key: f.header, Value: v}
		m.opts[n] = corev3.HeaderValueOption{Header: &m.vals[n], AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
		m.headers = append(m.headers, &m.opts[n])
		m.fstrs[n].StringValue = v
		m.fvals[n].Kind = &m.fstrs[n]
		m.inner.Fields[f.name] = &m.fvals[n]
		n++
	}
	if n == 0 {
		a.unsetMeta()
		return a.idPtrs[:], noMeta
	}
	if !m.set {
		a.meta.Fields[MetadataFields] = &m.dyn
		m.set = true
	}
	if !missing {
		return m.headers, remove
	}
	return m.headers, m.remove
}

// metaKeep reports whether byte i of v goes into a header as it is: a visible
// ASCII byte other than '%', or a single space inside the value.
func metaKeep(v string, i int) bool {
	c := v[i]
	if c == ' ' {
		return i > 0 && i < len(v)-1 && v[i-1] != ' ' && v[i+1] != ' '
	}
	return c > ' ' && c < 0x7F && c != '%'
}

// headerSafe reports whether v goes into a header unchanged.
func headerSafe(v string) bool {
	if len(v) > maxMetaValue {
		return false
	}
	for i := 0; i < len(v); i++ {
		if !metaKeep(v, i) {
			return false
		}
	}
	return true
}

// appendHeaderSafe appends v made header-safe to dst: every byte metaKeep
// refuses as %XX, cut at maxMetaValue bytes, never inside an escape, and
// never ending in a space.
func appendHeaderSafe(dst []byte, v string) []byte {
	const hex = "0123456789ABCDEF"
	start := len(dst)
	for i := 0; i < len(v); i++ {
		if metaKeep(v, i) {
			if len(dst)-start+1 > maxMetaValue {
				break
			}
			dst = append(dst, v[i])
			continue
		}
		if len(dst)-start+3 > maxMetaValue {
			break
		}
		dst = append(dst, '%', hex[v[i]>>4], hex[v[i]&15])
	}
	if n := len(dst); n > start && dst[n-1] == ' ' { // the cut fell after a kept space
		dst = dst[:n-1]
	}
	return dst
}
