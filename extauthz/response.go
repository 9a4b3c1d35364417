package extauthz

import (
	"strconv"
	"time"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/ratelimit"
)

// Deny messages, as the documented APIs word them.
const (
	MsgInvalid     = "Invalid API key"
	MsgConflict    = "Conflicting API keys"
	MsgForbidden   = "API key is not allowed to access this resource"
	MsgRateLimited = "Rate limit exceeded"
	// MsgLimiterUnavailable is the 503 answer when the rate limiter cannot
	// decide and on_error is deny: an outage, told apart from a limit.
	MsgLimiterUnavailable = "Rate limiter unavailable"
)

// unavailableRetryAfter is the Retry-After (seconds) of the limiter-outage answer.
const unavailableRetryAfter = "1"

var okStatus = &rpcstatus.Status{Code: int32(codes.OK)}

// responses holds the deny answers that never vary, built once and shared
// (protobuf messages are safe for concurrent marshalling when not mutated).
type responses struct {
	problem      bool
	unauthorized *authv3.CheckResponse
	forbidden    *authv3.CheckResponse
	conflict     *authv3.CheckResponse
	unavailable  *authv3.CheckResponse // limiter outage under on_error: deny
	limitedBody  string
	contentType  string
}

func newResponses(problem bool, realm string) responses {
	r := responses{problem: problem, contentType: "application/json"}
	if problem {
		r.contentType = "application/problem+json"
	}
	www := header("www-authenticate", `ApiKey realm="`+realm+`"`)
	r.unauthorized = r.deny(typev3.StatusCode_Unauthorized, codes.Unauthenticated, MsgInvalid, www)
	r.forbidden = r.deny(typev3.StatusCode_Forbidden, codes.PermissionDenied, MsgForbidden)
	r.conflict = r.deny(typev3.StatusCode_BadRequest, codes.InvalidArgument, MsgConflict)
	r.unavailable = r.deny(typev3.StatusCode_ServiceUnavailable, codes.Unavailable, MsgLimiterUnavailable,
		header("retry-after", unavailableRetryAfter))
	r.limitedBody = r.body(429, MsgRateLimited)
	return r
}

// body renders a deny body: {"message": …} or RFC 9457 problem details.
func (r *responses) body(code int, msg string) string {
	m := strconv.Quote(msg)
	if !r.problem {
		return `{"message":` + m + `}`
	}
	title := map[int]string{400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}[code]
	return `{"type":"about:blank","title":"` + title + `","status":` + strconv.Itoa(code) + `,"detail":` + m + `}`
}

func (r *responses) deny(code typev3.StatusCode, grpc codes.Code, msg string, extra ...*corev3.HeaderValueOption) *authv3.CheckResponse {
	hs := append([]*corev3.HeaderValueOption{header("content-type", r.contentType)}, extra...)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(grpc), Message: msg},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: code},
			Headers: hs,
			Body:    r.body(int(code), msg),
		}},
	}
}

// limited builds the 429 answer with Retry-After and the rate-limit headers.
func (r *responses) limited(d ratelimit.Decision, now time.Time, style config.RateHeaders, reset config.Reset) *authv3.CheckResponse {
	retry := ceilSeconds(d.RetryAfter)
	if retry < 1 {
		retry = 1
	}
	hs := make([]*corev3.HeaderValueOption, 0, 7)
	hs = append(hs, header("content-type", r.contentType), header("retry-after", strconv.FormatInt(retry, 10)))
	hs = rateHeaders(hs, d, now, style, reset)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.ResourceExhausted), Message: MsgRateLimited},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
			Headers: hs,
			Body:    r.limitedBody,
		}},
	}
}

func header(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// Rate-limit header names (Envoy expects lower case).
const (
	hLimit     = "x-ratelimit-limit"
	hRemaining = "x-ratelimit-remaining"
	hReset     = "x-ratelimit-reset"
	hPolicy    = "ratelimit-policy"
	hRateLimit = "ratelimit"
)

// rateBlock holds up to five rate-limit headers and their text in one value,
// so a response's rate-limit headers cost no allocation of their own.
type rateBlock struct {
	vals [5]corev3.HeaderValue
	opts [5]corev3.HeaderValueOption
	ptrs [5]*corev3.HeaderValueOption
	buf  [128]byte
}

// rateHeaders appends the legacy and/or IETF draft rate-limit headers for d to dst.
func rateHeaders(dst []*corev3.HeaderValueOption, d ratelimit.Decision, now time.Time, style config.RateHeaders, reset config.Reset) []*corev3.HeaderValueOption {
	return append(dst, new(rateBlock).build(d, now, style, reset)...)
}

// build fills the block for d and returns the header options, which point into it.
func (b *rateBlock) build(d ratelimit.Decision, now time.Time, style config.RateHeaders, resetAt config.Reset) []*corev3.HeaderValueOption {
	legacy, ietf := style != config.RateHeadersIETF, style != config.RateHeadersLegacy
	reset := ceilSeconds(d.Reset)
	buf := b.buf[:0]
	n := 0
	// add formats one header value into buf; buf's array lives in b, so the string
	// stays valid for as long as the response does. Values are short (≤ ~40 bytes
	// each, 128 in all), so append never reallocates; if it did, the string would
	// point at a copy, which is still correct.
	add := func(name string, start int) {
		v := buf[start:]
		b.vals[n].Key, b.vals[n].Value = name, unsafe.String(unsafe.SliceData(v), len(v))
		b.opts[n].Header = &b.vals[n]
		b.opts[n].AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		b.ptrs[n] = &b.opts[n]
		n++
	}
	if legacy {
		s := len(buf)
		buf = strconv.AppendInt(buf, int64(d.Limit), 10)
		add(hLimit, s)
		s = len(buf)
		buf = strconv.AppendInt(buf, int64(d.Remaining), 10)
		add(hRemaining, s)
		s = len(buf)
		if resetAt == config.ResetUnix {
			buf = strconv.AppendInt(buf, now.Unix()+reset, 10)
		} else {
			buf = strconv.AppendInt(buf, reset, 10)
		}
		add(hReset, s)
	}
	if ietf {
		s := len(buf)
		buf = append(buf, `"default";q=`...)
		buf = strconv.AppendInt(buf, int64(d.Limit), 10)
		buf = append(buf, ";w="...)
		buf = strconv.AppendInt(buf, ceilSeconds(d.Window), 10)
		add(hPolicy, s)
		s = len(buf)
		buf = append(buf, `"default";r=`...)
		buf = strconv.AppendInt(buf, int64(d.Remaining), 10)
		buf = append(buf, ";t="...)
		buf = strconv.AppendInt(buf, reset, 10)
		add(hRateLimit, s)
	}
	return b.ptrs[:n]
}

// MetadataKeyID and MetadataWorkspace are the dynamic-metadata fields set on allow.
const (
	MetadataKeyID     = "key_id"
	MetadataWorkspace = "workspace"
)
