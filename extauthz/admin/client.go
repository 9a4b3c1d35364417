package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// maxAnswer bounds the admin API answers the client reads.
const maxAnswer = 16 << 20

// Client talks to a running keyauthz's admin API (the CLI's --server mode).
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// NewClient returns a client for the server at base (e.g. "http://127.0.0.1:9002")
// sending token as the bearer token; hc nil means a client with a 30 s timeout.
func NewClient(base, token string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("admin server %q: want http://host:port or https://host:port", base)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("admin client: empty token")
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Client{base: u, token: token, hc: hc}, nil
}

// CreateRequest is the body of a create call; zero fields are left out.
type CreateRequest struct {
	Name             string            `json:"name"`
	ExpiresAt        *time.Time        `json:"expires_at,omitempty"`
	ExpiresInSeconds int64             `json:"expires_in_seconds,omitempty"`
	NotBefore        *time.Time        `json:"not_before,omitempty"`
	RateLimit        string            `json:"rate_limit,omitempty"`
	Grants           []string          `json:"grants,omitempty"`
	Metadata         map[string]string `json:"metadata,omitempty"`
}

// ErrForbidden is a 403 answer: the admin token is limited to other workspaces.
var ErrForbidden = errors.New("token not allowed for this workspace")

// Error is an error answer of the admin API, carrying the server's message.
type Error struct {
	Status  int    `json:"-"` // HTTP status
	Message string `json:"message"`
	Field   string `json:"field"` // the offending input field, for 400
	Code    string `json:"code"`  // machine-readable reason, e.g. "limit", "name_taken"
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("admin API: HTTP %d", e.Status)
	}
	return e.Message
}

// Unwrap maps the answer to the apikey error it stands for, so callers can use
// errors.Is(err, apikey.ErrNotFound) or errors.As(err, **apikey.FieldError).
func (e *Error) Unwrap() error {
	switch {
	case e.Status == http.StatusBadRequest && e.Field != "":
		return &apikey.FieldError{Field: e.Field, Msg: strings.TrimPrefix(e.Message, e.Field+": ")}
	case e.Status == http.StatusNotFound:
		return apikey.ErrNotFound
	case e.Code == "limit":
		return apikey.ErrLimit
	case e.Code == "name_taken":
		return apikey.ErrNameTaken
	case e.Code == "read_only":
		return apikey.ErrReadOnly
	case e.Status == http.StatusForbidden:
		return ErrForbidden
	}
	return nil
}

// do sends one request. path is escaped segment by segment; a segment that is empty,
// "." or ".." (which a server or proxy would resolve elsewhere) is refused unsent.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any, want ...int) error {
	_, err := c.send(ctx, method, path, q, in, out, want...)
	return err
}

// send is do, also returning the status answered (one of want) on success.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, in, out any, want ...int) (int, error) {
	u := *c.base
	plain, err := url.PathUnescape(path)
	if err != nil {
		return 0, err
	}
	for _, seg := range strings.Split(strings.TrimPrefix(plain, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return 0, errors.New("admin API: a path segment is empty, '.' or '..'")
		}
	}
	u.RawPath = strings.TrimRight(c.base.EscapedPath(), "/") + path
	u.Path = strings.TrimRight(c.base.Path, "/") + plain
	if q != nil {
		u.RawQuery = q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("admin API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return 0, fmt.Errorf("admin API %s %s: read answer: %w", method, path, err)
	}
	if !slices.Contains(want, resp.StatusCode) {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("admin API %s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return resp.StatusCode, e
	}
	if out == nil {
		return resp.StatusCode, nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return resp.StatusCode, fmt.Errorf("admin API %s %s: decode answer: %w", method, path, err)
	}
	return resp.StatusCode, nil
}

func keysPath(ws string) string { return "/v1/workspaces/" + url.PathEscape(ws) + "/api-keys" }

func keyPath(ws, id string) string { return keysPath(ws) + "/" + url.PathEscape(id) }

func pageQuery(cursor string, limit int) url.Values {
	q := url.Values{}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return q
}

// Create issues a key in workspace ws; the answer's Key is the secret, shown once.
func (c *Client) Create(ctx context.Context, ws string, req CreateRequest) (View, error) {
	var v View
	if err := apikey.CheckWorkspace(ws); err != nil {
		return v, err
	}
	err := c.do(ctx, http.MethodPost, keysPath(ws), nil, req, &v, http.StatusCreated)
	return v, err
}

// List returns one page of a workspace's keys after cursor ("" for the first page); limit 0 = server default.
func (c *Client) List(ctx context.Context, ws, cursor string, limit int) (KeyPage, error) {
	var p KeyPage
	if err := apikey.CheckWorkspace(ws); err != nil {
		return p, err
	}
	err := c.do(ctx, http.MethodGet, keysPath(ws), pageQuery(cursor, limit), nil, &p, http.StatusOK)
	return p, err
}

// ListAll returns every key of a workspace, following the cursors.
func (c *Client) ListAll(ctx context.Context, ws string) ([]View, error) {
	return all(func(cursor string) ([]View, string, error) {
		p, err := c.List(ctx, ws, cursor, MaxPageSize)
		return p.Items, p.NextCursor, err
	})
}

// all gathers the items of every page, from the first (cursor "") until a page
// has no next cursor; page fetches one page of MaxPageSize items.
func all[T any](page func(cursor string) (items []T, next string, err error)) ([]T, error) {
	out := []T{}
	cursor := ""
	for {
		items, next, err := page(cursor)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if next == "" {
			return out, nil
		}
		cursor = next
	}
}

// Get returns one key of workspace ws (never the secret).
func (c *Client) Get(ctx context.Context, ws, id string) (View, error) {
	var v View
	if err := apikey.CheckWorkspace(ws); err != nil {
		return v, err
	}
	err := c.do(ctx, http.MethodGet, keyPath(ws, id), nil, nil, &v, http.StatusOK)
	return v, err
}

// Refresh rotates a key's secret; the old one stays valid for grace (rounded up to
// whole seconds; 0 = invalid at once). The answer's Key is the new secret.
func (c *Client) Refresh(ctx context.Context, ws, id string, grace time.Duration) (View, error) {
	if grace < 0 {
		return View{}, &apikey.FieldError{Field: "grace", Msg: "must not be negative"}
	}
	if err := apikey.CheckWorkspace(ws); err != nil {
		return View{}, err
	}
	var in any
	if grace > 0 {
		s := int64((grace + time.Second - 1) / time.Second)
		in = refreshBody{GraceSeconds: &s}
	}
	var v View
	err := c.do(ctx, http.MethodPost, keyPath(ws, id)+"/refresh", nil, in, &v, http.StatusOK)
	return v, err
}

// Delete revokes a key at once.
func (c *Client) Delete(ctx context.Context, ws, id string) error {
	if err := apikey.CheckWorkspace(ws); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, keyPath(ws, id), nil, nil, nil, http.StatusNoContent)
}

// Audit returns one page of a workspace's audit events, oldest first, after cursor.
func (c *Client) Audit(ctx context.Context, ws, cursor string, limit int) (AuditPage, error) {
	var p AuditPage
	if err := apikey.CheckWorkspace(ws); err != nil {
		return p, err
	}
	err := c.do(ctx, http.MethodGet, "/v1/workspaces/"+url.PathEscape(ws)+"/audit", pageQuery(cursor, limit), nil, &p, http.StatusOK)
	return p, err
}

// AuditAll returns every audit event of a workspace, oldest first.
func (c *Client) AuditAll(ctx context.Context, ws string) ([]Event, error) {
	return all(func(cursor string) ([]Event, string, error) {
		p, err := c.Audit(ctx, ws, cursor, MaxPageSize)
		return p.Items, p.NextCursor, err
	})
}

// Field is one field of a PATCH request (JSON merge patch): left out unless
// Set; sent as null (reset: inherit, none, never, false) when Null, else as Value.
type Field[T any] struct {
	Set   bool
	Null  bool
	Value T
}

// Value returns a Field that sets v.
func Value[T any](v T) Field[T] { return Field[T]{Set: true, Value: v} }

// Null returns a Field sent as JSON null.
func Null[T any]() Field[T] { return Field[T]{Set: true, Null: true} }

// IsZero reports whether the field is left out (json's omitzero).
func (f Field[T]) IsZero() bool { return !f.Set }

// MarshalJSON encodes the field as null or its value.
func (f Field[T]) MarshalJSON() ([]byte, error) {
	if f.Null {
		return []byte("null"), nil
	}
	return json.Marshal(f.Value)
}

// WorkspaceRequest is the body of PUT and PATCH /v1/workspaces/{ws}; fields
// not Set are left out (PUT: default; PATCH: unchanged).
type WorkspaceRequest struct {
	RateLimit Field[string]   `json:"rate_limit,omitzero"` // e.g. "600/m"; null or "" = inherit
	MaxKeys   Field[int]      `json:"max_keys,omitzero"`   // null or 0 = inherit
	Grants    Field[[]string] `json:"grants,omitzero"`     // null = none
	Disabled  Field[bool]     `json:"disabled,omitzero"`
}

// KeyUpdate is the body of PATCH /v1/workspaces/{ws}/api-keys/{id}; fields
// not Set are left unchanged.
type KeyUpdate struct {
	Name      Field[string]            `json:"name,omitzero"`
	RateLimit Field[string]            `json:"rate_limit,omitzero"` // null or "" = inherit
	ExpiresAt Field[time.Time]         `json:"expires_at,omitzero"` // null = never
	Grants    Field[[]string]          `json:"grants,omitzero"`     // null = none
	Metadata  Field[map[string]string] `json:"metadata,omitzero"`   // null = none
	Disabled  Field[bool]              `json:"disabled,omitzero"`
}

func workspacePath(ws string) string { return "/v1/workspaces/" + url.PathEscape(ws) }

// PutWorkspace creates or replaces workspace ws's record and reports whether it was created.
func (c *Client) PutWorkspace(ctx context.Context, ws string, req WorkspaceRequest) (WorkspaceView, bool, error) {
	var v WorkspaceView
	if err := apikey.CheckWorkspace(ws); err != nil {
		return v, false, err
	}
	code, err := c.send(ctx, http.MethodPut, workspacePath(ws), nil, req, &v, http.StatusOK, http.StatusCreated)
	return v, code == http.StatusCreated, err
}

// PatchWorkspace changes the Set fields of workspace ws's record (apikey.ErrNotFound when it has none).
func (c *Client) PatchWorkspace(ctx context.Context, ws string, req WorkspaceRequest) (WorkspaceView, error) {
	var v WorkspaceView
	if err := apikey.CheckWorkspace(ws); err != nil {
		return v, err
	}
	err := c.do(ctx, http.MethodPatch, workspacePath(ws), nil, req, &v, http.StatusOK)
	return v, err
}

// GetWorkspace returns workspace ws's record (apikey.ErrNotFound when it has none).
func (c *Client) GetWorkspace(ctx context.Context, ws string) (WorkspaceView, error) {
	var v WorkspaceView
	if err := apikey.CheckWorkspace(ws); err != nil {
		return v, err
	}
	err := c.do(ctx, http.MethodGet, workspacePath(ws), nil, nil, &v, http.StatusOK)
	return v, err
}

// ListWorkspaces returns one page of workspace records after cursor; limit 0 = server default.
func (c *Client) ListWorkspaces(ctx context.Context, cursor string, limit int) (WorkspacePage, error) {
	var p WorkspacePage
	err := c.do(ctx, http.MethodGet, "/v1/workspaces", pageQuery(cursor, limit), nil, &p, http.StatusOK)
	return p, err
}

// ListAllWorkspaces returns every workspace record the token may see, following the cursors.
func (c *Client) ListAllWorkspaces(ctx context.Context) ([]WorkspaceView, error) {
	return all(func(cursor string) ([]WorkspaceView, string, error) {
		p, err := c.ListWorkspaces(ctx, cursor, MaxPageSize)
		return p.Items, p.NextCursor, err
	})
}

// Update changes the Set fields of a key of workspace ws and returns it.
func (c *Client) Update(ctx context.Context, ws, id string, req KeyUpdate) (View, error) {
	var v View
	if err := apikey.CheckWorkspace(ws); err != nil {
		return v, err
	}
	err := c.do(ctx, http.MethodPatch, keyPath(ws, id), nil, req, &v, http.StatusOK)
	return v, err
}

// ListUnused returns one page of a workspace's keys created more than d ago
// and not used (allowed) since.
func (c *Client) ListUnused(ctx context.Context, ws string, d time.Duration, cursor string, limit int) (KeyPage, error) {
	var p KeyPage
	if err := apikey.CheckWorkspace(ws); err != nil {
		return p, err
	}
	q := pageQuery(cursor, limit)
	q.Set("unused_for", FormatUnusedFor(d))
	err := c.do(ctx, http.MethodGet, keysPath(ws), q, nil, &p, http.StatusOK)
	return p, err
}

// ListAllUnused is ListUnused over every page.
func (c *Client) ListAllUnused(ctx context.Context, ws string, d time.Duration) ([]View, error) {
	return all(func(cursor string) ([]View, string, error) {
		p, err := c.ListUnused(ctx, ws, d, cursor, MaxPageSize)
		return p.Items, p.NextCursor, err
	})
}

// Usage returns a key's usage report; zero from or to and "" granularity take
// the server's defaults (hour; the last 24 hours, or 30 days by day).
func (c *Client) Usage(ctx context.Context, ws, id string, from, to time.Time, granularity string) (Usage, error) {
	var u Usage
	if err := apikey.CheckWorkspace(ws); err != nil {
		return u, err
	}
	q := url.Values{}
	if !from.IsZero() {
		q.Set("from", from.UTC().Format(time.RFC3339Nano))
	}
	if !to.IsZero() {
		q.Set("to", to.UTC().Format(time.RFC3339Nano))
	}
	if granularity != "" {
		q.Set("granularity", granularity)
	}
	err := c.do(ctx, http.MethodGet, keyPath(ws, id)+"/usage", q, nil, &u, http.StatusOK)
	return u, err
}
