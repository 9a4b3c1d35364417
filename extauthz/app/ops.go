package app

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/keyauthz/keyauthz/config"
	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// keyOps is what the keys and audit commands need, from a local store or a server.
type keyOps interface {
	create(ctx context.Context, s apikey.Spec) (apikey.View, error)
	list(ctx context.Context, ws string) ([]apikey.View, error)
	refresh(ctx context.Context, ws, id string, grace time.Duration) (apikey.View, error)
	delete(ctx context.Context, ws, id string) error
	audit(ctx context.Context, ws string) ([]admin.Event, error)
	close()
}

var (
	_ keyOps = (*localOps)(nil)
	_ keyOps = (*remoteOps)(nil)
)

// ops opens the admin API client with --server, else the configured store.
func (c *cli) ops(co common) (keyOps, error) {
	if co.server != "" {
		if co.tokenFile == "" {
			return nil, usageError("--server needs --token-file")
		}
		tok, err := admin.ReadTokenFile(co.tokenFile)
		if err != nil {
			return nil, err
		}
		cl, err := admin.NewClient(co.server, tok, &http.Client{Timeout: 30 * time.Second})
		if err != nil {
			return nil, err
		}
		return &remoteOps{c: cl}, nil
	}
	cfg, embedded, err := c.load(co)
	if err != nil {
		return nil, err
	}
	h, err := peppers(&cfg, embedded, c.log)
	if err != nil {
		return nil, err
	}
	f, err := apikey.NewFormat(cfg.Keys.Prefix, cfg.Keys.MaxLength, cfg.Keys.Imported)
	if err != nil {
		return nil, err
	}
	s, err := openStore(c.ctx, &cfg, c.log.Named("store"))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", config.RedactURL(cfg.Store.URL), err)
	}
	m, err := apikey.NewManager(s, f, h, MaxKeys(&cfg))
	if err != nil {
		s.Close()
		return nil, err
	}
	return &localOps{m: m}, nil
}

// localOps works on the store directly, as the CLI on the sidecar's host does.
type localOps struct{ m *apikey.Manager }

func (l *localOps) create(ctx context.Context, s apikey.Spec) (apikey.View, error) {
	k, secret, err := l.m.Create(ctx, s, "cli")
	return apikey.NewView(k, secret), err
}

func (l *localOps) list(ctx context.Context, ws string) ([]apikey.View, error) {
	var out []apikey.View
	for after := ""; ; {
		page, err := l.m.Store().List(ctx, ws, after, 500)
		if err != nil {
			return nil, err
		}
		for _, k := range page {
			out = append(out, apikey.NewView(k, ""))
		}
		if len(page) < 500 {
			return out, nil
		}
		after = page[len(page)-1].ID
	}
}

// owned checks that id belongs to ws when a workspace was given.
func (l *localOps) owned(ctx context.Context, ws, id string) error {
	if ws == "" {
		return nil
	}
	k, err := l.m.Store().Get(ctx, id)
	if err != nil {
		return err
	}
	if k.Workspace != ws {
		return apikey.ErrNotFound
	}
	return nil
}

func (l *localOps) refresh(ctx context.Context, ws, id string, grace time.Duration) (apikey.View, error) {
	if err := l.owned(ctx, ws, id); err != nil {
		return apikey.View{}, err
	}
	k, secret, err := l.m.Refresh(ctx, id, grace, "cli")
	return apikey.NewView(k, secret), err
}

func (l *localOps) delete(ctx context.Context, ws, id string) error {
	if err := l.owned(ctx, ws, id); err != nil {
		return err
	}
	return l.m.Delete(ctx, id, "cli")
}

func (l *localOps) audit(ctx context.Context, ws string) ([]admin.Event, error) {
	es, err := l.m.Store().Events(ctx, ws, 0, 0)
	return admin.Events(es), err
}

func (l *localOps) close() { l.m.Store().Close() }

// remoteOps talks to a running server's admin API.
type remoteOps struct{ c *admin.Client }

func (r *remoteOps) create(ctx context.Context, s apikey.Spec) (apikey.View, error) {
	req := admin.CreateRequest{Name: s.Name, RateLimit: s.RateLimit.String(), Grants: s.Grants, Metadata: s.Metadata}
	if !s.ExpiresAt.IsZero() {
		t := s.ExpiresAt
		req.ExpiresAt = &t
	}
	return r.c.Create(ctx, s.Workspace, req)
}

func (r *remoteOps) list(ctx context.Context, ws string) ([]apikey.View, error) {
	return r.c.ListAll(ctx, ws)
}

func (r *remoteOps) refresh(ctx context.Context, ws, id string, grace time.Duration) (apikey.View, error) {
	if ws == "" {
		return apikey.View{}, usageError("--server needs --workspace for refresh")
	}
	return r.c.Refresh(ctx, ws, id, grace)
}

func (r *remoteOps) delete(ctx context.Context, ws, id string) error {
	if ws == "" {
		return usageError("--server needs --workspace for delete")
	}
	return r.c.Delete(ctx, ws, id)
}

func (r *remoteOps) audit(ctx context.Context, ws string) ([]admin.Event, error) {
	return r.c.AuditAll(ctx, ws)
}

func (r *remoteOps) close() {}
