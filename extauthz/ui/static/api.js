// The admin API client: same origin, bearer token from sessionStorage, no cookies.
// The token and secrets only ever travel in headers and bodies, never in a URL.

const TOKEN_KEY = "keyauthz.admin_token";

/** Returns the signed-in admin token, or "" when signed out. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

/** Keeps the admin token for this tab only. */
export function setToken(t) {
  sessionStorage.setItem(TOKEN_KEY, t);
}

/** Forgets the admin token (sign out). */
export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** An admin API answer that is not 2xx: status, message, and the field the server names. */
export class ApiError extends Error {
  constructor(status, message, field, code) {
    super(message);
    this.status = status;
    this.field = field || "";
    this.code = code || "";
  }
}

/** Path of a workspace's API, each id escaped as one path segment. */
export function wsPath(ws, ...rest) {
  return "/v1/workspaces/" + [ws, ...rest].map(encodeURIComponent).join("/");
}

/**
 * Calls the admin API: method, path (with query), optional JSON body, and the
 * token to use (the stored one by default). Resolves to the parsed JSON (null
 * for 204), rejects with an ApiError.
 */
export async function call(method, path, body, tok) {
  const headers = { Authorization: "Bearer " + (tok === undefined ? token() : tok), Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "The keyauthz server could not be reached: " + (e && e.message ? e.message : "network error"));
  }
  if (resp.status === 204) {
    return null;
  }
  let data = null;
  const ct = resp.headers.get("Content-Type") || "";
  if (ct.startsWith("application/json")) {
    try {
      data = await resp.json();
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const msg = data && typeof data.message === "string" ? data.message : resp.status + " " + resp.statusText;
    throw new ApiError(resp.status, msg, data && data.field, data && data.code);
  }
  return data;
}

/** Follows next_cursor through every page of a list endpoint and returns all items. */
export async function all(path, tok) {
  const items = [];
  let cursor = "";
  for (let i = 0; i < 1000; i++) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await call("GET", path + sep + "limit=500" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""), undefined, tok);
    items.push(...((page && page.items) || []));
    if (page && typeof page.max_keys === "number") {
      items.maxKeys = page.max_keys; // a key list's cap: 0 = unbounded
    }
    cursor = page && page.next_cursor;
    if (!cursor) {
      break;
    }
  }
  return items;
}
