package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// PepperFile is the name of the pepper the embedded default keeps beside its database.
const PepperFile = "keyauthz.pepper"

// EmbeddedPepperVersion is the pepper version of the embedded default's
// pepper file: a config naming that file must list it as this version.
const EmbeddedPepperVersion = 1

// usesDefaultPepper reports whether cfg's peppers are the embedded default's
// file beside the SQLite database (no config file, no pepper.versions). It
// checks, without touching the disk, that the configuration allows it.
func usesDefaultPepper(cfg *config.Config, embedded bool) (bool, error) {
	if len(cfg.Pepper.Versions) > 0 {
		return false, nil
	}
	if !embedded {
		return false, &config.FieldError{Path: "pepper.versions", Msg: "required: name a pepper file or env var (at least 32 bytes)"}
	}
	if _, err := sqliteDir(cfg.Store.URL); err != nil {
		return false, &config.FieldError{Path: "pepper.versions", Msg: "required unless the store is sqlite"}
	}
	return true, nil
}

// defaultPepperPath is the embedded default's pepper file, beside the SQLite database.
func defaultPepperPath(cfg *config.Config) string {
	dir, _ := sqliteDir(cfg.Store.URL)
	return filepath.Join(dir, PepperFile)
}

// errNoPepper is loadPeppers' error, with create unset, for a missing
// embedded default pepper file.
var errNoPepper = errors.New("pepper file missing")

// peppers reads the configured pepper versions. With none configured, the embedded
// default (no config file) uses, creating it if needed, a random pepper in a 0600
// file beside the SQLite database; with a config file that is an error.
func peppers(cfg *config.Config, embedded bool, log *zap.Logger) (*apikey.Hasher, error) {
	return loadPeppers(cfg, embedded, true, log)
}

// loadPeppers is peppers; with create unset a missing embedded default
// pepper file is not created but an error wrapping errNoPepper.
func loadPeppers(cfg *config.Config, embedded, create bool, log *zap.Logger) (*apikey.Hasher, error) {
	def, err := usesDefaultPepper(cfg, embedded)
	if err != nil {
		return nil, err
	}
	if def {
		path := defaultPepperPath(cfg)
		if !create {
			if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w: %s", errNoPepper, path)
			}
		}
		p, created, err := defaultPepper(path)
		if err != nil {
			return nil, err
		}
		if created {
			log.Info("created a random pepper for the embedded default; keep it with the database", zap.String("file", path))
		}
		return apikey.NewHasher(map[int][]byte{EmbeddedPepperVersion: p}, EmbeddedPepperVersion)
	}
	m := make(map[int][]byte, len(cfg.Pepper.Versions))
	for i, v := range cfg.Pepper.Versions {
		path := fmt.Sprintf("pepper.versions[%d]", i)
		b, err := v.Read(path)
		if err != nil {
			return nil, err
		}
		if v.File != "" {
			warnOpenMode(log, v.File, path+".file")
		}
		if len(b) < apikey.MinPepperLen {
			return nil, &config.FieldError{Path: path, Msg: fmt.Sprintf("pepper is %d bytes, need at least %d", len(b), apikey.MinPepperLen)}
		}
		m[v.Version] = b
	}
	return apikey.NewHasher(m, cfg.Pepper.Current)
}

// warnOpenMode warns when a secret file may be read by group or others: a
// pepper lets whoever holds it (and a copy of the digests) test guessed keys
// offline. os.Stat follows symlinks, as in a Kubernetes secret volume. Mode
// 0440 with a group keyauthz itself is in does not warn: that is how kubelet
// mounts a secret with defaultMode 0400 under a pod fsGroup, the only way a
// non-root container reads it (see k8sSecretMode).
func warnOpenMode(log *zap.Logger, file, field string) {
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm()&0o077 == 0 || k8sSecretMode(fi) {
		return
	}
	log.Warn("pepper file is accessible to group or others; make it readable by keyauthz only (chmod 600, or defaultMode: 0400 on a Kubernetes secret volume)",
		zap.String("file", file), zap.String("field", field), zap.String("mode", fmt.Sprintf("%#o", fi.Mode().Perm())))
}

func defaultPepper(path string) ([]byte, bool, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		b = []byte(strings.TrimRight(string(b), "\r\n"))
		if len(b) < apikey.MinPepperLen {
			return nil, false, fmt.Errorf("pepper file %s: %d bytes, need at least %d", path, len(b), apikey.MinPepperLen)
		}
		return b, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("read pepper: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, false, err
	}
	p := []byte(base64.RawURLEncoding.EncodeToString(raw))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("create pepper dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) { // another process won the race: use its pepper
		return defaultPepper(path)
	}
	if err != nil {
		return nil, false, fmt.Errorf("create pepper: %w", err)
	}
	if _, err := f.Write(append(p, '\n')); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("write pepper: %w", err)
	}
	return p, true, f.Close()
}

// sqlitePath returns the file path of a sqlite:// store URL.
func sqlitePath(url string) (string, error) {
	p, ok := strings.CutPrefix(url, "sqlite://")
	if !ok || p == "" {
		return "", fmt.Errorf("store url %s: want sqlite:///abs/path.db or sqlite://./rel.db", config.RedactURL(url))
	}
	return p, nil
}

func sqliteDir(url string) (string, error) {
	p, err := sqlitePath(url)
	if err != nil {
		return "", err
	}
	return filepath.Dir(p), nil
}

// pepperCounter is the store query the pepper check needs (every store has it).
type pepperCounter interface {
	// KeysByPepper counts the live keys by the pepper version of their digests.
	KeysByPepper(ctx context.Context) (map[int]int, error)
}

// checkPeppers refuses a store holding live keys under a pepper version h
// lacks: each of those keys would be denied 401, silently. A store without
// the query (a test double) is not checked.
func checkPeppers(ctx context.Context, s apikey.Store, h *apikey.Hasher) error {
	counts, err := liveKeys(ctx, s)
	if err != nil || counts == nil {
		return err
	}
	have := map[int]bool{h.Current(): true}
	for _, v := range h.Older() {
		have[v] = true
	}
	var missing []string
	for _, v := range slices.Sorted(maps.Keys(counts)) {
		if n := counts[v]; n > 0 && !have[v] {
			missing = append(missing, fmt.Sprintf("version %d (%s)", v, keyCount(n, "")))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return &config.FieldError{Path: "pepper.versions", Msg: fmt.Sprintf(
		"the store holds live keys under pepper %s, which pepper.versions lacks: each would be denied 401. "+
			"Add every such version with the pepper its keys were made with "+
			"(the embedded default's %s, beside its database, is version %d), or delete those keys",
		strings.Join(missing, ", "), PepperFile, EmbeddedPepperVersion)}
}

// liveKeys counts the store's live keys by pepper version; nil when the
// store cannot tell.
func liveKeys(ctx context.Context, s apikey.Store) (map[int]int, error) {
	pc, ok := s.(pepperCounter)
	if !ok {
		return nil, nil
	}
	counts, err := pc.KeysByPepper(ctx)
	if err != nil {
		return nil, fmt.Errorf("count keys by pepper version: %w", err)
	}
	return counts, nil
}

// storeHasher returns the hasher for store s: the configured peppers, or the
// embedded default's file, which is created (when create is set) only while
// the store holds no keys: keys made with a lost pepper can never verify,
// and a new random pepper would hide that. With check set, the pepper
// versions are then checked against the store's keys (checkPeppers).
func storeHasher(ctx context.Context, cfg *config.Config, embedded, create, check bool, s apikey.Store, log *zap.Logger) (*apikey.Hasher, error) {
	def, err := usesDefaultPepper(cfg, embedded)
	if err != nil {
		return nil, err
	}
	if def {
		path := defaultPepperPath(cfg)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			counts, err := liveKeys(ctx, s)
			if err != nil {
				return nil, err
			}
			n := 0
			for _, c := range counts {
				n += c
			}
			switch {
			case n > 0:
				return nil, fmt.Errorf("pepper file %s is missing but the store holds %s made with it: restore the file (no key verifies without it)",
					path, keyCount(n, "live "))
			case !create:
				return nil, fmt.Errorf("no pepper file at %s; run `keyauthz migrate` to create it", path)
			}
		}
	}
	h, err := loadPeppers(cfg, embedded, create, log)
	if err != nil {
		return nil, err
	}
	if !check {
		return h, nil
	}
	if err := checkPeppers(ctx, s, h); err != nil {
		return nil, err
	}
	return h, nil
}

// maxCounted is the most live keys a store counts per pepper version
// (KeysByPepper stops there: counting them all would read every digest).
const maxCounted = 1000

// keyCount says "n <adj>keys", or "1000 or more <adj>keys" at the stores' counting bound.
func keyCount(n int, adj string) string {
	if n >= maxCounted {
		return fmt.Sprintf("%d or more %skeys", maxCounted, adj)
	}
	return fmt.Sprintf("%d %s%s", n, adj, plural(n, "key", "keys"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
