package app

import (
	"context"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/store/file"
	"github.com/keyauthz/keyauthz/extauthz/store/postgres"
	"github.com/keyauthz/keyauthz/extauthz/store/sqlite"
)

// openStore opens the store a URL names: sqlite://, file:// or postgres://.
func openStore(ctx context.Context, cfg *config.Config, log *zap.Logger) (apikey.Store, error) {
	url := cfg.Store.URL
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		p, err := sqlitePath(url)
		if err != nil {
			return nil, err
		}
		return sqlite.Open(ctx, p, log)
	case strings.HasPrefix(url, "file://"):
		p := strings.TrimPrefix(url, "file://")
		if p == "" {
			return nil, fmt.Errorf("store url %q: want file:///path/keys.yaml", url)
		}
		return file.Open(ctx, p, log)
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return postgres.Open(ctx, url, log, postgres.Options{MaxConns: cfg.Store.MaxConns, StatementTimeout: cfg.Store.StatementTimeout})
	}
	return nil, fmt.Errorf("store url: unsupported scheme in %q", redactURL(url))
}

// redactURL drops credentials from a URL before it is logged or returned.
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		if slash := strings.IndexByte(rest, '/'); slash < 0 || at < slash {
			rest = "xxxxx@" + rest[at+1:]
		}
	}
	return scheme + "://" + rest
}

// checkReaderer is a store with a lean reader for the key cache (sqlite).
type checkReaderer interface {
	CheckReader() apikey.Lookuper
}

var _ checkReaderer = (*sqlite.Store)(nil)

// cacheSource is what the key cache reads on a miss: the store's lean reader
// when it has one, else the store. The cache bounds each read by store.timeout.
func cacheSource(s apikey.Store) apikey.Lookuper {
	if r, ok := s.(checkReaderer); ok {
		return r.CheckReader()
	}
	return s
}
