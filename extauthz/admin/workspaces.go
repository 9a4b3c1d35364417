package admin

import (
	"errors"
	"net/http"
	"net/url"
	"slices"

	"go.uber.org/zap"

	"github.com/keyauthz/keyauthz/extauthz/apikey"
)

// workspaceLocation is the URL path of a workspace record; ws is a checked id.
func workspaceLocation(ws string) string { return "/v1/workspaces/" + url.PathEscape(ws) }

// failSpace is fail for the workspace record routes: not found names the workspace.
func (h *Handler) failSpace(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, apikey.ErrNotFound) {
		writeError(w, http.StatusNotFound, errNoSpace)
		return
	}
	h.fail(w, r, err)
}

// workspacePatch reads the workspace of the path and the body of a PUT or
// PATCH of its record; on bad input it answers the error and returns false.
func (h *Handler) workspacePatch(w http.ResponseWriter, r *http.Request) (string, apikey.WorkspacePatch, bool) {
	ws, e := workspace(r)
	var (
		b workspaceBody
		p apikey.WorkspacePatch
	)
	if e == nil {
		e = h.readJSON(r, &b, false)
	}
	if e == nil {
		p, e = b.patch()
	}
	if e != nil {
		writeError(w, e.status(), e)
		return "", p, false
	}
	return ws, p, true
}

// putWorkspace creates (201) or replaces (200) a workspace record; absent and
// null fields take their defaults.
func (h *Handler) putWorkspace(w http.ResponseWriter, r *http.Request, c caller) {
	ws, p, ok := h.workspacePatch(w, r)
	if !ok {
		return
	}
	rec := apikey.Workspace{ID: ws}
	p.Apply(&rec)
	rec, created, err := h.m.PutWorkspace(r.Context(), rec, c.name)
	if err != nil {
		h.failSpace(w, r, err)
		return
	}
	h.changed(r.Context(), "")
	h.log.Info("workspace record put", zap.String("workspace", ws), zap.Bool("created", created), zap.String("actor", c.name))
	code := http.StatusOK
	if created {
		code = http.StatusCreated
		w.Header().Set("Location", workspaceLocation(ws))
	}
	writeJSON(w, code, NewWorkspaceView(rec))
}

// patchWorkspace applies a JSON merge patch to a workspace record (404 when there is none).
func (h *Handler) patchWorkspace(w http.ResponseWriter, r *http.Request, c caller) {
	ws, p, ok := h.workspacePatch(w, r)
	if !ok {
		return
	}
	if p == (apikey.WorkspacePatch{}) { // nothing to change: no write, no change, no audit event
		h.getWorkspace(w, r, c)
		return
	}
	rec, err := h.m.PatchWorkspace(r.Context(), ws, p, c.name)
	if err != nil {
		h.failSpace(w, r, err)
		return
	}
	h.changed(r.Context(), "")
	h.log.Info("workspace record patched", zap.String("workspace", ws), zap.String("actor", c.name))
	writeJSON(w, http.StatusOK, NewWorkspaceView(rec))
}

func (h *Handler) getWorkspace(w http.ResponseWriter, r *http.Request, _ caller) {
	ws, e := workspace(r)
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	rec, err := h.store.GetWorkspace(r.Context(), ws)
	if err != nil {
		h.failSpace(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewWorkspaceView(rec))
}

// listWorkspaces lists workspace records by id; a scoped token sees only its own.
func (h *Handler) listWorkspaces(w http.ResponseWriter, r *http.Request, c caller) {
	limit, after, e := page(r, "w", "")
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	var recs []apikey.Workspace
	if c.scope == nil {
		var err error
		if recs, err = h.store.ListWorkspaces(r.Context(), after, limit+1); err != nil {
			h.fail(w, r, err)
			return
		}
	} else {
		// A scoped token's few workspaces, read one by one in id order after the cursor.
		i, _ := slices.BinarySearch(c.scope, after)
		for ; i < len(c.scope) && len(recs) <= limit; i++ {
			if c.scope[i] <= after {
				continue
			}
			rec, err := h.store.GetWorkspace(r.Context(), c.scope[i])
			if errors.Is(err, apikey.ErrNotFound) {
				continue
			}
			if err != nil {
				h.fail(w, r, err)
				return
			}
			recs = append(recs, rec)
		}
	}
	out := WorkspacePage{Items: make([]WorkspaceView, 0, min(len(recs), limit))}
	for i := range recs {
		if i == limit {
			out.NextCursor = encodeCursor("w", "", recs[i-1].ID)
			break
		}
		out.Items = append(out.Items, NewWorkspaceView(recs[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

// update applies a JSON merge patch to a key (404 when it is not in the path's
// workspace); an empty patch answers the key unchanged.
func (h *Handler) update(w http.ResponseWriter, r *http.Request, c caller) {
	if _, e := workspace(r); e != nil {
		writeError(w, e.status(), e)
		return
	}
	var b keyPatchBody
	if e := h.readJSON(r, &b, false); e != nil {
		writeError(w, e.status(), e)
		return
	}
	now := h.opt.Now().UTC()
	p, e := b.patch(now)
	if e != nil {
		writeError(w, e.status(), e)
		return
	}
	k, ok := h.key(w, r)
	if !ok {
		return
	}
	v := []View{NewView(k, "")}
	if err := h.requests30d(r.Context(), now, v); err != nil {
		h.fail(w, r, err)
		return
	}
	if !emptyKeyPatch(&p) {
		var err error
		if k, err = h.m.Update(r.Context(), k.ID, p, c.name); err != nil {
			h.fail(w, r, err)
			return
		}
		h.changed(r.Context(), k.ID)
		h.log.Info("key updated", zap.String("key_id", k.ID), zap.String("workspace", k.Workspace), zap.String("actor", c.name))
	}
	out := NewView(k, "")
	out.Requests30d = v[0].Requests30d
	writeJSON(w, http.StatusOK, out)
}

// usage answers a key's request counts over a range, in dense hour or day buckets.
func (h *Handler) usage(w http.ResponseWriter, r *http.Request, _ caller) {
	if _, e := workspace(r); e != nil {
		writeError(w, e.status(), e)
		return
	}
	qv := r.URL.Query()
	for _, p := range []string{"from", "to", "granularity"} {
		if qv.Has(p) && qv.Get(p) == "" { // given but empty is not "not given"
			writeError(w, http.StatusBadRequest, invalid(p, "must not be empty; leave it out for the default"))
			return
		}
	}
	q, err := ParseUsageQuery(qv.Get("from"), qv.Get("to"), qv.Get("granularity"), h.opt.Now())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	k, ok := h.key(w, r)
	if !ok {
		return
	}
	rows, err := h.store.Usage(r.Context(), k.ID, q.Start(), q.To)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewUsage(k.ID, q, rows))
}
