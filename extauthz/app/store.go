package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	neturl "net/url"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/file"
	"github.com/keyauthz/keyauthz/extauthz/store/postgres"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
)

// ErrNoStore is the error of the commands that must not create a store
// (all but serve and migrate) when the configured store does not exist yet.
var ErrNoStore = errors.New("no key store")

// noStore is ErrNoStore for url, with what to do about it.
func noStore(url, fix string) error {
	return fmt.Errorf("%w at %s; %s", ErrNoStore, config.RedactURL(url), fix)
}

// openStore opens the store a URL names: sqlite://, file:// or postgres://,
// creating a SQLite file or a PostgreSQL schema that does not exist yet. On
// error the store is a nil interface (never a nil *Store inside one).
func openStore(ctx context.Context, cfg *config.Config, log *zap.Logger) (apikey.Store, error) {
	return openStoreAs(ctx, cfg, log, false)
}

// openStoreAs is openStore; with existing set it creates nothing and a store
// that does not exist (no SQLite file, no key file, no keyauthz schema in the
// PostgreSQL database) is an error wrapping ErrNoStore.
func openStoreAs(ctx context.Context, cfg *config.Config, log *zap.Logger, existing bool) (apikey.Store, error) {
	const migrate = "run `keyauthz migrate`"
	url := cfg.Store.URL
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		p, err := sqlitePath(url)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(p); existing && errors.Is(err, fs.ErrNotExist) {
			return nil, noStore(url, migrate)
		}
		return nonNil(sqlite.Open(ctx, p, log))
	case strings.HasPrefix(url, "file://"):
		p := strings.TrimPrefix(url, "file://")
		if p == "" {
			return nil, fmt.Errorf("store url %s: want file:///path/keys.yaml", config.RedactURL(url))
		}
		if _, err := os.Stat(p); existing && errors.Is(err, fs.ErrNotExist) {
			return nil, noStore(url, "the key file does not exist (keyauthz never writes it: see extauthz/store/file)")
		}
		return nonNil(file.Open(ctx, p, log))
	case isPostgresURL(url):
		url, err := withPassword(url, cfg.Store.Password)
		if err != nil {
			return nil, err
		}
		s, err := postgres.Open(ctx, url, log, postgres.Options{
			MaxConns: cfg.Store.MaxConns, StatementTimeout: cfg.Store.StatementTimeout,
			MigrateLockTimeout: cfg.Store.MigrateLockTimeout, Existing: existing,
		})
		if errors.Is(err, postgres.ErrNoSchema) {
			return nil, noStore(cfg.Store.URL, migrate)
		}
		return nonNil(s, err)
	}
	return nil, fmt.Errorf("store url %s: unsupported scheme", config.RedactURL(url))
}

// withPassword returns raw with the password pw names (store.password) in
// its userinfo, or raw itself when pw is zero. The result is a secret: it
// goes to the store's Open, which redacts it, and to nothing else.
func withPassword(raw string, pw config.Secret) (string, error) {
	if pw.IsZero() {
		return raw, nil
	}
	b, err := pw.Read("store.password")
	if err != nil {
		return "", err
	}
	u, err := neturl.Parse(raw)
	if err != nil { // the error quotes raw: never show it
		return "", fmt.Errorf("store url %s: not a valid URL", config.RedactURL(raw))
	}
	u.User = neturl.UserPassword(u.User.Username(), string(b))
	return u.String(), nil
}

// nonNil returns a store opener's result as an apikey.Store that is nil
// whenever err is set: a nil *sqlite.Store in a non-nil interface would pass
// every "store != nil" test and panic in Close.
func nonNil[S apikey.Store](s S, err error) (apikey.Store, error) {
	if err != nil {
		return nil, err
	}
	return s, nil
}

// leanStore is a store with a lean reader for the key cache's misses (sqlite).
type leanStore interface {
	CheckReader() apikey.Lookuper
}

var _ leanStore = (*sqlite.Store)(nil)

// cacheSource is what the key cache reads on a miss: the store's lean reader
// when it has one, else the store. The cache bounds each read by store.timeout.
func cacheSource(s apikey.Store) apikey.Lookuper {
	if r, ok := s.(leanStore); ok {
		return r.CheckReader()
	}
	return s
}
