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

// openStore opens the store a URL names: sqlite://, file:// or postgres://. On
// error the store is a nil interface (never a nil *Store inside one).
func openStore(ctx context.Context, cfg *config.Config, log *zap.Logger) (apikey.Store, error) {
	url := cfg.Store.URL
	switch {
	case strings.HasPrefix(url, "sqlite://"):
		p, err := sqlitePath(url)
		if err != nil {
			return nil, err
		}
		return nonNil(sqlite.Open(ctx, p, log))
	case strings.HasPrefix(url, "file://"):
		p := strings.TrimPrefix(url, "file://")
		if p == "" {
			return nil, fmt.Errorf("store url %s: want file:///path/keys.yaml", config.RedactURL(url))
		}
		return nonNil(file.Open(ctx, p, log))
	case strings.HasPrefix(url, "postgres://"), strings.HasPrefix(url, "postgresql://"):
		return nonNil(postgres.Open(ctx, url, log, postgres.Options{
			MaxConns: cfg.Store.MaxConns, StatementTimeout: cfg.Store.StatementTimeout,
			MigrateLockTimeout: cfg.Store.MigrateLockTimeout,
		}))
	}
	return nil, fmt.Errorf("store url %s: unsupported scheme", config.RedactURL(url))
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
