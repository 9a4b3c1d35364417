package cli

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/app"
)

// keyOps is what the keys and audit commands need, from a local store or a server.
type keyOps interface {
	create(ctx context.Context, s apikey.Spec) (admin.View, error)
	list(ctx context.Context, ws string) ([]admin.View, error)
	refresh(ctx context.Context, ws, id string, grace time.Duration) (admin.View, error)
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
			return nil, usageError("--token-file is required with --server")
		}
		tok, err := readTokenFile(co.tokenFile)
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
	m, err := app.NewManager(c.ctx, cfg, c.log, app.Options{Embedded: embedded, CheckPeppers: co.hashes})
	if err != nil {
		return nil, err
	}
	return &localOps{m: m}, nil
}

// readTokenFile reads an admin token from a file (--token-file), without
// surrounding whitespace. The error never holds the file's content.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read admin token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("admin token file %s is empty", path)
	}
	return t, nil
}

// localOps works on the store directly, as the CLI on the sidecar's host does.
type localOps struct{ m *apikey.Manager }

func (l *localOps) create(ctx context.Context, s apikey.Spec) (admin.View, error) {
	k, secret, err := l.m.Create(ctx, s, "cli")
	return admin.NewView(k, secret), err
}

func (l *localOps) list(ctx context.Context, ws string) ([]admin.View, error) {
	var out []admin.View
	for after := ""; ; {
		page, err := l.m.Store().List(ctx, ws, after, 500)
		if err != nil {
			return nil, err
		}
		for _, k := range page {
			out = append(out, admin.NewView(k, ""))
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

func (l *localOps) refresh(ctx context.Context, ws, id string, grace time.Duration) (admin.View, error) {
	if err := l.owned(ctx, ws, id); err != nil {
		return admin.View{}, err
	}
	k, secret, err := l.m.Refresh(ctx, id, grace, "cli")
	return admin.NewView(k, secret), err
}

func (l *localOps) delete(ctx context.Context, ws, id string) error {
	if err := l.owned(ctx, ws, id); err != nil {
		return err
	}
	return l.m.Delete(ctx, id, "cli")
}

func (l *localOps) audit(ctx context.Context, ws string) ([]admin.Event, error) {
	es, err := l.m.Store().Events(ctx, ws, 0, 0)
	return events(es), err
}

func (l *localOps) close() { l.m.Store().Close() }

// remoteOps talks to a running server's admin API.
type remoteOps struct{ c *admin.Client }

func (r *remoteOps) create(ctx context.Context, s apikey.Spec) (admin.View, error) {
	req := admin.CreateRequest{Name: s.Name, RateLimit: s.RateLimit.String(), Grants: s.Grants, Metadata: s.Metadata}
	if !s.ExpiresAt.IsZero() {
		t := s.ExpiresAt
		req.ExpiresAt = &t
	}
	return r.c.Create(ctx, s.Workspace, req)
}

func (r *remoteOps) list(ctx context.Context, ws string) ([]admin.View, error) {
	return r.c.ListAll(ctx, ws)
}

func (r *remoteOps) refresh(ctx context.Context, ws, id string, grace time.Duration) (admin.View, error) {
	if ws == "" {
		return admin.View{}, usageError("keys refresh: --workspace is required with --server")
	}
	return r.c.Refresh(ctx, ws, id, grace)
}

func (r *remoteOps) delete(ctx context.Context, ws, id string) error {
	if ws == "" {
		return usageError("keys delete: --workspace is required with --server")
	}
	return r.c.Delete(ctx, ws, id)
}

func (r *remoteOps) audit(ctx context.Context, ws string) ([]admin.Event, error) {
	return r.c.AuditAll(ctx, ws)
}

func (r *remoteOps) close() {}
