// Package httpauthz serves keyauthz's decision over plain HTTP: nginx's
// auth_request, Traefik's forwardAuth and Envoy's ext_authz http_service ask
// it about a request and get the same answer the gRPC Check gives, as HTTP.
//
// The request to authorize is the one the handler receives: its path (less
// Options.PathPrefix, for Envoy's http_service) and its key headers. A proxy
// that calls a fixed URL forwards the original path instead, as X-Original-URI
// (nginx) or X-Forwarded-Uri (Traefik); when both are present they must agree.
//
// Allow is 200 with an empty body and, as response headers, the identity
// headers (key id, workspace, forwarded metadata), the rate-limit headers and
// x-envoy-auth-headers-to-remove naming the key headers. Deny is the gRPC
// path's status (400, 401, 403, 429, 503), JSON body and headers. A store or
// limiter fault is 503 with a JSON body and Retry-After: 1.
package httpauthz

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz"
)

// Header names the handler reads or writes besides the configured ones.
const (
	// OriginalURI is the original request's path and query as nginx's auth_request forwards it.
	OriginalURI = "X-Original-URI"
	// ForwardedURI is the original request's path and query as Traefik's forwardAuth forwards it.
	ForwardedURI = "X-Forwarded-Uri"
	// BodyHeaderRequest, on a request, asks for a deny's body also as the
	// BodyHeader response header: nginx's auth_request drops the body of the
	// answer, and its error_page location puts this header back as the body.
	BodyHeaderRequest = "X-Keyauthz-Body-Header"
	// BodyHeader carries a deny's body when the request asked for it.
	BodyHeader = "x-keyauthz-body"
	// HeadersToRemove, on allow, lists the request headers the proxy removes
	// before the request goes upstream (the API-key headers, metadata headers
	// of fields the key lacks); Envoy's http_service applies it as it is.
	HeadersToRemove = "x-envoy-auth-headers-to-remove"
)

// The request header map's spelling of the forwarded-URI headers.
var (
	canonOriginalURI  = textproto.CanonicalMIMEHeaderKey(OriginalURI)
	canonForwardedURI = textproto.CanonicalMIMEHeaderKey(ForwardedURI)
)

// Answers that are not a decision.
const (
	// MsgURIConflict is the 400 answer when X-Original-URI and X-Forwarded-Uri differ.
	MsgURIConflict = "Conflicting original URIs"
	// MsgPrefix is the 404 answer when the request's path lacks http_authz.path_prefix.
	MsgPrefix = "Path outside http_authz.path_prefix"
)

// Options configure the handler.
type Options struct {
	// KeyHeaders are the request headers the decision reads keys from
	// (config headers.api_key, lower-case, plus authorization with
	// headers.bearer); other request headers are not looked at.
	KeyHeaders []string
	// PathPrefix is removed from the request's own path (http_authz.path_prefix).
	PathPrefix string
	// Body is the shape of the handler's own answers (response.body).
	Body config.Body
}

// Handler answers authorization requests over HTTP with a Service's decision.
type Handler struct {
	svc     *extauthz.Service
	prefix  string
	read    []header // headers copied into the decision's request
	fault   answer   // store or limiter fault
	uriErr  answer   // X-Original-URI and X-Forwarded-Uri differ
	prefErr answer   // path outside the prefix
	pool    sync.Pool
	log     *zap.Logger

	mu    sync.Mutex                        // serializes growing names
	names atomic.Pointer[map[string]string] // response header name → canonical spelling
	lists atomic.Pointer[[]joined]          // HeadersToRemove values
}

// header is one request header the decision reads.
type header struct{ lower, canon string }

// answer is a fixed answer of the handler's own.
type answer struct {
	code int
	body string
	ct   string
}

// forwardedFor is read along with the key headers: it names the client behind the proxy.
const forwardedFor = "x-forwarded-for"

// New returns a handler answering with svc's decisions.
func New(svc *extauthz.Service, opt Options, log *zap.Logger) (*Handler, error) {
	if svc == nil || log == nil {
		return nil, errors.New("httpauthz: service and logger are required")
	}
	if len(opt.KeyHeaders) == 0 {
		return nil, errors.New("httpauthz: no key header")
	}
	if p := opt.PathPrefix; p != "" && (!strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/")) {
		return nil, errors.New("httpauthz: path prefix must start with / and not end with /")
	}
	if err := opt.Body.Check(); err != nil {
		return nil, err
	}
	h := &Handler{svc: svc, prefix: opt.PathPrefix, log: log}
	for _, n := range append(append([]string(nil), opt.KeyHeaders...), forwardedFor) {
		n = strings.ToLower(n)
		h.read = append(h.read, header{lower: n, canon: textproto.CanonicalMIMEHeaderKey(n)})
	}
	problem := opt.Body == config.BodyProblem
	h.fault = newAnswer(problem, http.StatusServiceUnavailable, "Authorization unavailable")
	h.uriErr = newAnswer(problem, http.StatusBadRequest, MsgURIConflict)
	h.prefErr = newAnswer(problem, http.StatusNotFound, MsgPrefix)
	h.pool.New = func() any { return new(state) }
	return h, nil
}

// newAnswer renders msg as the deny bodies do: {"message": …} or RFC 9457 problem details.
func newAnswer(problem bool, code int, msg string) answer {
	m := strconv.Quote(msg)
	if !problem {
		return answer{code: code, body: `{"message":` + m + `}`, ct: "application/json"}
	}
	return answer{code: code, ct: "application/problem+json",
		body: `{"type":"about:blank","title":"` + http.StatusText(code) + `","status":` + strconv.Itoa(code) + `,"detail":` + m + `}`}
}

// maxPairs is the most request headers a decision reads without allocating.
const maxPairs = 8

// state is one request's reusable storage.
type state struct {
	a     extauthz.Answer
	pairs [maxPairs]extauthz.KV
	vals  [16]string // backing of the response header values
}

// ServeHTTP answers one authorization request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, bad := h.path(r)
	if bad != nil {
		h.write(w, r, bad, nil)
		return
	}
	st := h.pool.Get().(*state)
	defer h.pool.Put(st)
	kv := st.pairs[:0]
	for _, hd := range h.read {
		vs := r.Header[hd.canon]
		switch len(vs) {
		case 0:
			continue
		case 1:
			kv = append(kv, extauthz.KV{K: hd.lower, V: vs[0]})
		default: // as Envoy does with a repeated header
			kv = append(kv, extauthz.KV{K: hd.lower, V: strings.Join(vs, ",")})
		}
	}
	req := extauthz.NewWireRequest(path, kv, nil)
	// The peer (the proxy, on a TCP listener) is the throttle's source; with
	// throttle.trusted_proxies it looks behind it into X-Forwarded-For.
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		req.Source = host
	}
	resp, err := h.svc.DecideInto(r.Context(), &req, &st.a)
	if err != nil {
		if code := status.Code(err); code != codes.Unavailable && !errors.Is(err, context.Canceled) {
			h.log.Warn("decision failed", zap.Stringer("code", code))
		}
		h.write(w, r, &h.fault, nil)
		return
	}
	if ok := resp.GetOkResponse(); ok != nil && resp.GetStatus().GetCode() == int32(codes.OK) {
		h.allow(w, st, ok)
		return
	}
	d := resp.GetDeniedResponse()
	if d == nil { // not an answer keyauthz gives
		h.write(w, r, &h.fault, nil)
		return
	}
	h.write(w, r, &answer{code: int(d.GetStatus().GetCode()), body: d.GetBody()}, d.GetHeaders())
}

// path returns the path to authorize: the forwarded original URI, else the
// request's own less the prefix; or the answer for a request without one.
func (h *Handler) path(r *http.Request) (string, *answer) {
	orig, fwd := r.Header[canonOriginalURI], r.Header[canonForwardedURI]
	switch {
	case len(orig) > 0 && len(fwd) > 0:
		if len(orig) != 1 || len(fwd) != 1 || orig[0] != fwd[0] {
			return "", &h.uriErr
		}
		return orig[0], nil
	case len(orig) > 0:
		if len(orig) != 1 {
			return "", &h.uriErr
		}
		return orig[0], nil
	case len(fwd) > 0:
		if len(fwd) != 1 {
			return "", &h.uriErr
		}
		return fwd[0], nil
	}
	p := r.RequestURI
	if p == "" || p[0] != '/' { // absolute-form or *: the path of the URL
		p = r.URL.RequestURI()
	}
	if h.prefix == "" {
		return p, nil
	}
	rest, ok := strings.CutPrefix(p, h.prefix)
	if !ok || rest != "" && rest[0] != '/' && rest[0] != '?' {
		return "", &h.prefErr
	}
	if rest == "" || rest[0] == '?' {
		rest = "/" + rest
	}
	return rest, nil
}

// allow writes the 200 of an allowed request: every header of the answer as
// a response header. The values may point into st, which goes back to the
// pool when ServeHTTP returns, so the response is flushed before that.
func (h *Handler) allow(w http.ResponseWriter, st *state, ok *authv3.OkHttpResponse) {
	hs := w.Header()
	vals := st.vals[:0]
	set := func(opts []*corev3.HeaderValueOption) {
		for _, o := range opts {
			k, v := o.GetHeader().GetKey(), o.GetHeader().GetValue()
			if len(vals) == cap(vals) {
				vals = make([]string, 0, 16)
			}
			vals = append(vals, v)
			hs[h.canon(k)] = vals[len(vals)-1 : len(vals) : len(vals)]
		}
	}
	set(ok.GetHeaders())
	set(ok.GetResponseHeadersToAdd())
	if rm := ok.GetHeadersToRemove(); len(rm) > 0 {
		hs[canonHeadersToRemove] = h.removeList(rm)
	}
	hs["Content-Length"] = zero
	w.WriteHeader(http.StatusOK)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	clear(st.vals[:])
}

var (
	zero                 = []string{"0"}
	canonHeadersToRemove = textproto.CanonicalMIMEHeaderKey(HeadersToRemove)
)

// canon returns the canonical spelling of the response header name k (the
// answer's are lower-case), from a map that grows by the few names answers use.
func (h *Handler) canon(k string) string {
	if m := h.names.Load(); m != nil {
		if c, ok := (*m)[k]; ok {
			return c
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.names.Load()
	m := make(map[string]string, 16)
	if old != nil {
		if c, ok := (*old)[k]; ok {
			return c
		}
		for a, b := range *old {
			m[a] = b
		}
	}
	c := textproto.CanonicalMIMEHeaderKey(k)
	if len(m) < maxNames {
		m[k] = c
		h.names.Store(&m)
	}
	return c
}

// joined is a list of header names to remove and its header value.
type joined struct {
	names []string
	value []string // one value: the names joined by ','
}

// removeList returns the HeadersToRemove value of rm, from a few lists kept
// (a service answers with one of a handful: the key headers, plus the
// metadata headers of fields a key lacks).
func (h *Handler) removeList(rm []string) []string {
	if l := h.lists.Load(); l != nil {
		for _, j := range *l {
			if slices.Equal(j.names, rm) {
				return j.value
			}
		}
	}
	j := joined{names: slices.Clone(rm), value: []string{strings.Join(rm, ",")}}
	h.mu.Lock()
	defer h.mu.Unlock()
	var l []joined
	if old := h.lists.Load(); old != nil {
		l = *old
	}
	if len(l) < maxLists {
		l = append(slices.Clip(l), j)
		h.lists.Store(&l)
	}
	return j.value
}

// maxLists bounds the kept HeadersToRemove values.
const maxLists = 16

// maxNames bounds the canonical-name map (answers use a few dozen names at most).
const maxNames = 256

// write writes a deny: a's status and body, the answer's headers (with a
// content type), and the body again as BodyHeader when the request asks.
func (h *Handler) write(w http.ResponseWriter, r *http.Request, a *answer, headers []*corev3.HeaderValueOption) {
	hs := w.Header()
	for _, o := range headers {
		hs.Set(o.GetHeader().GetKey(), o.GetHeader().GetValue())
	}
	if a.ct != "" {
		hs.Set("Content-Type", a.ct)
	}
	if a == &h.fault {
		hs.Set("Retry-After", "1")
	}
	if _, ok := r.Header[BodyHeaderRequest]; ok {
		hs.Set(BodyHeader, a.body)
	}
	hs.Set("Content-Length", strconv.Itoa(len(a.body)))
	w.WriteHeader(a.code)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(a.body))
	}
}
