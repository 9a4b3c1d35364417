package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// FieldError is a validation failure at a YAML path.
type FieldError struct {
	Path string // e.g. "ratelimit.on_error"
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// problems collects the validation failures of a whole configuration.
type problems []error

// add records a failure at path.
func (p *problems) add(path, format string, a ...any) {
	*p = append(*p, &FieldError{Path: path, Msg: fmt.Sprintf(format, a...)})
}

// err records err unless it is nil.
func (p *problems) err(err error) {
	if err != nil {
		*p = append(*p, err)
	}
}

// positive records a failure for every duration that is not positive.
func (p *problems) positive(ds map[string]time.Duration) {
	for path, d := range ds {
		if d <= 0 {
			p.add(path, "must be a positive duration")
		}
	}
}

// Validate checks the configuration, section by section; every error names its YAML path.
func (c *Config) Validate() error {
	var p problems
	c.GRPC.validate(&p)
	c.HTTP.validate(&p)
	c.HTTPAuthz.validate(&p)
	c.Store.validate(&p)
	c.Pepper.validate(&p)
	c.Keys.validate(&p)
	c.Headers.validate(&p)
	c.Response.validate(&p)
	c.Cache.validate(&p)
	c.RateLimit.validate(&p)
	c.Ownership.validate(&p)
	validateWorkspaces(c.Workspaces, &p)
	c.Admin.validate(&p)
	c.Usage.validate(&p)
	c.Log.validate(&p)
	c.Runtime.validate(&p)
	c.validateModes(&p)
	return errors.Join(p...)
}

// maxStreamsCap is the largest grpc.max_concurrent_streams accepted: beyond it
// one connection could again hold enough waiting streams to matter.
const maxStreamsCap = 1 << 16

func (g *GRPC) validate(p *problems) {
	if err := checkListen(g.Listen, true); err != nil {
		p.add("grpc.listen", "%v", err)
	}
	g.TLS.validate(p, "grpc.tls")
	if g.DrainTimeout <= 0 {
		p.add("grpc.drain_timeout", "must be positive")
	}
	p.err(codecs.check(uint8(g.Codec)))
	if g.MaxStreams == 0 || g.MaxStreams > maxStreamsCap {
		p.add("grpc.max_concurrent_streams", "%d: want 1 to %d streams per connection", g.MaxStreams, maxStreamsCap)
	}
	if g.MaxConns <= 0 {
		p.add("grpc.max_conns", "must be a positive number of connections")
	}
	p.positive(map[string]time.Duration{"grpc.request_timeout": g.RequestTimeout})
}

func (h *HTTP) validate(p *problems) {
	if err := checkListen(h.Listen, false); err != nil {
		p.add("http.listen", "%v", err)
	}
	h.TLS.validate(p, "http.tls")
	if h.MaxConns <= 0 {
		p.add("http.max_conns", "must be a positive number of connections")
	}
	p.positive(map[string]time.Duration{"http.read_timeout": h.ReadTimeout, "http.write_timeout": h.WriteTimeout})
}

func (h *HTTPAuthz) validate(p *problems) {
	if h.Listen != "" {
		if err := checkListen(h.Listen, true); err != nil {
			p.add("http_authz.listen", "%v", err)
		}
	}
	if pp := h.PathPrefix; pp != "" && (!strings.HasPrefix(pp, "/") || strings.HasSuffix(pp, "/") || strings.ContainsAny(pp, "?#%")) {
		p.add("http_authz.path_prefix", "%q: want a path such as /authz (starting with /, no trailing /, no ? # %%)", pp)
	}
	if h.MaxConns <= 0 {
		p.add("http_authz.max_conns", "must be a positive number of connections")
	}
	p.positive(map[string]time.Duration{"http_authz.read_timeout": h.ReadTimeout, "http_authz.write_timeout": h.WriteTimeout})
}

func (s *Store) validate(p *problems) {
	secrets, redactable := URLSecrets(s.URL)
	u, err := url.Parse(s.URL)
	if err != nil || strings.Contains(s.URL, "://") && !redactable { // err quotes the URL: never show it
		p.add("store.url", "%s is not a valid URL (percent-encode reserved characters such as @ : / ? # in the password)", RedactURL(s.URL))
	} else {
		switch u.Scheme {
		case "sqlite", "file":
			if rest, ok := strings.CutPrefix(s.URL, u.Scheme+"://"); !ok || rest == "" {
				p.add("store.url", "%s: want a file path, e.g. %s", RedactURL(s.URL), map[string]string{
					"sqlite": "sqlite:///var/lib/keyauthz/keys.db or sqlite://./keyauthz.db",
					"file":   "file:///etc/keyauthz/keys.yaml"}[u.Scheme])
			}
		case "postgres", "postgresql":
		default:
			p.add("store.url", "scheme %q: want sqlite://, postgres:// or file://", u.Scheme)
		}
	}
	p.positive(map[string]time.Duration{
		"store.follow_interval": s.FollowInterval, "store.timeout": s.Timeout,
		"store.max_staleness":        s.MaxStaleness,
		"store.migrate_lock_timeout": s.MigrateLockTimeout,
	})
	p.err(s.Password.check("store.password", true))
	if !s.Password.IsZero() {
		if err != nil || u.Scheme != "postgres" && u.Scheme != "postgresql" {
			p.add("store.password", "only a postgres:// store takes a password")
		} else if len(secrets) > 0 {
			p.add("store.password", "store.url holds a password already: set it in one place")
		}
	}
}

func (pp *Pepper) validate(p *problems) {
	seen := map[int]bool{}
	for i, v := range pp.Versions {
		path := fmt.Sprintf("pepper.versions[%d]", i)
		if v.Version <= 0 {
			p.add(path+".version", "must be a positive integer")
		}
		if seen[v.Version] {
			p.add(path+".version", "version %d appears twice", v.Version)
		}
		seen[v.Version] = true
		p.err(v.check(path, false))
	}
	if len(pp.Versions) > 0 && !seen[pp.Current] {
		p.add("pepper.current", "version %d is not among pepper.versions", pp.Current)
	}
}

func (k *Keys) validate(p *problems) {
	if _, err := apikey.NewFormat(k.Prefix, k.MaxLength, k.Imported); err != nil {
		p.add("keys.prefix", "%v", err)
	}
	if k.MaxPerWorkspace < 0 {
		p.add("keys.max_per_workspace", "must not be negative")
	}
}

func (h *Headers) validate(p *problems) {
	if len(h.APIKey) == 0 && !h.Bearer {
		p.add("headers.api_key", "name at least one header or enable headers.bearer")
	}
	for i, name := range h.APIKey {
		if !validHeader(name) {
			p.add(fmt.Sprintf("headers.api_key[%d]", i), "%q is not a valid header name", name)
		}
	}
	if !validHeader(h.KeyID) {
		p.add("headers.key_id", "%q is not a valid header name", h.KeyID)
	}
	if len(h.Metadata) > MaxMetaHeaders {
		p.add("headers.metadata", "at most %d fields", MaxMetaHeaders)
	}
	seen := map[string]bool{}
	for i, f := range h.Metadata {
		if !validMetaField(f) {
			p.add(fmt.Sprintf("headers.metadata[%d]", i), "must be 1-64 ASCII letters, digits, '-' or '_', starting with a letter or digit")
		} else if lf := strings.ToLower(f); seen[lf] {
			p.add(fmt.Sprintf("headers.metadata[%d]", i), "%q appears twice (header names ignore case)", f)
		} else {
			seen[lf] = true
		}
	}
	if !validHeader(h.Workspace) {
		p.add("headers.workspace", "%q is not a valid header name", h.Workspace)
	}
}

func (r *Response) validate(p *problems) {
	p.err(bodies.check(uint8(r.Body)))
	p.err(rateHeaders.check(uint8(r.RateHeaders)))
	p.err(resets.check(uint8(r.Reset)))
	if r.Realm == "" {
		p.add("response.realm", "required: the WWW-Authenticate realm")
	}
	if strings.ContainsAny(r.Realm, "\"\\\r\n") {
		p.add("response.realm", "must not contain quotes, backslashes or newlines")
	}
}

func (c *Cache) validate(p *problems) {
	if c.Size <= 0 {
		p.add("cache.size", "must be positive")
	}
	if c.NegativeSize <= 0 {
		p.add("cache.negative_size", "must be positive")
	}
	p.positive(map[string]time.Duration{"cache.ttl": c.TTL, "cache.negative_ttl": c.NegativeTTL})
}

func (r *RateLimit) validate(p *problems) {
	p.err(backends.check(uint8(r.Backend)))
	p.err(onErrors.check(uint8(r.OnError)))
	if r.Default.IsZero() {
		p.add("ratelimit.default", "required: a rate such as 240/m")
	} else if err := r.Default.Check(); err != nil {
		p.add("ratelimit.default", "%v", err)
	}
	p.positive(map[string]time.Duration{"ratelimit.timeout": r.Timeout})
	if r.Backend == BackendRedis && len(r.Redis.Addrs) == 0 {
		p.add("ratelimit.redis.addrs", "required when ratelimit.backend is redis")
	}
	p.err(r.Redis.Password.check("ratelimit.redis.password", true))
	// Parse moves a lone password_file or password_env into password; what is
	// left names the password twice.
	if r.Redis.PasswordFile != "" || r.Redis.PasswordEnv != "" {
		p.add("ratelimit.redis.password_env", "set at most one of ratelimit.redis.password, ratelimit.redis.password_file and ratelimit.redis.password_env")
	}
}

func (o *Ownership) validate(p *problems) {
	for i, t := range o.PathTemplates {
		if err := checkTemplate(t); err != nil {
			p.add(fmt.Sprintf("ownership.path_templates[%d]", i), "%v", err)
		}
	}
}

func validateWorkspaces(ws map[string]Workspace, p *problems) {
	for name, w := range ws {
		if !apikey.ValidName(name) {
			p.add("workspaces", "every workspace id %s", apikey.IDRule)
		}
		if w.MaxKeys < 0 {
			p.add("workspaces."+name+".max_keys", "must not be negative")
		}
		if err := w.RateLimit.Check(); err != nil {
			p.add("workspaces."+name+".rate_limit", "%v", err)
		}
	}
}

func (a *Admin) validate(p *problems) {
	names := map[string]bool{}
	for i, t := range a.Tokens {
		path := fmt.Sprintf("admin.tokens[%d]", i)
		if t.Name == "" {
			p.add(path+".name", "required")
		}
		if names[t.Name] {
			p.add(path+".name", "%q appears twice", t.Name)
		}
		names[t.Name] = true
		p.err(t.check(path, false))
		if t.Workspaces != nil && len(t.Workspaces) == 0 {
			p.add(path+".workspaces", "name at least one workspace, or leave the field out for every workspace")
		}
		for j, ws := range t.Workspaces {
			if !apikey.ValidName(ws) {
				p.add(fmt.Sprintf("%s.workspaces[%d]", path, j), "%s", apikey.IDRule)
			}
		}
	}
	if a.MaxBody <= 0 {
		p.add("admin.max_body", "must be positive")
	}
}

func (u *Usage) validate(p *problems) {
	if u.FlushInterval < time.Second || u.FlushInterval > time.Hour {
		p.add("usage.flush_interval", "must be between 1s and 1h")
	}
	if u.Retention < MinRetention {
		p.add("usage.retention", "must be at least %v (35 days)", MinRetention)
	}
}

func (l *Log) validate(p *problems) {
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level", "%q: want one of debug, info, warn, error", l.Level)
	}
}

// minMemoryLimit is the smallest runtime.memory_limit accepted.
const minMemoryLimit = 16 << 20

func (r *Runtime) validate(p *problems) {
	if r.GCPercent <= 0 {
		p.add("runtime.gc_percent", "must be a positive percentage (GOGC=off stays possible through the environment)")
	}
	switch ml := r.MemoryLimit; ml {
	case MemoryLimitAuto, MemoryLimitOff:
	default:
		if n, err := ParseByteSize(ml); err != nil {
			p.add("runtime.memory_limit", "%v (or auto, off)", err)
		} else if n < minMemoryLimit {
			p.add("runtime.memory_limit", "%q is under %d MiB: the collector would run without pause", ml, minMemoryLimit>>20)
		}
	}
	if ratio := r.MemoryLimitRatio; !(ratio > 0 && ratio <= 1) {
		p.add("runtime.memory_limit_ratio", "%v: want a share of the container limit in (0, 1]", ratio)
	}
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
	names := map[string]bool{}
	for _, seg := range strings.Split(t[1:], "/") {
		name, ok := Capture(seg)
		switch {
		case ok && names[name]:
			return fmt.Errorf("%q: capture {%s} appears twice", t, name)
		case ok:
			names[name] = true
		case strings.ContainsAny(seg, "{}"):
			return fmt.Errorf("%q: segment %q: a capture is a whole segment {name} (letters, digits, '_')", t, seg)
		}
	}
	switch {
	case len(names) == 0:
		return fmt.Errorf("%q: must hold at least one capture segment such as {resource}", t)
	case len(names) > apikey.MaxLevels:
		return fmt.Errorf("%q: at most %d capture segments", t, apikey.MaxLevels)
	}
	return nil
}

// Capture returns the name of a path template's capture segment ("{project}"
// → "project") and whether seg is one.
func Capture(seg string) (string, bool) {
	if len(seg) < 3 || seg[0] != '{' || seg[len(seg)-1] != '}' {
		return "", false
	}
	name := seg[1 : len(seg)-1]
	for i := 0; i < len(name); i++ {
		if c := name[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return "", false
		}
	}
	return name, true
}

// validMetaField reports whether f can be a forwarded metadata field (and so part of a header name).
func validMetaField(f string) bool {
	if f == "" || len(f) > 64 {
		return false
	}
	for i := 0; i < len(f); i++ {
		c := f[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || i > 0 && (c == '-' || c == '_')) {
			return false
		}
	}
	return true
}
