// Small DOM helpers shared by the views. Text is always set with textContent, never
// parsed as HTML, so nothing a peer or the server sends can inject markup.

export const $ = (id) => document.getElementById(id);

const VIEWS = ['loading', 'login', 'appointments', 'precall', 'consent', 'waiting', 'call', 'message',
  'activate', 'account', 'frontdesk', 'admin'];

/** Show one view, hide the others, and move focus to its heading for screen readers
 * (only when the view changes: showing the call again after a reconnection must not
 * pull focus out of the chat box). */
export function showView(name) {
  const changed = document.body.dataset.view !== name;
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  document.body.dataset.view = name;
  const view = $(`view-${name}`);
  const heading = view.querySelector('h1');
  document.title = heading && heading.textContent.trim() ? `${heading.textContent.trim()} · Confide` : 'Confide';
  if (heading && changed) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

/**
 * Ask before something that cannot be undone, in a modal dialog (focus stays inside,
 * Escape cancels, focus goes back to where it was). Resolves true when confirmed.
 * The safe choice (`cancel`) has the focus first.
 */
export function confirmDialog({ title, body, ok, cancel = 'Cancel', danger = false }) {
  const dlg = $('confirm-dialog');
  const back = document.activeElement;
  $('confirm-title').textContent = title;
  $('confirm-body').textContent = body;
  $('confirm-ok').textContent = ok;
  $('confirm-cancel').textContent = cancel;
  $('confirm-ok').className = danger ? 'danger' : 'primary';
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => {
      if (back && back.isConnected && typeof back.focus === 'function') back.focus();
      resolve(dlg.returnValue === 'ok');
    }, { once: true });
    dlg.showModal();
    $('confirm-cancel').focus();
  });
}

/** Closes the confirmation dialog if it is open (the call ended under it). */
export function closeDialog() {
  const dlg = $('confirm-dialog');
  if (dlg.open) dlg.close('');
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

/** "14:30" */
export function formatTime(unixSecs) {
  return new Date(unixSecs * 1000).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/** 1800 -> "30 min", 5400 -> "1 h 30 min" */
export function formatDuration(secs) {
  const min = Math.max(1, Math.round(secs / 60));
  const h = Math.floor(min / 60);
  const m = min % 60;
  if (h === 0) return `${m} min`;
  return m === 0 ? `${h} h` : `${h} h ${m} min`;
}

/**
 * Where an appointment stands at `nowSecs`, in words: `now` (between its start and its
 * end), `soon` (starts within the hour: "In 10 min"), `later`, or `past` (ended).
 */
export function timing(start, durationS, nowSecs) {
  const end = start + durationS;
  if (nowSecs >= end) return { state: 'past', text: 'Ended' };
  if (nowSecs >= start) return { state: 'now', text: 'Now' };
  const min = Math.ceil((start - nowSecs) / 60);
  if (min <= 60) return { state: 'soon', text: `In ${min} min` };
  return { state: 'later', text: '' };
}

/** "12345 67890" -> "1 2 3 4 5, 6 7 8 9 0": a screen reader reads it digit by digit. */
export function spokenDigits(code) {
  return String(code).trim().split(/\s+/).map((g) => g.split('').join(' ')).join(', ');
}

/** "12345678901234567890" -> "12345 67890 12345 67890" */
export function groupDigits(code) {
  return String(code).replace(/\s+/g, '').replace(/(.{5})(?=.)/g, '$1 ');
}
