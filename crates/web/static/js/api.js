// REST calls (docs/protocol.md). The session token is kept in sessionStorage: it dies
// with the tab and is never put in a URL.

const TOKEN_KEY = 'confide.token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || '';
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

async function request(method, path, body, { text = false } = {}) {
  const headers = { Accept: text ? 'text/plain' : 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(`/api${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection.');
  }
  if (res.status === 204) return null;
  if (text && res.ok) return res.text();
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  if (!res.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(res.status, e.code, e.message);
  }
  return data;
}

/** A REST call for the E2EE worker's key layer (key directory, audit log): the worker
 * never holds the session token, it asks the page (e2ee.js). Only these paths. */
export function keyLayerRequest(method, path, body, text) {
  if (!/^\/(devices|directory|audit)\//.test(path)) {
    return Promise.reject(new ApiError(0, 'forbidden_path', 'not a key-layer path'));
  }
  return request(method, path, body, { text });
}

/** Any REST call of the clinic pages (`path` under /api); rejects with ApiError. */
export function call(method, path, body) {
  return request(method, path, body);
}

export const api = {
  login: (username, password, totp, recoveryCode) =>
    request('POST', '/login', totp ? { username, password, totp }
      : recoveryCode ? { username, password, recovery_code: recoveryCode } : { username, password }),
  logout: () => request('POST', '/logout'),
  me: () => request('GET', '/me'),
  appointments: () => request('GET', '/appointments'),
  consentTerms: () => request('GET', '/consent/terms'),
  consentStatus: () => request('GET', '/consent'),
  acceptConsent: (version) => request('POST', '/consent', { version }),
  createInvite: (appointment, label) => request('POST', `/appointments/${appointment}/invites`, { label }),
  redeemInvite: (inviteToken, termsVersion) =>
    request('POST', '/invites/redeem', { invite_token: inviteToken, accept_terms_version: termsVersion }),
};
