package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/admin"
	"github.com/keyauthz/keyauthz/extauthz/apikey"
	"github.com/keyauthz/keyauthz/extauthz/app"
)

// keyOps is what the keys, audit and workspaces commands need, from a local
// store or a server.
type keyOps interface {
	create(ctx context.Context, s apikey.Spec) (admin.View, error)
	// list lists a workspace's keys; unused > 0 keeps those unused for that long.
	list(ctx context.Context, ws string, unused time.Duration) ([]admin.View, error)
	update(ctx context.Context, ws, id string, p apikey.KeyPatch) (admin.View, error)
	usage(ctx context.Context, ws, id string, q admin.UsageQuery) (admin.Usage, error)
	refresh(ctx context.Context, ws, id string, grace time.Duration) (admin.View, error)
	delete(ctx context.Context, ws, id string) error
	audit(ctx context.Context, ws string) ([]admin.Event, error)
	getWorkspace(ctx context.Context, ws string) (admin.WorkspaceView, error)
	// setWorkspace patches a workspace record, creating it when absent, and
	// reports whether it was created.
	setWorkspace(ctx context.Context, ws string, p apikey.WorkspacePatch) (admin.WorkspaceView, bool, error)
	listWorkspaces(ctx context.Context) ([]admin.WorkspaceView, error)
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
		hc, err := adminHTTPClient(co.caFile)
		if err != nil {
			return nil, err
		}
		cl, err := admin.NewClient(co.server, tok, hc)
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

func (l *localOps) list(ctx context.Context, ws string, unused time.Duration) ([]admin.View, error) {
	var out []admin.View
	s, now := l.m.Store(), time.Now().UTC()
	for after := ""; ; {
		var page []apikey.Key
		var err error
		if unused > 0 {
			page, err = s.ListUnused(ctx, ws, now.Add(-unused), after, admin.MaxPageSize)
		} else {
			page, err = s.List(ctx, ws, after, admin.MaxPageSize)
		}
		if err != nil {
			return nil, err
		}
		views := make([]admin.View, len(page))
		for i, k := range page {
			views[i] = admin.NewView(k, "")
		}
		if err := admin.FillRequests30d(ctx, s, now, views); err != nil { // one call per page, as the server does
			return nil, err
		}
		out = append(out, views...)
		if len(page) < admin.MaxPageSize {
			return out, nil
		}
		after = page[len(page)-1].ID
	}
}

// key returns the live key id, not found when ws is given and is not its workspace.
func (l *localOps) key(ctx context.Context, ws, id string) (apikey.Key, error) {
	k, err := l.m.Store().Get(ctx, id)
	if err == nil && ws != "" && k.Workspace != ws {
		err = apikey.ErrNotFound
	}
	return k, err
}

func (l *localOps) update(ctx context.Context, ws, id string, p apikey.KeyPatch) (admin.View, error) {
	if err := l.owned(ctx, ws, id); err != nil {
		return admin.View{}, err
	}
	// Counted first: an error after the update would report a committed change as failed.
	v := []admin.View{{ID: id}}
	if err := admin.FillRequests30d(ctx, l.m.Store(), time.Now().UTC(), v); err != nil {
		return admin.View{}, err
	}
	k, err := l.m.Update(ctx, id, p, "cli")
	if err != nil {
		return admin.View{}, err
	}
	out := admin.NewView(k, "")
	out.Requests30d = v[0].Requests30d
	return out, nil
}

func (l *localOps) usage(ctx context.Context, ws, id string, q admin.UsageQuery) (admin.Usage, error) {
	k, err := l.key(ctx, ws, id)
	if err != nil {
		return admin.Usage{}, err
	}
	rows, err := l.m.Store().Usage(ctx, k.ID, q.Start(), q.To)
	if err != nil {
		return admin.Usage{}, err
	}
	return admin.NewUsage(k.ID, q, rows), nil
}

func (l *localOps) getWorkspace(ctx context.Context, ws string) (admin.WorkspaceView, error) {
	w, err := l.m.Store().GetWorkspace(ctx, ws)
	return admin.NewWorkspaceView(w), err
}

func (l *localOps) setWorkspace(ctx context.Context, ws string, p apikey.WorkspacePatch) (admin.WorkspaceView, bool, error) {
	w, err := l.m.PatchWorkspace(ctx, ws, p, "cli")
	if errors.Is(err, apikey.ErrNotFound) {
		rec := apikey.Workspace{ID: ws}
		p.Apply(&rec)
		var created bool
		w, created, err = l.m.PutWorkspace(ctx, rec, "cli")
		return admin.NewWorkspaceView(w), created, err
	}
	return admin.NewWorkspaceView(w), false, err
}

func (l *localOps) listWorkspaces(ctx context.Context) ([]admin.WorkspaceView, error) {
	out := []admin.WorkspaceView{}
	for after := ""; ; {
		page, err := l.m.Store().ListWorkspaces(ctx, after, admin.MaxPageSize)
		if err != nil {
			return nil, err
		}
		for _, w := range page {
			out = append(out, admin.NewWorkspaceView(w))
		}
		if len(page) < admin.MaxPageSize {
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
	_, err := l.key(ctx, ws, id)
	return err
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

func (r *remoteOps) list(ctx context.Context, ws string, unused time.Duration) ([]admin.View, error) {
	if unused > 0 {
		return r.c.ListAllUnused(ctx, ws, unused)
	}
	return r.c.ListAll(ctx, ws)
}

func (r *remoteOps) update(ctx context.Context, ws, id string, p apikey.KeyPatch) (admin.View, error) {
	if ws == "" {
		return admin.View{}, usageError("keys update: --workspace is required with --server")
	}
	var req admin.KeyUpdate
	if p.Name != nil {
		req.Name = admin.Value(*p.Name)
	}
	if p.RateLimit != nil {
		req.RateLimit = orNull(p.RateLimit.String())
	}
	if p.ExpiresAt != nil {
		if req.ExpiresAt = admin.Value(*p.ExpiresAt); p.ExpiresAt.IsZero() {
			req.ExpiresAt = admin.Null[time.Time]()
		}
	}
	if p.Grants != nil {
		if req.Grants = admin.Value(*p.Grants); len(*p.Grants) == 0 {
			req.Grants = admin.Null[[]string]()
		}
	}
	if p.Metadata != nil {
		if req.Metadata = admin.Value(*p.Metadata); len(*p.Metadata) == 0 {
			req.Metadata = admin.Null[map[string]string]()
		}
	}
	if p.Disabled != nil {
		req.Disabled = admin.Value(*p.Disabled)
	}
	return r.c.Update(ctx, ws, id, req)
}

// orNull is s as a PATCH field, null when empty.
func orNull(s string) admin.Field[string] {
	if s == "" {
		return admin.Null[string]()
	}
	return admin.Value(s)
}

func (r *remoteOps) usage(ctx context.Context, ws, id string, q admin.UsageQuery) (admin.Usage, error) {
	if ws == "" {
		return admin.Usage{}, usageError("keys usage: --workspace is required with --server")
	}
	return r.c.Usage(ctx, ws, id, q.From, q.To, q.Granularity)
}

func (r *remoteOps) getWorkspace(ctx context.Context, ws string) (admin.WorkspaceView, error) {
	return r.c.GetWorkspace(ctx, ws)
}

func (r *remoteOps) setWorkspace(ctx context.Context, ws string, p apikey.WorkspacePatch) (admin.WorkspaceView, bool, error) {
	var req admin.WorkspaceRequest
	if p.RateLimit != nil {
		req.RateLimit = orNull(p.RateLimit.String())
	}
	if p.MaxKeys != nil {
		req.MaxKeys = admin.Value(*p.MaxKeys)
	}
	if p.Grants != nil {
		if req.Grants = admin.Value(*p.Grants); len(*p.Grants) == 0 {
			req.Grants = admin.Null[[]string]()
		}
	}
	if p.Disabled != nil {
		req.Disabled = admin.Value(*p.Disabled)
	}
	v, err := r.c.PatchWorkspace(ctx, ws, req)
	if errors.Is(err, apikey.ErrNotFound) { // no record yet: create it with these fields
		return r.c.PutWorkspace(ctx, ws, req)
	}
	return v, false, err
}

func (r *remoteOps) listWorkspaces(ctx context.Context) ([]admin.WorkspaceView, error) {
	return r.c.ListAllWorkspaces(ctx)
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
