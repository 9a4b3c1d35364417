package app

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/tlsconf"
)

// hotState is what SIGHUP may change while the App runs.
type hotState struct {
	gtls, htls *tlsconf.Source // nil when the listener is plaintext

	mu       sync.Mutex // serializes reloads
	mgr      *apikey.Manager
	adminOpt admin.Options
	admin    atomic.Pointer[admin.Handler] // the admin API serving now (nil: off)
	level    string                        // log.level in force
	lvl      *zap.AtomicLevel              // the process's log level (nil: not reloadable)
}

// adminHandler serves the admin API with the tokens in force (SIGHUP swaps them).
func (a *App) adminHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hot.admin.Load().ServeHTTP(w, r)
	})
}

// notifyHUP starts catching SIGHUP (its default action kills the process).
func notifyHUP() chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch
}

// runReloading is Run, reloading on every signal from hup (SIGHUP) with the
// configuration next returns (nil: certificates and the store only).
func (a *App) runReloading(ctx context.Context, hup <-chan os.Signal, next func() (config.Config, error)) error {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-hup:
				a.Reload(next)
			}
		}
	}()
	err := a.Run(ctx)
	close(stop)
	<-done
	return err
}

// Reload re-reads what can change without a restart and logs what it
// reloaded and what needs a restart; it never stops the App. It reloads the
// TLS certificates, keys and client CAs, the key file (file:// store), and,
// from the configuration next returns (when not nil), log.level and the
// admin tokens (their files or variables are read again). Any other changed
// section is named as needing a restart. A failure keeps what was in force.
func (a *App) Reload(next func() (config.Config, error)) {
	a.hot.mu.Lock()
	defer a.hot.mu.Unlock()
	log := a.log.Named("reload")
	var reloaded, restart, failed []string
	for _, s := range a.tlsSources() {
		name := s.Listener() + ".tls"
		switch changed, err := s.Reload(); {
		case err != nil:
			failed = append(failed, name+": "+err.Error())
		case changed:
			reloaded = append(reloaded, name+" (new certificate, serial "+s.Info().Serial.Text(16)+")")
		default:
			reloaded = append(reloaded, name+" (unchanged)")
		}
	}
	if r, ok := a.store.(interface{ Reload() }); ok {
		r.Reload()
		reloaded = append(reloaded, "store (key file)")
	}
	if next != nil {
		cfg, err := next()
		if err != nil {
			failed = append(failed, "config: "+err.Error())
		} else {
			r, f := a.reloadConfig(&cfg)
			reloaded, failed = append(reloaded, r...), append(failed, f...)
			restart = needsRestart(&a.cfg, &cfg)
		}
	}
	fields := []zap.Field{zap.Strings("reloaded", reloaded), zap.Strings("needs_restart", restart)}
	if len(failed) > 0 {
		log.Error("SIGHUP: reloaded what could be; the rest keeps its previous value",
			append(fields, zap.Strings("failed", failed))...)
		return
	}
	log.Info("SIGHUP: reloaded", fields...)
}

// reloadConfig applies log.level and the admin tokens of cfg.
func (a *App) reloadConfig(cfg *config.Config) (reloaded, failed []string) {
	if a.hot.lvl != nil {
		if lvl, err := zapcore.ParseLevel(cfg.Log.Level); err == nil {
			a.hot.lvl.SetLevel(lvl)
			if cfg.Log.Level != a.hot.level {
				reloaded = append(reloaded, fmt.Sprintf("log.level (%s → %s)", a.hot.level, cfg.Log.Level))
				a.hot.level = cfg.Log.Level
			} else {
				reloaded = append(reloaded, "log.level (unchanged)")
			}
		}
	}
	switch on := a.hot.admin.Load() != nil; {
	case on && len(cfg.Admin.Tokens) > 0:
		toks, err := adminTokens(cfg.Admin.Tokens)
		if err == nil {
			var h *admin.Handler
			if h, err = admin.New(a.hot.mgr, toks, a.hot.adminOpt, a.log.Named("admin")); err == nil {
				a.hot.admin.Store(h)
				reloaded = append(reloaded, fmt.Sprintf("admin.tokens (%d)", len(toks)))
			}
		}
		if err != nil {
			failed = append(failed, err.Error())
		}
	case on != (len(cfg.Admin.Tokens) > 0):
		failed = append(failed, "admin.tokens: turning the admin API on or off needs a restart")
	}
	return reloaded, failed
}

// needsRestart names the top-level sections (grpc, store, …) that differ
// between the running configuration and next, other than what Reload applies
// (log.level, admin.tokens).
func needsRestart(running, next *config.Config) []string {
	a, b := *running, *next
	a.Log, b.Log = config.Log{}, config.Log{}
	a.Admin.Tokens, b.Admin.Tokens = nil, nil
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []string
	for i := 0; i < va.NumField(); i++ {
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			name, _, _ := strings.Cut(va.Type().Field(i).Tag.Get("yaml"), ",")
			out = append(out, name)
		}
	}
	return out
}
