// Package config is keyauthz's configuration: the YAML schema, its defaults,
// strict loading and validation whose errors name the YAML path.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// Config is the whole configuration file.
type Config struct {
	GRPC       GRPC                 `yaml:"grpc"`
	HTTP       HTTP                 `yaml:"http"`
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
	Log        Log                  `yaml:"log"`
	Runtime    Runtime              `yaml:"runtime"`
}

// GRPC is the ext_authz and health listener.
type GRPC struct {
	Listen        string        `yaml:"listen"`                 // host:port or unix:///path
	TLS           TLS           `yaml:"tls"`                    // optional TLS / mTLS
	DrainTimeout  time.Duration `yaml:"drain_timeout"`          // GracefulStop deadline
	MaxStreams    uint32        `yaml:"max_concurrent_streams"` // per connection (default 1024); streams beyond are refused
	KeepaliveTime time.Duration `yaml:"keepalive_time"`         // server pings idle connections
	Codec         string        `yaml:"codec"`                  // fast (wire decoder, default) | standard (grpc-go proto codec)
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

// TLS holds certificate files; ClientCA turns on mutual TLS.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	ClientCA string `yaml:"client_ca_file"`
}

// HTTP is the health, metrics and admin listener.
type HTTP struct {
	Listen string `yaml:"listen"`
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

// Store selects the key store.
type Store struct {
	URL              string        `yaml:"url"`               // sqlite://, postgres://, file://
	FollowInterval   time.Duration `yaml:"follow_interval"`   // change-feed poll period
	MaxStaleness     time.Duration `yaml:"max_staleness"`     // how long cached keys serve during a store outage
	Timeout          time.Duration `yaml:"timeout"`           // per store call on the Check path
	MaxConns         int32         `yaml:"max_conns"`         // postgres pool size
	TouchInterval    time.Duration `yaml:"touch_interval"`    // last_used_at flush period
	StatementTimeout time.Duration `yaml:"statement_timeout"` // postgres statement_timeout
	// MigrateLockTimeout bounds how long a starting replica waits for the
	// schema migration lock another replica holds (postgres).
	MigrateLockTimeout time.Duration `yaml:"migrate_lock_timeout"`
}

// Pepper names where the HMAC peppers come from; never the pepper itself.
type Pepper struct {
	Current  int             `yaml:"current"`
	Versions []PepperVersion `yaml:"versions"`
}

// PepperVersion is one pepper, read from a file or an environment variable.
type PepperVersion struct {
	Version int    `yaml:"version"`
	File    string `yaml:"file"`
	Env     string `yaml:"env"`
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
}

// Response shapes deny bodies and rate-limit headers.
type Response struct {
	Body       string `yaml:"body"`         // json | problem
	Realm      string `yaml:"realm"`        // WWW-Authenticate realm
	RateHeader string `yaml:"rate_headers"` // legacy | ietf | both
	Reset      string `yaml:"reset"`        // seconds | unix
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
	Backend string        `yaml:"backend"`  // local | redis
	Default apikey.Rate   `yaml:"default"`  // 240/m
	OnError string        `yaml:"on_error"` // allow | deny
	Timeout time.Duration `yaml:"timeout"`  // per limiter call
	Redis   Redis         `yaml:"redis"`
}

// Redis is the shared limiter's server or cluster.
type Redis struct {
	Addrs        []string `yaml:"addrs"`
	Cluster      bool     `yaml:"cluster"`
	PasswordFile string   `yaml:"password_file"`
	PasswordEnv  string   `yaml:"password_env"`
}

// Ownership says how a request names the resource it targets.
type Ownership struct {
	// PathTemplates are path prefixes with one {resource} segment,
	// e.g. "/organizations/{resource}"; the first that matches wins.
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

// Token is one admin bearer token, read from a file or an environment variable.
type Token struct {
	Name string `yaml:"name"`
	File string `yaml:"file"`
	Env  string `yaml:"env"`
}

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
// GiB/Gi, TiB/Ti).
func ParseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%q: want a size such as 768MiB or 1Gi", s)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	var shift uint
	switch strings.TrimSpace(s[i:]) {
	case "", "B":
	case "KiB", "Ki":
		shift = 10
	case "MiB", "Mi":
		shift = 20
	case "GiB", "Gi":
		shift = 30
	case "TiB", "Ti":
		shift = 40
	default:
		return 0, fmt.Errorf("%q: unit %q: want B, KiB, MiB, GiB or TiB (Ki, Mi, Gi, Ti)", s, s[i:])
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return n << shift, nil
}

// Default returns the embedded defaults: loopback listeners and sqlite ./keyauthz.db.
func Default() Config {
	return Config{
		GRPC: GRPC{Listen: "127.0.0.1:9001", DrainTimeout: 10 * time.Second, KeepaliveTime: time.Minute, Codec: "fast",
			MaxStreams: 1024, RequestTimeout: 10 * time.Second, MaxConns: 4096},
		HTTP:  HTTP{Listen: "127.0.0.1:9002", ReadTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, MaxConns: 256},
		Store: Store{URL: "sqlite://./keyauthz.db", FollowInterval: 500 * time.Millisecond, MaxStaleness: 5 * time.Minute, Timeout: 250 * time.Millisecond, MaxConns: 8, TouchInterval: time.Minute, StatementTimeout: 2 * time.Second, MigrateLockTimeout: time.Minute},
		Keys:  Keys{Prefix: apikey.DefaultPrefix, MaxLength: apikey.DefaultMaxLen, MaxPerWorkspace: 10},
		Headers: Headers{
			APIKey:    []string{"x-api-key", "salad-api-key"},
			KeyID:     "x-keyauthz-key-id",
			Workspace: "x-keyauthz-workspace",
		},
		Response:  Response{Body: "json", Realm: "keyauthz", RateHeader: "both", Reset: "seconds"},
		Cache:     Cache{Size: 100_000, TTL: 5 * time.Minute, NegativeSize: 100_000, NegativeTTL: 30 * time.Second},
		RateLimit: RateLimit{Backend: "local", Default: apikey.Rate{N: 240, Per: time.Minute}, OnError: "deny", Timeout: 20 * time.Millisecond},
		Admin:     Admin{MaxBody: 64 << 10},
		Log:       Log{Level: "info"},
		Runtime:   Runtime{GCPercent: 100, MemoryLimit: MemoryLimitAuto, MemoryLimitRatio: 0.9},
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
		return Config{}, fmt.Errorf("config: %w", err)
	}
	for i, h := range c.Headers.APIKey {
		c.Headers.APIKey[i] = strings.ToLower(strings.TrimSpace(h))
	}
	c.Headers.KeyID = strings.ToLower(c.Headers.KeyID)
	c.Headers.Workspace = strings.ToLower(c.Headers.Workspace)
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// minMemoryLimit is the smallest runtime.memory_limit accepted.
const minMemoryLimit = 16 << 20

// FieldError is a validation failure at a YAML path.
type FieldError struct {
	Path string // e.g. "ratelimit.on_error"
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// Validate checks the configuration; every error names its YAML path.
func (c *Config) Validate() error {
	var errs []error
	bad := func(path, format string, a ...any) {
		errs = append(errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, a...)})
	}
	if err := checkListen(c.GRPC.Listen, true); err != nil {
		bad("grpc.listen", "%v", err)
	}
	if (c.GRPC.TLS.CertFile == "") != (c.GRPC.TLS.KeyFile == "") {
		bad("grpc.tls", "cert_file and key_file go together")
	}
	if c.GRPC.TLS.ClientCA != "" && c.GRPC.TLS.CertFile == "" {
		bad("grpc.tls.client_ca_file", "needs cert_file and key_file")
	}
	if c.GRPC.DrainTimeout <= 0 {
		bad("grpc.drain_timeout", "must be positive")
	}
	if err := checkListen(c.HTTP.Listen, false); err != nil {
		bad("http.listen", "%v", err)
	}
	c.validateLimits(bad)
	_, redactable := URLSecrets(c.Store.URL)
	if u, err := url.Parse(c.Store.URL); err != nil || strings.Contains(c.Store.URL, "://") && !redactable { // err quotes the URL: never show it
		bad("store.url", "%s is not a valid URL (percent-encode reserved characters such as @ : / ? # in the password)", RedactURL(c.Store.URL))
	} else {
		switch u.Scheme {
		case "sqlite", "postgres", "postgresql", "file":
		default:
			bad("store.url", "scheme %q: want sqlite://, postgres:// or file://", u.Scheme)
		}
	}
	for path, d := range map[string]time.Duration{
		"store.follow_interval": c.Store.FollowInterval, "store.timeout": c.Store.Timeout,
		"store.touch_interval": c.Store.TouchInterval, "store.max_staleness": c.Store.MaxStaleness,
		"cache.ttl": c.Cache.TTL, "cache.negative_ttl": c.Cache.NegativeTTL, "ratelimit.timeout": c.RateLimit.Timeout,
		"store.migrate_lock_timeout": c.Store.MigrateLockTimeout,
	} {
		if d <= 0 {
			bad(path, "must be a positive duration")
		}
	}
	seen := map[int]bool{}
	for i, v := range c.Pepper.Versions {
		p := fmt.Sprintf("pepper.versions[%d]", i)
		if v.Version <= 0 {
			bad(p+".version", "must be a positive integer")
		}
		if seen[v.Version] {
			bad(p+".version", "version %d appears twice", v.Version)
		}
		seen[v.Version] = true
		if (v.File == "") == (v.Env == "") {
			bad(p, "set exactly one of file or env")
		}
	}
	if len(c.Pepper.Versions) > 0 && !seen[c.Pepper.Current] {
		bad("pepper.current", "version %d is not among pepper.versions", c.Pepper.Current)
	}
	if _, err := apikey.NewFormat(c.Keys.Prefix, c.Keys.MaxLength, c.Keys.Imported); err != nil {
		bad("keys.prefix", "%v", err)
	}
	if c.Keys.MaxPerWorkspace < 0 {
		bad("keys.max_per_workspace", "must not be negative")
	}
	if len(c.Headers.APIKey) == 0 && !c.Headers.Bearer {
		bad("headers.api_key", "name at least one header or enable headers.bearer")
	}
	for i, h := range append(c.Headers.APIKey, c.Headers.KeyID, c.Headers.Workspace) {
		if !validHeader(h) {
			p := fmt.Sprintf("headers.api_key[%d]", i)
			if i == len(c.Headers.APIKey) {
				p = "headers.key_id"
			} else if i > len(c.Headers.APIKey) {
				p = "headers.workspace"
			}
			bad(p, "%q is not a valid header name", h)
		}
	}
	oneOf := func(path, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		bad(path, "%q: want one of %s", v, strings.Join(allowed, ", "))
	}
	oneOf("grpc.codec", c.GRPC.Codec, "fast", "standard")
	oneOf("response.body", c.Response.Body, "json", "problem")
	oneOf("response.rate_headers", c.Response.RateHeader, "legacy", "ietf", "both")
	oneOf("response.reset", c.Response.Reset, "seconds", "unix")
	if strings.ContainsAny(c.Response.Realm, "\"\\\r\n") {
		bad("response.realm", "must not contain quotes, backslashes or newlines")
	}
	if c.Cache.Size <= 0 {
		bad("cache.size", "must be positive")
	}
	if c.Cache.NegativeSize <= 0 {
		bad("cache.negative_size", "must be positive")
	}
	oneOf("ratelimit.backend", c.RateLimit.Backend, "local", "redis")
	oneOf("ratelimit.on_error", c.RateLimit.OnError, "allow", "deny")
	if c.RateLimit.Default.IsZero() {
		bad("ratelimit.default", "required: a rate such as 240/m")
	} else if err := c.RateLimit.Default.Check(); err != nil {
		bad("ratelimit.default", "%v", err)
	}
	if c.RateLimit.Backend == "redis" && len(c.RateLimit.Redis.Addrs) == 0 {
		bad("ratelimit.redis.addrs", "required when ratelimit.backend is redis")
	}
	if c.RateLimit.Redis.PasswordFile != "" && c.RateLimit.Redis.PasswordEnv != "" {
		bad("ratelimit.redis.password_env", "set at most one of ratelimit.redis.password_file and ratelimit.redis.password_env")
	}
	for i, t := range c.Ownership.PathTemplates {
		if err := checkTemplate(t); err != nil {
			bad(fmt.Sprintf("ownership.path_templates[%d]", i), "%v", err)
		}
	}
	for name, w := range c.Workspaces {
		if !apikey.ValidName(name) {
			bad("workspaces", "every workspace id %s", apikey.IDRule)
		}
		if w.MaxKeys < 0 {
			bad("workspaces."+name+".max_keys", "must not be negative")
		}
		if err := w.RateLimit.Check(); err != nil {
			bad("workspaces."+name+".rate_limit", "%v", err)
		}
	}
	names := map[string]bool{}
	for i, t := range c.Admin.Tokens {
		p := fmt.Sprintf("admin.tokens[%d]", i)
		if t.Name == "" {
			bad(p+".name", "required")
		}
		if names[t.Name] {
			bad(p+".name", "%q appears twice", t.Name)
		}
		names[t.Name] = true
		if (t.File == "") == (t.Env == "") {
			bad(p, "set exactly one of file or env")
		}
	}
	if c.Admin.MaxBody <= 0 {
		bad("admin.max_body", "must be positive")
	}
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	if c.Runtime.GCPercent <= 0 {
		bad("runtime.gc_percent", "must be a positive percentage (GOGC=off stays possible through the environment)")
	}
	switch ml := c.Runtime.MemoryLimit; ml {
	case MemoryLimitAuto, MemoryLimitOff:
	default:
		if n, err := ParseByteSize(ml); err != nil {
			bad("runtime.memory_limit", "%v (or auto, off)", err)
		} else if n < minMemoryLimit {
			bad("runtime.memory_limit", "%q is under %d MiB: the collector would run without pause", ml, minMemoryLimit>>20)
		}
	}
	if r := c.Runtime.MemoryLimitRatio; !(r > 0 && r <= 1) {
		bad("runtime.memory_limit_ratio", "%v: want a share of the container limit in (0, 1]", r)
	}
	return errors.Join(errs...)
}

func checkListen(addr string, unixOK bool) error {
	if unixOK && strings.HasPrefix(addr, "unix://") {
		if len(addr) == len("unix://") {
			return errors.New("unix:// needs a socket path")
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q: want host:port", addr)
	}
	return nil
}

func validHeader(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// checkTemplate accepts "/seg/{resource}[/seg…]" with exactly one {resource}.
func checkTemplate(t string) error {
	if !strings.HasPrefix(t, "/") {
		return fmt.Errorf("%q: must start with /", t)
	}
	if strings.Count(t, "{resource}") != 1 {
		return fmt.Errorf("%q: must hold exactly one {resource} segment", t)
	}
	for _, seg := range strings.Split(t[1:], "/") {
		if strings.ContainsAny(seg, "{}") && seg != "{resource}" {
			return fmt.Errorf("%q: segment %q: only {resource} may be a capture", t, seg)
		}
	}
	return nil
}
