// Small DOM helpers shared by the views. Text is always set with textContent, never
// parsed as HTML, so nothing a peer or the server sends can inject markup.

export const $ = (id) => document.getElementById(id);

const VIEWS = ['loading', 'login', 'appointments', 'precall', 'consent', 'waiting', 'call', 'message',
  'activate', 'account', 'frontdesk', 'admin'];

/** Show one view, hide the others, and move focus to its heading for screen readers. */
export function showView(name) {
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  document.body.dataset.view = name;
  const view = $(`view-${name}`);
  const heading = view.querySelector('h1');
  document.title = heading && heading.textContent.trim() ? `${heading.textContent.trim()} · Confide` : 'Confide';
  if (heading && name !== 'call') {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

/** The status banner at the top (reconnecting, warnings). `null` hides it. */
export function banner(text) {
  const b = $('banner');
  if (!text) {
    b.hidden = true;
    b.textContent = '';
  } else {
    b.textContent = text;
    b.hidden = false;
  }
}

/** A full-page message (refused, ended, unsupported). `kind` goes to data-kind for tests. */
export function showMessage(kind, title, body, { home = true } = {}) {
  $('message-title').textContent = title;
  $('message-body').textContent = body;
  $('message-home').hidden = !home;
  $('view-message').dataset.kind = kind;
  showView('message');
}

export function setError(id, text) {
  const el = $(id);
  el.textContent = text || '';
  el.hidden = !text;
}

export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else if (k.startsWith('aria-') || k === 'role') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

export function formatWhen(unixSecs) {
  const d = new Date(unixSecs * 1000);
  return d.toLocaleString(undefined, { weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' });
}

/** "12345678901234567890" -> "12345 67890 12345 67890" */
export function groupDigits(code) {
  return String(code).replace(/\s+/g, '').replace(/(.{5})(?=.)/g, '$1 ');
}
