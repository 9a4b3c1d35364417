package extauthz

import (
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// ExtMode is the context extension setting a route's mode, overriding
// Options.ReportOnly: "report_only" or "enforce". Any other value enforces
// (a typo must not open a route).
const ExtMode = "keyauthz_mode"

// Values of ExtMode.
const (
	ModeEnforce    = "enforce"
	ModeReportOnly = "report_only"
)

// WouldDenyHeader is the upstream header of a report-only allow that enforce
// mode would have denied; its value is the deny's HTTP status (400, 401, 403,
// 429 or 503). A client's own copy is removed from every report-only allow.
const WouldDenyHeader = "x-keyauthz-would-deny"

// wouldDeny is the status a report-only allow stands in for.
type wouldDeny uint8

const (
	wd400 wouldDeny = iota // conflicting keys
	wd401                  // missing, malformed, unknown or invalid key
	wd403                  // resource not owned
	wd429                  // over the key's rate, or a throttled source
	wd503                  // store or limiter unavailable
	nWouldDeny
)

var wouldDenyCodes = [nWouldDeny]int{wd400: 400, wd401: 401, wd403: 403, wd429: 429, wd503: 503}

// reportAnswers are the parts of report-only allows, built once and shared.
type reportAnswers struct {
	mark   [nWouldDeny]*corev3.HeaderValueOption // WouldDenyHeader: status
	anon   [nWouldDeny]*authv3.CheckResponse     // allow without identity, marked: the request had no valid key
	remove []string                              // Service.remove and WouldDenyHeader: an unmarked allow
	noMeta []string                              // Service.noMeta and WouldDenyHeader
	logs   logLimit
}

// newReportAnswers builds s's report-only answers (after s.remove and s.noMeta).
func newReportAnswers(s *Service) *reportAnswers {
	r := &reportAnswers{remove: append(slices.Clip(s.remove), WouldDenyHeader)}
	if s.noMeta != nil {
		r.noMeta = append(slices.Clip(s.noMeta), WouldDenyHeader)
	}
	// An allow without identity drops the client's identity and metadata headers:
	// nothing overwrites them.
	anonRemove := append(slices.Clone(s.remove), s.opt.KeyIDHeader, s.opt.WorkspaceHeader)
	for _, f := range s.meta {
		anonRemove = append(anonRemove, f.header)
	}
	for w, code := range wouldDenyCodes {
		r.mark[w] = header(WouldDenyHeader, strconv.Itoa(code))
		r.anon[w] = &authv3.CheckResponse{Status: okStatus, HttpResponse: &authv3.CheckResponse_OkResponse{
			OkResponse: &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{r.mark[w]}, HeadersToRemove: anonRemove},
		}}
	}
	return r
}

// modeOf is the request's mode: its route's ExtMode, else the service's.
func (s *Service) modeOf(req *Request) mode {
	v, ok := req.ext.get(ExtMode)
	if !ok {
		return s.mode
	}
	if v == ModeReportOnly {
		return modeReport
	}
	return modeEnforce
}

// refuse answers a deny of a request without a valid key (reason, counted):
// resp in enforce mode, else an allow without identity marked w.
func (s *Service) refuse(md mode, reason string, resp *authv3.CheckResponse, w wouldDeny, keyID string, now time.Time) (*authv3.CheckResponse, checkResult, error) {
	s.metrics.deny(md, reason)
	if md == modeEnforce {
		return resp, resDenied, nil
	}
	s.reportDeny(w, reason, keyID, now)
	return s.ro.anon[w], resDenied, nil
}

// refuseKey is refuse for a valid key in report-only mode: an allow with the
// key's identity (and rate, when rate is set) marked w.
func (s *Service) refuseKey(a *Answer, k *apikey.Key, reason string, w wouldDeny, rate []*corev3.HeaderValueOption, now time.Time) (*authv3.CheckResponse, checkResult, error) {
	s.metrics.deny(modeReport, reason)
	s.reportDeny(w, reason, k.ID, now)
	return a.fill(s, k, rate, s.ro.mark[w], false), resDenied, nil
}

// reportDeny logs a would-be deny, at most logPerSecond a second.
func (s *Service) reportDeny(w wouldDeny, reason, keyID string, now time.Time) {
	ok, dropped := s.ro.logs.allow(now.UnixNano())
	if !ok {
		return
	}
	fields := []zap.Field{zap.Int("status", wouldDenyCodes[w]), zap.String("reason", reason)}
	if keyID != "" {
		fields = append(fields, zap.String("key_id", keyID))
	}
	if dropped > 0 {
		fields = append(fields, zap.Int64("not_logged_since", dropped))
	}
	s.log.Info("report-only: would deny", fields...)
}

// logPerSecond bounds the would-deny lines logged a second.
const logPerSecond = 10

// logLimit lets one log line through per 1/logPerSecond and counts the others.
type logLimit struct {
	next    atomic.Int64 // Unix ns before which lines are dropped
	dropped atomic.Int64
}

// allow reports whether a line at now may be logged, and how many were dropped since the last one.
func (l *logLimit) allow(now int64) (bool, int64) {
	n := l.next.Load()
	if now < n || !l.next.CompareAndSwap(n, now+int64(time.Second/logPerSecond)) {
		l.dropped.Add(1)
		return false, 0
	}
	return true, l.dropped.Swap(0)
}
