package app

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// PepperFile is the name of the pepper the embedded default keeps beside its database.
const PepperFile = "keyauthz.pepper"

// peppers reads the configured pepper versions. With none configured, the embedded
// default (no config file) uses, creating it if needed, a random pepper in a 0600
// file beside the SQLite database; with a config file that is an error.
func peppers(cfg *config.Config, embedded bool, log *zap.Logger) (*apikey.Hasher, error) {
	if len(cfg.Pepper.Versions) == 0 {
		if !embedded {
			return nil, &config.FieldError{Path: "pepper.versions", Msg: "required: name a pepper file or env var (at least 32 bytes)"}
		}
		dir, err := sqliteDir(cfg.Store.URL)
		if err != nil {
			return nil, &config.FieldError{Path: "pepper.versions", Msg: "required unless the store is sqlite"}
		}
		p, created, err := defaultPepper(filepath.Join(dir, PepperFile))
		if err != nil {
			return nil, err
		}
		if created {
			log.Info("created a random pepper for the embedded default; keep it with the database", zap.String("file", filepath.Join(dir, PepperFile)))
		}
		return apikey.NewHasher(map[int][]byte{1: p}, 1)
	}
	m := make(map[int][]byte, len(cfg.Pepper.Versions))
	for i, v := range cfg.Pepper.Versions {
		path := fmt.Sprintf("pepper.versions[%d]", i)
		var b []byte
		if v.File != "" {
			var err error
			if b, err = os.ReadFile(v.File); err != nil {
				return nil, &config.FieldError{Path: path + ".file", Msg: fmt.Sprintf("read pepper: %v", err)}
			}
			warnOpenMode(log, v.File, path+".file")
		} else {
			s, ok := os.LookupEnv(v.Env)
			if !ok {
				return nil, &config.FieldError{Path: path + ".env", Msg: fmt.Sprintf("environment variable %s is not set", v.Env)}
			}
			b = []byte(s)
		}
		b = []byte(strings.TrimRight(string(b), "\r\n"))
		if len(b) < apikey.MinPepperLen {
			return nil, &config.FieldError{Path: path, Msg: fmt.Sprintf("pepper is %d bytes, need at least %d", len(b), apikey.MinPepperLen)}
		}
		m[v.Version] = b
	}
	return apikey.NewHasher(m, cfg.Pepper.Current)
}

// warnOpenMode warns when a secret file may be read by group or others: a
// pepper lets whoever holds it (and a copy of the digests) test guessed keys
// offline. os.Stat follows symlinks, as in a Kubernetes secret volume.
func warnOpenMode(log *zap.Logger, file, field string) {
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm()&0o077 == 0 {
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
