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
	}
	return nil
}

// do sends one request. path is escaped segment by segment; a segment that is empty,
// "." or ".." (which a server or proxy would resolve elsewhere) is refused unsent.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any, want int) error {
	u := *c.base
	plain, err := url.PathUnescape(path)
	if err != nil {
		return err
	}
	for _, seg := range strings.Split(strings.TrimPrefix(plain, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return errors.New("admin API: a path segment is empty, '.' or '..'")
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
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("admin API %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode != want {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("admin API %s %s: HTTP %d", method, path, resp.StatusCode)
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("admin API %s %s: decode answer: %w", method, path, err)
	}
	return nil
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
