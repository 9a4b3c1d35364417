// Package extauthz is keyauthz's Envoy ext_authz v3 Authorization service: it reads
// the API key from the request headers, validates it against the cached key store,
// applies the key's rate limit and answers allow or deny.
package extauthz

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

// Keys finds a key by digest (the cache in front of the store).
type Keys interface {
	Lookup(ctx context.Context, d apikey.Digest) (apikey.Key, error)
}

// Limiter decides one request against a key's rate. It may keep key (the
// cached key id, which is never reused for another value).
type Limiter interface {
	Allow(ctx context.Context, key string, r apikey.Rate) (ratelimit.Decision, error)
}

// Options configure the Check service. They are taken as given (the defaults
// are config.Default's): New refuses options that are missing or invalid.
type Options struct {
	Headers         []string               // API-key header names, lower-case, tried in order
	Bearer          bool                   // also read Authorization: Bearer
	KeyIDHeader     string                 // upstream identity header for the key id
	WorkspaceHeader string                 // upstream identity header for the workspace
	Templates       []string               // ownership path templates with one or more {name} captures
	DefaultRate     apikey.Rate            // rate when neither the key, its workspace record nor WorkspaceRate sets one
	WorkspaceRate   map[string]apikey.Rate // per-workspace rate overrides (config), under the workspace record's
	Body            config.Body            // deny body shape
	Realm           string                 // WWW-Authenticate realm
	RateHeaders     config.RateHeaders     // rate-limit header style
	Reset           config.Reset           // X-RateLimit-Reset as seconds or a Unix time
	Now             func() time.Time       // clock; time.Now when nil
	// Used is called for every allowed request and every deny of a known key
	// (rate limited, forbidden, disabled, expired, revoked, not yet valid,
	// limiter unavailable) with its outcome (usage counts); it must not block
	// nor allocate.
	Used func(keyID string, at time.Time, o apikey.Outcome)
	// Metadata names the key metadata fields forwarded upstream on allow
	// (config headers.metadata): each as the header config.MetaPrefix+lower(field),
	// made header-safe, overwriting the client's, and in the dynamic metadata
	// under MetadataFields; the client's copy of the header of a field the key
	// lacks is removed. Nil: none, at no cost.
	Metadata []string
	// RevokedUse is called when a revoked key is presented; it must not block.
	RevokedUse func(k *apikey.Key)
	// Rehash is called when a key matched under an older pepper version; it must not
	// block, and must hash key before returning: key may alias the request buffer.
	Rehash func(old apikey.Digest, key string)
	// ReportOnly (config mode: report_only) allows every request, marking
	// those enforce mode would deny with WouldDenyHeader; a route's ExtMode
	// context extension overrides it either way.
	ReportOnly bool
	// Throttle limits unknown keys per source (config throttle); zero: off.
	Throttle ThrottleOptions
}

// Service implements envoy.service.auth.v3.Authorization.
type Service struct {
	authv3.UnimplementedAuthorizationServer

	format  *apikey.Format
	hasher  *apikey.Hasher
	keys    Keys
	limiter Limiter
	opt     Options
	tmpl    []template
	remove  []string    // request headers removed upstream: the API-key headers
	meta    []metaField // Options.Metadata
	noMeta  []string    // remove and every metadata header: for a key with none of the fields
	resp    responses
	metrics *Metrics
	log     *zap.Logger
	now     func() time.Time       // Options.Now; nil for the real clock (a Check's start time is its now)
	evict   func(sums ...[32]byte) // keys' Evict when keys is a cache, else nil
	timeLim bool                   // time limiter calls: not the in-process limiter, whose time is all CPU and in the Check's
	mode    mode                   // Options.ReportOnly: the mode of a route without ExtMode
	ro      *reportAnswers
	thr     *throttle                                       // nil when off
	peek    func(d apikey.Digest) (positive, negative bool) // keys' Cached when keys is a cache, else nil
}

// evicter is a Keys that caches (keycache.Cache).
type evicter interface{ Evict(sums ...[32]byte) }

var _ authv3.AuthorizationServer = (*Service)(nil)

// New returns a Check service over its required parts.
func New(f *apikey.Format, h *apikey.Hasher, keys Keys, lim Limiter, m *Metrics, opt Options, log *zap.Logger) (*Service, error) {
	switch {
	case f == nil || h == nil || keys == nil || lim == nil || m == nil || log == nil:
		return nil, errors.New("extauthz: format, hasher, keys, limiter, metrics and logger are required")
	case len(opt.Headers) == 0 && !opt.Bearer:
		return nil, errors.New("extauthz: no API-key header configured")
	case opt.DefaultRate.N <= 0 || opt.DefaultRate.Per <= 0:
		return nil, errors.New("extauthz: default rate must be positive")
	case opt.KeyIDHeader == "" || opt.WorkspaceHeader == "":
		return nil, errors.New("extauthz: key id and workspace headers are required")
	case opt.Realm == "":
		return nil, errors.New("extauthz: realm is required")
	}
	meta, err := metaFields(opt.Metadata)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(opt.Body.Check(), opt.RateHeaders.Check(), opt.Reset.Check()); err != nil {
		return nil, fmt.Errorf("extauthz: %w", err)
	}
	s := &Service{
		format: f, hasher: h, keys: keys, limiter: lim, opt: opt, metrics: m,
		log: log, now: opt.Now, tmpl: parseTemplates(opt.Templates),
	}
	if ev, ok := keys.(evicter); ok {
		s.evict = ev.Evict
	}
	_, local := lim.(*ratelimit.Local)
	s.timeLim = !local
	s.remove = append(s.remove, opt.Headers...)
	if opt.Bearer {
		s.remove = append(s.remove, "authorization")
	}
	s.meta = meta
	if len(meta) > 0 {
		s.noMeta = slices.Clip(slices.Clone(s.remove))
		for _, f := range meta {
			s.noMeta = append(s.noMeta, f.header)
		}
	}
	s.resp = newResponses(opt.Body == config.BodyProblem, opt.Realm)
	s.ro = newReportAnswers(s)
	if opt.ReportOnly {
		s.mode = modeReport
	}
	if !opt.Throttle.UnknownKeys.IsZero() {
		if s.thr, err = newThrottle(opt.Throttle, &s.resp); err != nil {
			return nil, err
		}
		if p, ok := keys.(cachedPeeker); ok {
			s.peek = p.Cached
		}
	}
	return s, nil
}

// Check answers one ext_authz request decoded by the standard gRPC codec: the
// generated authv3 handler (grpc.codec: standard) calls it, and so does
// fastgrpc for a request that reached it as a CheckRequest. Denies are
// responses with a nil error; only the authorizer's own faults (store
// unreachable) are gRPC errors.
func (s *Service) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	http := req.GetAttributes().GetRequest().GetHttp()
	r := Request{Path: http.GetPath(), headers: headerSource{m: http.GetHeaders()}, ext: extSource{m: req.GetAttributes().GetContextExtensions()},
		Source: req.GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress()}
	// An empty headers map is no headers map: proto.Unmarshal makes one, empty, for a
	// headers field of another wire type, which the fast codec skips as unknown.
	if len(r.headers.m) == 0 {
		r.headers.m, r.headers.raw = nil, http.GetHeaderMap()
	}
	return s.Decide(ctx, &r)
}

// Request is the part of a CheckRequest the decision reads.
type Request struct {
	Path string // :path as Envoy sends it (query included)
	// Source is the downstream peer's address (attributes.source.address.socket_address.address),
	// the throttle's source; the fast codec sets it after NewWireRequest.
	Source  string
	headers headerSource
	ext     extSource
}

// NewWireRequest makes a Request from pairs decoded straight off the wire (the
// fast codec); the strings may alias the request buffer for the call's duration.
func NewWireRequest(path string, headers, ext []KV) Request {
	return Request{Path: path, headers: headerSource{pairs: nonNil(headers)}, ext: extSource{pairs: ext}}
}

func nonNil(p []KV) pairs {
	if p == nil {
		return pairs{}
	}
	return p
}

// Decide answers one request in its codec-neutral form, in a fresh Answer:
// Check calls it, and fastgrpc calls it for a wire-decoded request that went
// through unary interceptors.
func (s *Service) Decide(ctx context.Context, req *Request) (*authv3.CheckResponse, error) {
	return s.DecideInto(ctx, req, new(Answer))
}

// DecideInto is Decide building an allowed response in a: fastgrpc's fast
// path (no interceptors) calls it with a pooled Answer. a must not be reused
// until the returned response has been marshalled; denies are shared,
// read-only responses that do not touch a.
func (s *Service) DecideInto(ctx context.Context, req *Request, a *Answer) (*authv3.CheckResponse, error) {
	start := time.Now()
	resp, res, err := s.decide(ctx, req, a, start)
	s.metrics.checkTook(time.Since(start), res)
	return resp, err
}

// decide is DecideInto for a Check that started at start (its now, unless
// Options.Now is set), also returning the result (a would-be one in
// report-only mode).
func (s *Service) decide(ctx context.Context, req *Request, a *Answer, start time.Time) (*authv3.CheckResponse, checkResult, error) {
	md := s.modeOf(req)
	now := start
	if s.now != nil {
		now = s.now()
	}
	key, res := extract(req.headers, s.opt.Headers, s.opt.Bearer)
	switch res {
	case keyConflict:
		return s.refuse(md, reasonConflict, s.resp.conflict, wd400, "", now)
	case keyMissing:
		return s.refuse(md, reasonMissing, s.resp.unauthorized, wd401, "", now)
	}
	if err := s.format.Check(key); err != nil {
		return s.refuse(md, formatReason(err), s.resp.unauthorized, wd401, "", now)
	}
	var src string // the throttle's source, when on ("": none, not throttled)
	if s.thr != nil {
		if src = s.thr.source(req); src != "" {
			if wait, over := s.thr.over(src, now.UnixNano()); over {
				if valid, negative := s.cached(key); !valid {
					if !negative {
						s.metrics.readAvoided()
					}
					return s.refuse(md, reasonThrottled, s.thr.answer(wait), wd429, "", now)
				}
			}
		}
	}
	k, err := s.lookup(ctx, key)
	if errors.Is(err, apikey.ErrNotFound) {
		if src != "" {
			s.thr.unknown(src, now.UnixNano())
		}
		return s.refuse(md, reasonUnknown, s.resp.unauthorized, wd401, "", now)
	}
	if err != nil {
		s.metrics.fault(md, reasonStore)
		s.log.Warn("key store unavailable", zap.Error(err))
		if md == modeReport {
			s.reportDeny(wd503, reasonStore, "", now)
			return s.ro.anon[wd503], resError, nil
		}
		return nil, resError, status.Error(codes.Unavailable, "key store unavailable")
	}
	if err := k.Valid(now); err != nil {
		if errors.Is(err, apikey.ErrRevoked) && s.opt.RevokedUse != nil {
			rk := k // a copy, so k itself stays on the stack on the hot path
			s.opt.RevokedUse(&rk)
		}
		reason, o := validReason(err)
		s.used(k.ID, now, o)
		return s.refuse(md, reason, s.resp.unauthorized, wd401, k.ID, now)
	}
	var scratch [128]byte // a resource path joined from several captures
	if r := resource(req.Path, req.ext, s.tmpl, scratch[:0]); r != "" && !k.Owns(r) {
		s.used(k.ID, now, apikey.OutcomeForbidden)
		if md == modeReport { // as in enforce mode, the limiter is not asked
			return s.refuseKey(a, &k, reasonForbidden, wd403, nil, now)
		}
		s.metrics.deny(md, reasonForbidden)
		return s.resp.forbidden, resDenied, nil
	}
	var d ratelimit.Decision
	if s.timeLim {
		t := time.Since(start)
		d, err = s.limiter.Allow(ctx, k.ID, s.rate(&k))
		s.metrics.limiterTook(time.Since(start)-t, err)
	} else {
		d, err = s.limiter.Allow(ctx, k.ID, s.rate(&k))
	}
	if err != nil {
		if !errors.Is(err, ratelimit.ErrUnavailable) {
			s.metrics.fault(md, reasonLimiter)
			s.log.Warn("rate limiter failed", zap.String("key_id", k.ID), zap.Error(err))
			if md == modeReport {
				s.reportDeny(wd503, reasonLimiter, k.ID, now)
				return a.fill(s, &k, nil, s.ro.mark[wd503], false), resError, nil
			}
			return nil, resError, status.Error(codes.Unavailable, "rate limiter unavailable")
		}
		s.metrics.limiterError()
		if !d.Allowed { // on_error: deny. An outage, not a limit: 503, never 429.
			s.used(k.ID, now, apikey.OutcomeUnavailable)
			if md == modeReport {
				return s.refuseKey(a, &k, reasonLimiterDown, wd503, nil, now)
			}
			s.metrics.deny(md, reasonLimiterDown)
			return s.resp.unavailable, resDenied, nil
		}
	}
	if !d.Allowed {
		s.used(k.ID, now, apikey.OutcomeRateLimited)
		if md == modeReport {
			return s.refuseKey(a, &k, reasonLimited, wd429, a.rate.build(d, now, s.opt.RateHeaders, s.opt.Reset), now)
		}
		s.metrics.deny(md, reasonLimited)
		return s.resp.limited(d, now, s.opt.RateHeaders, s.opt.Reset), resDenied, nil
	}
	s.used(k.ID, now, apikey.OutcomeAllowed)
	s.metrics.allow(md)
	return a.fill(s, &k, a.rate.build(d, now, s.opt.RateHeaders, s.opt.Reset), nil, md == modeReport), resAllowed, nil
}

// cached reports, without a store read, whether the keys' cache holds key as
// found (valid), under the current pepper or an older one, or else holds its
// current digest as unknown (negative). Both are false without a cache.
func (s *Service) cached(key string) (valid, negative bool) {
	if s.peek == nil {
		return false, false
	}
	valid, negative = s.peek(s.hasher.Sum(key))
	if valid {
		return true, false
	}
	for _, v := range s.hasher.Older() {
		if d, err := s.hasher.SumVersion(key, v); err == nil {
			if pos, _ := s.peek(d); pos {
				return true, false
			}
		}
	}
	return false, negative
}

// used reports a decision about a known key to Options.Used.
func (s *Service) used(id string, at time.Time, o apikey.Outcome) {
	if s.opt.Used != nil {
		s.opt.Used(id, at, o)
	}
}

// lookup hashes the key under the current pepper, then under older versions.
//
// During a pepper rotation a key moves from an older digest to the current one
// (Rehash, by this replica or another). A negative cache entry for the current
// digest written before the move would hide the key once the older digest is
// gone, until that entry expires; the move evicts it on every replica, but a
// Check can fall between the store write and the eviction. So when the current
// digest was answered from a negative entry and the store itself has just said
// it no longer knows an older one, the current digest is read from the store again.
func (s *Service) lookup(ctx context.Context, key string) (apikey.Key, error) {
	cur := s.hasher.Sum(key)
	k, err := s.keys.Lookup(ctx, cur)
	if !errors.Is(err, apikey.ErrNotFound) {
		return k, err
	}
	curCached, olderGone := err == apikey.ErrNotFoundCached, false
	for _, v := range s.hasher.Older() {
		d, herr := s.hasher.SumVersion(key, v)
		if herr != nil {
			return apikey.Key{}, herr
		}
		k, err = s.keys.Lookup(ctx, d)
		if err == nil && s.opt.Rehash != nil {
			s.opt.Rehash(d, key)
		}
		if !errors.Is(err, apikey.ErrNotFound) {
			return k, err
		}
		olderGone = olderGone || err != apikey.ErrNotFoundCached
	}
	if curCached && olderGone && s.evict != nil {
		s.evict(cur.Sum)
		return s.keys.Lookup(ctx, cur)
	}
	return k, err
}

// rate is the key's rate: its own, else its workspace record's, else the
// config's for its workspace, else the default.
func (s *Service) rate(k *apikey.Key) apikey.Rate {
	if !k.RateLimit.IsZero() {
		return k.RateLimit
	}
	if !k.Space.RateLimit.IsZero() {
		return k.Space.RateLimit
	}
	if r, ok := s.opt.WorkspaceRate[k.Workspace]; ok && !r.IsZero() {
		return r
	}
	return s.opt.DefaultRate
}
