package app

import (
	"context"
	"errors"
	"fmt"
	"os/signal"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// This file is what the command line (extauthz/cli) uses besides New and Run:
// the CLI parses flags and loads the config; app builds and runs components.

// Serve applies the Go runtime settings cfg names, builds the App and runs it,
// reloading on SIGHUP (App.Reload),
// until ctx is done. ctx ending while the App starts (SIGTERM during startup,
// e.g. while PostgreSQL is retried) is a clean stop: Serve returns nil.
func Serve(ctx context.Context, cfg config.Config, log *zap.Logger, opt Options) error {
	applyRuntime(cfg.Runtime, log)
	hup := notifyHUP() // from now on SIGHUP reloads (once serving), never kills
	defer signal.Stop(hup)
	a, err := New(ctx, cfg, log, opt)
	if err != nil && ctx.Err() != nil {
		log.Info("stopped while starting", zap.NamedError("interrupted", err))
		return nil
	}
	if err != nil {
		return err
	}
	return a.runReloading(ctx, hup, opt.Reload)
}

// OpenStore opens the store cfg names once (no retry), creating it or applying
// pending schema migrations; the caller closes it. The error names the store
// URL, redacted.
func OpenStore(ctx context.Context, cfg config.Config, log *zap.Logger) (apikey.Store, error) {
	s, err := openStore(ctx, &cfg, log.Named("store"))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", config.RedactURL(cfg.Store.URL), err)
	}
	return s, nil
}

// Migrate is the migrate command: after checking what the config says about
// peppers, it opens (creating it if needed) the store cfg names, applying
// pending schema migrations, creates the embedded default's pepper file when
// the store holds no keys (opt.Embedded), checks the pepper versions against
// the store's keys as serve does, and closes the store.
func Migrate(ctx context.Context, cfg config.Config, log *zap.Logger, opt Options) error {
	if _, err := usesDefaultPepper(&cfg, opt.Embedded); err != nil {
		return err
	}
	if err := readPeppersFirst(&cfg); err != nil {
		return err
	}
	s, err := OpenStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	_, err = storeHasher(ctx, &cfg, opt.Embedded, true, true, s, log)
	return errors.Join(err, s.Close())
}

// NewManager builds the key Manager the admin API would use (same key format,
// peppers and per-workspace limits) over opt.Store or, when that is nil, the
// store cfg names, which must exist: NewManager creates no store and no
// pepper file (a missing store is an error wrapping ErrNoStore; serve and
// migrate create them). With opt.CheckPeppers, keys under a pepper version
// the config lacks are an error, as at serve's start. opt.Embedded is as for
// New and opt.Registry is not used. The caller closes m.Store().
func NewManager(ctx context.Context, cfg config.Config, log *zap.Logger, opt Options) (*apikey.Manager, error) {
	f, err := apikey.NewFormat(cfg.Keys.Prefix, cfg.Keys.MaxLength, cfg.Keys.Imported)
	if err != nil {
		return nil, &config.FieldError{Path: "keys.prefix", Msg: err.Error()}
	}
	if _, err := usesDefaultPepper(&cfg, opt.Embedded); err != nil {
		return nil, err
	}
	if err := readPeppersFirst(&cfg); err != nil {
		return nil, err
	}
	s := opt.Store
	if s == nil {
		if s, err = openStoreAs(ctx, &cfg, log.Named("store"), true); err != nil {
			if errors.Is(err, ErrNoStore) {
				return nil, err
			}
			return nil, fmt.Errorf("open store %s: %w", config.RedactURL(cfg.Store.URL), err)
		}
	}
	m, err := func() (*apikey.Manager, error) {
		h, err := storeHasher(ctx, &cfg, opt.Embedded, false, opt.CheckPeppers, s, log)
		if err != nil {
			return nil, err
		}
		return apikey.NewManager(s, f, h, maxKeys(&cfg))
	}()
	if err != nil {
		if opt.Store == nil {
			s.Close()
		}
		return nil, err
	}
	return m, nil
}

// readPeppersFirst reads the configured pepper versions (not the embedded
// default's file), so that a bad one is reported before any store is opened.
func readPeppersFirst(cfg *config.Config) error {
	if len(cfg.Pepper.Versions) == 0 {
		return nil
	}
	_, err := loadPeppers(cfg, false, false, zap.NewNop()) // storeHasher reads them again, with warnings
	return err
}

// maxKeys returns the per-workspace key limit function the config describes.
func maxKeys(cfg *config.Config) func(string) int {
	return func(ws string) int {
		if w, ok := cfg.Workspaces[ws]; ok && w.MaxKeys > 0 {
			return w.MaxKeys
		}
		return cfg.Keys.MaxPerWorkspace
	}
}
