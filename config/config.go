// Package config is keyauthz's configuration: the YAML schema, its defaults,
// strict loading and validation whose errors name the YAML path.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Config is the whole configuration file.
type Config struct {
	GRPC       GRPC                 `yaml:"grpc"`
	HTTP       HTTP                 `yaml:"http"`
	HTTPAuthz  HTTPAuthz            `yaml:"http_authz"`
	Store      Store                `yaml:"store"`
	Pepper     Pepper               `yaml:"pepper"`
	Keys       Keys                 `yaml:"keys"`
	Headers    Headers              `yaml:"headers"`
	Response   Response             `yaml:"response"`
	Cache      Cache                `yaml:"cache"`
	RateLimit  RateLimit            `yaml:"ratelimit"`
	Ownership  Ownership            `yaml:"ownership"`
	Workspaces map[string]Workspace `yaml:"workspaces"`
	Admin      Admin                `yaml:"admin"`
	Usage      Usage                `yaml:"usage"`
	Log        Log                  `yaml:"log"`
	Runtime    Runtime              `yaml:"runtime"`
	// Mode is enforce (default) or report_only: every decision computed, every
	// request allowed, would-be denials marked upstream (x-keyauthz-would-deny).
	Mode Mode `yaml:"mode"`
	// Throttle limits unknown keys per source address (off unless set).
	Throttle Throttle `yaml:"throttle"`
}

// GRPC is the ext_authz and health listener.
type GRPC struct {
	Listen        string        `yaml:"listen"`                 // host:port or unix:///path
	TLS           TLS           `yaml:"tls"`                    // optional TLS / mTLS
	DrainTimeout  time.Duration `yaml:"drain_timeout"`          // GracefulStop deadline
	MaxStreams    uint32        `yaml:"max_concurrent_streams"` // per connection (default 1024); streams beyond are refused
	KeepaliveTime time.Duration `yaml:"keepalive_time"`         // server pings idle connections
	Codec         Codec         `yaml:"codec"`                  // fast (wire decoder, default) | standard (grpc-go proto codec)
	// RequestTimeout bounds a call that is slow to arrive: a unary call (Check,
	// health Check) is answered DEADLINE_EXCEEDED when it has not been answered
	// this long after its headers (a shorter grpc-timeout from the client stays
	// in force), and a streaming call (health Watch) is cancelled when its
	// request has not arrived this long after its headers. Default 10s.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// MaxConns caps the open connections of the listener (default 4096; never
	// more than half the process's open-file limit); further clients wait in
	// the kernel's accept queue.
	MaxConns int `yaml:"max_conns"`
}

// TLS holds certificate files; ClientCA turns on mutual TLS. The files are
// re-read when they change (a Kubernetes ..data swap included) and on SIGHUP.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	ClientCA string `yaml:"client_ca_file"`
	// ClientSANs, when set, admits only client certificates carrying one of
	// these URI (spiffe://…) or DNS subject alternative names; needs ClientCA.
	ClientSANs []string `yaml:"client_sans"`
}

// HTTP is the health, metrics and admin listener.
type HTTP struct {
	Listen string `yaml:"listen"`
	TLS    TLS    `yaml:"tls"`   // optional TLS / mTLS of the admin, health and metrics port
	Pprof  bool   `yaml:"pprof"` // serve /debug/pprof (for profiling; keep off in production)
	// ReadTimeout bounds reading one request, headers and body, from the end of
	// the previous one (default 5s); a client that trickles its body is cut.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds a request from the end of its headers to the end of
	// its answer (default 30s); with pprof on, ask for profiles shorter than it.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxConns caps the open connections of the listener (default 256; never
	// more than a quarter of the process's open-file limit, so the HTTP port
	// cannot take the descriptors gRPC needs); further clients wait in the
	// kernel's accept queue.
	MaxConns int `yaml:"max_conns"`
}

// HTTPAuthz is the HTTP authorization listener: the Check decision over plain
// HTTP for nginx auth_request, Traefik forwardAuth and Envoy's ext_authz
// http_service. Off unless Listen is set.
type HTTPAuthz struct {
	Listen string `yaml:"listen"` // host:port or unix:///path; "" is off
	// PathPrefix is removed from the path of a request that does not carry
	// X-Original-URI or X-Forwarded-Uri (Envoy http_service's path_prefix);
	// a request outside it is answered 404.
	PathPrefix string `yaml:"path_prefix"`
	// ReadTimeout bounds reading one request from the end of the previous one (default 5s).
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds a request from the end of its headers to the end of its answer (default 10s).
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxConns caps the open connections of the listener (default 1024; never
	// more than a quarter of the process's open-file limit).
	MaxConns int `yaml:"max_conns"`
}

// Store selects the key store.
type Store struct {
	URL              string        `yaml:"url"`               // sqlite://, postgres://, file://
	FollowInterval   time.Duration `yaml:"follow_interval"`   // change-feed poll period
	MaxStaleness     time.Duration `yaml:"max_staleness"`     // how long cached keys serve during a store outage
	Timeout          time.Duration `yaml:"timeout"`           // per store call on the Check path
	MaxConns         int32         `yaml:"max_conns"`         // postgres pool size
	TouchInterval    time.Duration `yaml:"touch_interval"`    // older spelling of usage.flush_interval (0 = unset)
	StatementTimeout time.Duration `yaml:"statement_timeout"` // postgres statement_timeout
	// MigrateLockTimeout bounds how long a starting replica waits for the
	// schema migration lock another replica holds (postgres).
	MigrateLockTimeout time.Duration `yaml:"migrate_lock_timeout"`
	// Password, optional, is the PostgreSQL password, read at start and put
	// into the URL (which then holds none) when the store is opened.
	Password Secret `yaml:"password"`
}

// Pepper names where the HMAC peppers come from; never the pepper itself.
type Pepper struct {
	Current  int             `yaml:"current"`
	Versions []PepperVersion `yaml:"versions"`
}

// PepperVersion is one pepper, read from a file or an environment variable:
// {version: 1, file: /path} or {version: 2, env: NAME}.
type PepperVersion struct {
	Version int `yaml:"version"`
	Secret  `yaml:",inline"`
}

// Keys is the issued key format and the lifecycle limits.
type Keys struct {
	Prefix          string `yaml:"prefix"`
	MaxLength       int    `yaml:"max_length"`
	Imported        bool   `yaml:"imported"`          // accept keys of any shape
	MaxPerWorkspace int    `yaml:"max_per_workspace"` // default 10
}

// Headers says where keys are read and which identity headers go upstream.
type Headers struct {
	APIKey    []string `yaml:"api_key"`   // lower-case names tried in order
	Bearer    bool     `yaml:"bearer"`    // also read Authorization: Bearer
	KeyID     string   `yaml:"key_id"`    // upstream header with the key id
	Workspace string   `yaml:"workspace"` // upstream header with the workspace
	// Metadata names the key metadata fields forwarded upstream, each as the
	// header MetaPrefix+field (lower-case) and in the dynamic metadata; a
	// client's own copy of such a header is removed. Off (none) by default.
	Metadata []string `yaml:"metadata"`
}

// MetaPrefix starts the upstream header of a forwarded metadata field.
const MetaPrefix = "x-keyauthz-meta-"

// MaxMetaHeaders is the most metadata fields headers.metadata may forward.
const MaxMetaHeaders = 16

// Response shapes deny bodies and rate-limit headers.
type Response struct {
	Body        Body        `yaml:"body"`         // json | problem
	Realm       string      `yaml:"realm"`        // WWW-Authenticate realm
	RateHeaders RateHeaders `yaml:"rate_headers"` // legacy | ietf | both
	Reset       Reset       `yaml:"reset"`        // seconds | unix
}

// Cache sizes the key cache.
type Cache struct {
	Size         int           `yaml:"size"`
	TTL          time.Duration `yaml:"ttl"`
	NegativeSize int           `yaml:"negative_size"`
	NegativeTTL  time.Duration `yaml:"negative_ttl"`
}

// RateLimit picks the limiter and its defaults.
type RateLimit struct {
	Backend Backend       `yaml:"backend"`  // local | redis
	Default apikey.Rate   `yaml:"default"`  // 240/m
	OnError OnError       `yaml:"on_error"` // allow | deny
	Timeout time.Duration `yaml:"timeout"`  // per limiter call
	Redis   Redis         `yaml:"redis"`
}

// Redis is the shared limiter's server or cluster.
type Redis struct {
	Addrs    []string `yaml:"addrs"`
	Cluster  bool     `yaml:"cluster"`
	Password Secret   `yaml:"password"` // optional: none for a Redis without a password
	// PasswordFile and PasswordEnv are the older spelling of password:
	// {file: …} and password: {env: …}; Parse moves them into Password.
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
}

// Ownership says how a request names the resource it targets.
type Ownership struct {
	// PathTemplates are path prefixes with one or more capture segments,
	// from the top level of the resource hierarchy down, e.g.
	// "/organizations/{resource}" or
	// "/organizations/{organization}/projects/{project}/containers/{container_group}";
	// a request's resource path is the captured values joined by '/' as far
	// as the path goes. The first template that matches wins.
	PathTemplates []string `yaml:"path_templates"`
}

// Workspace holds per-workspace overrides.
type Workspace struct {
	RateLimit apikey.Rate `yaml:"rate_limit"`
	MaxKeys   int         `yaml:"max_keys"`
}

// Admin turns the admin API on when at least one token is configured.
type Admin struct {
	Tokens  []Token `yaml:"tokens"`
	MaxBody int64   `yaml:"max_body"`
}

// Token is one admin bearer token, read from a file or an environment
// variable: {name: portal, file: /path} or {name: ci, env: NAME}.
type Token struct {
	Name   string `yaml:"name"`
	Secret `yaml:",inline"`
	// Workspaces, when set, limits the token to these workspaces (403
	// elsewhere; lists show only these). Unset: every workspace.
	Workspaces []string `yaml:"workspaces"`
}

// Usage sets how per-key usage counts are kept.
type Usage struct {
	// FlushInterval is how often each replica writes the counts and last-use
	// times it summed in memory (default 60s; store.touch_interval is its older name).
	FlushInterval time.Duration `yaml:"flush_interval"`
	// Retention is how long hourly buckets are kept (default 840h, 35 days).
	Retention time.Duration `yaml:"retention"`
}

// MinRetention is the shortest usage.retention accepted.
const MinRetention = 35 * 24 * time.Hour

// Log configures zap.
type Log struct {
	Level string `yaml:"level"` // debug | info | warn | error
}

// Runtime tunes the Go garbage collector of `serve`. The GOGC and GOMEMLIMIT
// environment variables, when set, win over these.
type Runtime struct {
	// GCPercent is the heap growth, in percent of the live heap, that starts
	// the next collection (GOGC); higher means fewer collections and more memory.
	GCPercent int `yaml:"gc_percent"`
	// MemoryLimit is the Go runtime's soft memory limit (GOMEMLIMIT): "auto"
	// (MemoryLimitRatio of the container's cgroup memory limit, none when the
	// container has none), "off", or a size such as 768MiB or 1Gi.
	MemoryLimit string `yaml:"memory_limit"`
	// MemoryLimitRatio is the share of the cgroup memory limit that "auto" sets,
	// leaving the rest for memory the Go runtime does not manage (SQLite's page cache).
	MemoryLimitRatio float64 `yaml:"memory_limit_ratio"`
}

// Memory limit words of runtime.memory_limit.
const (
	MemoryLimitAuto = "auto"
	MemoryLimitOff  = "off"
)

// ParseByteSize reads a size such as 1073741824, 512MiB, 1Gi or 64KiB: a
// non-negative integer and an optional binary unit (B, KiB/Ki, MiB/Mi,
// GiB/Gi, TiB/Ti), the units GOMEMLIMIT knows; decimal units (MB, GB) and
// fractions are refused, so that 512MB cannot be read as 512 MiB.
func ParseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	unit := strings.TrimSpace(strings.TrimLeft(s, "0123456789"))
	if len(unit) == len(s) || !slices.Contains(byteUnits, unit) {
		return 0, fmt.Errorf("%q: want a size such as 768MiB or 1Gi (units B, KiB, MiB, GiB, TiB or Ki, Mi, Gi, Ti)", s)
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n > math.MaxInt64 {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return int64(n), nil
}

// byteUnits are the units ParseByteSize accepts ("" is bytes).
var byteUnits = []string{"", "B", "KiB", "Ki", "MiB", "Mi", "GiB", "Gi", "TiB", "Ti"}

// Default returns the embedded defaults: loopback listeners and sqlite ./keyauthz.db.
func Default() Config {
	return Config{
		GRPC: GRPC{Listen: "127.0.0.1:9001", DrainTimeout: 10 * time.Second, KeepaliveTime: time.Minute, Codec: CodecFast,
			MaxStreams: 1024, RequestTimeout: 10 * time.Second, MaxConns: 4096},
		HTTP:  HTTP{Listen: "127.0.0.1:9002", ReadTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, MaxConns: 256},
		Store: Store{URL: "sqlite://./keyauthz.db", FollowInterval: 500 * time.Millisecond, MaxStaleness: 5 * time.Minute, Timeout: 250 * time.Millisecond, MaxConns: 8, StatementTimeout: 2 * time.Second, MigrateLockTimeout: time.Minute},
		Keys:  Keys{Prefix: apikey.DefaultPrefix, MaxLength: apikey.DefaultMaxLen, MaxPerWorkspace: 10},
		Headers: Headers{
			APIKey:    []string{"x-api-key", "salad-api-key"},
			KeyID:     "x-keyauthz-key-id",
			Workspace: "x-keyauthz-workspace",
		},
		Response:  Response{Body: BodyJSON, Realm: "keyauthz", RateHeaders: RateHeadersBoth, Reset: ResetSeconds},
		Cache:     Cache{Size: 100_000, TTL: 5 * time.Minute, NegativeSize: 100_000, NegativeTTL: 30 * time.Second},
		HTTPAuthz: HTTPAuthz{ReadTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second, MaxConns: 1024},
		RateLimit: RateLimit{Backend: BackendLocal, Default: apikey.Rate{N: 240, Per: time.Minute}, OnError: OnErrorDeny, Timeout: 20 * time.Millisecond},
		Admin:     Admin{MaxBody: 64 << 10},
		Usage:     Usage{FlushInterval: time.Minute, Retention: MinRetention},
		Log:       Log{Level: "info"},
		Runtime:   Runtime{GCPercent: 100, MemoryLimit: MemoryLimitAuto, MemoryLimitRatio: 0.9},
		Mode:      ModeEnforce,
		Throttle:  Throttle{Sources: 100_000},
	}
}

// Load reads the YAML file at path over the defaults, strictly, and validates it.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(b)
}

// Parse decodes YAML over the defaults (unknown fields are errors) and validates.
func Parse(b []byte) (Config, error) {
	c := Default()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		if fe := locate(b); fe != nil { // one line naming the YAML path and line
			return Config{}, fe
		}
		return Config{}, fmt.Errorf("config: %w", err)
	}
	for i, h := range c.Headers.APIKey {
		c.Headers.APIKey[i] = strings.ToLower(strings.TrimSpace(h))
	}
	c.Headers.KeyID = strings.ToLower(c.Headers.KeyID)
	c.Headers.Workspace = strings.ToLower(c.Headers.Workspace)
	if c.Store.TouchInterval != 0 && c.Usage.FlushInterval == time.Minute { // the older spelling
		c.Usage.FlushInterval = c.Store.TouchInterval
	}
	if r := &c.RateLimit.Redis; r.Password.IsZero() && (r.PasswordFile == "") != (r.PasswordEnv == "") {
		r.Password = Secret{File: r.PasswordFile, Env: r.PasswordEnv} // the older spelling
		r.PasswordFile, r.PasswordEnv = "", ""
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
