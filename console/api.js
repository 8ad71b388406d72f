// The public REST API (/api/v1) and the two sockets, as the console uses them. Tokens live in
// sessionStorage: they survive a reload of the tab but not closing it, which suits a shared
// clinic tablet better than localStorage.

const TOKENS = 'tandem.tokens';

/** An API failure with the server's stable `code`; `message` is safe to show. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** The route is not on this server (an older Tandem): 404 "route not found" or 405. */
  get routeMissing() {
    return this.status === 405 || (this.status === 404 && this.message === 'route not found');
  }
}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(TOKENS) || 'null');
  } catch {
    return null;
  }
}

function saveSession(value) {
  if (value) sessionStorage.setItem(TOKENS, JSON.stringify(value));
  else sessionStorage.removeItem(TOKENS);
}

export function logout() {
  saveSession(null);
}

async function parse(res) {
  const text = await res.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  if (!res.ok) {
    const code = body?.error?.code || body?.code || 'http_' + res.status;
    const message = body?.error?.message || body?.message || `Request failed (${res.status})`;
    throw new ApiError(res.status, code, message);
  }
  return body;
}

async function send(method, path, body, token) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch('/api/v1' + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'network', 'The server could not be reached. Check the connection.');
  }
  return res;
}

let refreshing = null;

/** Trades the refresh token for a new pair once, however many requests asked at once. */
async function refresh() {
  const current = session();
  if (!current?.refreshToken) throw new ApiError(401, 'unauthorized', 'Please log in again.');
  refreshing ??= (async () => {
    try {
      const pair = await parse(await send('POST', '/auth/refresh', { refreshToken: current.refreshToken }));
      saveSession({ ...current, ...pair });
    } catch (e) {
      saveSession(null);
      throw e;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** An authenticated request; an expired access token is refreshed and the request retried. */
export async function api(method, path, body) {
  let res = await send(method, path, body, session()?.accessToken);
  if (res.status === 401) {
    const err = await parse(res).catch((e) => e);
    if (err.code !== 'token_expired') {
      saveSession(null);
      throw err;
    }
    await refresh();
    res = await send(method, path, body, session()?.accessToken);
  }
  return parse(res);
}

/** The raw response of an authenticated GET (exports are files, not JSON). */
export async function download(path) {
  let res = await send('GET', path, undefined, session()?.accessToken);
  if (res.status === 401) {
    await refresh();
    res = await send('GET', path, undefined, session()?.accessToken);
  }
  if (!res.ok) await parse(res);
  return res;
}

export async function login(username, password) {
  const body = await parse(await send('POST', '/auth/login', { username, password }));
  saveSession(body);
  return body;
}

export async function register(username, password, preferredLanguage) {
  return parse(await send('POST', '/auth/register', { username, password, preferredLanguage }));
}

/** `ws(s)://host<path>?token=…` for the current session. */
export function socketUrl(path, params = {}) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = new URLSearchParams({ ...params, token: session()?.accessToken || '' });
  return `${scheme}//${location.host}${path}?${query}`;
}
