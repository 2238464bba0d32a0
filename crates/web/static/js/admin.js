// Administration: accounts, sessions, the audit trail, break-glass and settings, one
// tab each (#/admin/<tab>). Accounts is the panel account.js provides.
//
// REST (docs/protocol.md, "Administration"): /api/admin/accounts*, /api/admin/audit,
// /api/admin/audit/verify, /package, /report, /api/admin/accounts/{id}/sessions*,
// /api/admin/break-glass, /api/admin/settings, and /api/patients to find a patient by
// name. Everything shown is set as text, never parsed as HTML.

import { $, showView, el, setError } from './ui.js';
import { token } from './api.js';
import { renderAccountAdmin } from './account.js';

const TABS = [
  ['accounts', 'Accounts'],
  ['sessions', 'Sessions'],
  ['audit', 'Audit trail'],
  ['break-glass', 'Break-glass'],
  ['settings', 'Settings'],
];

let timers = [];

function clearTimers() {
  for (const t of timers) clearInterval(t);
  timers = [];
}

export async function showAdmin(ctx, tab) {
  clearTimers();
  const current = TABS.some(([k]) => k === tab) ? tab : 'accounts';
  const nav = el('nav', { class: 'tabs', 'aria-label': 'Administration sections' },
    el('ul', {}, ...TABS.map(([k, text]) => {
      const a = el('a', { href: `#/admin/${k}`, text, 'data-tab': k });
      if (k === current) a.setAttribute('aria-current', 'page');
      return el('li', {}, a);
    })));
  const panel = el('section', { id: 'admin-panel', class: 'admin-panel', 'data-tab': current });
  $('admin-body').replaceChildren(nav, panel);
  showView('admin');
  const render = {
    accounts: (p) => {
      p.setAttribute('aria-label', 'Accounts');
      return renderAccountAdmin(p, ctx);
    },
    sessions: (p) => sessionsTab(p, ctx),
    audit: (p) => auditTab(p, ctx),
    'break-glass': (p) => breakGlassTab(p, ctx),
    settings: (p) => settingsTab(p, ctx),
  }[current];
  await render(panel);
}

// ------------------------------------------------------------------ helpers

/** A REST call; a lost session goes to the login page (resolves undefined). */
async function rest(ctx, method, path, body) {
  try {
    return await ctx.call(method, path, body);
  } catch (e) {
    if (ctx.authFailed(e)) return undefined;
    throw e;
  }
}

function field(id, text, control, help) {
  const f = el('div', { class: 'field' }, el('label', { htmlFor: id, text }), control);
  if (help) {
    control.setAttribute('aria-describedby', `${id}-help`);
    f.append(el('p', { id: `${id}-help`, class: 'help', text: help }));
  }
  return f;
}

function errorLine(id) {
  return el('p', { id, class: 'error', role: 'alert', hidden: true });
}

/** `input` suggesting the options of datalist `id` (`list` is an attribute only). */
function withList(input, id) {
  input.setAttribute('list', id);
  return input;
}

const when = (ms) => (ms ? new Date(ms).toLocaleString() : '—');
const pad = (n) => String(n).padStart(2, '0');
/** A datetime-local value for `d` (local time). */
const localInput = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
const msOf = (v) => {
  const t = new Date(v).getTime();
  return Number.isNaN(t) ? null : t;
};

/** A table with a caption, column headers and one row per item. */
function table(caption, headers, rows) {
  return el('div', { class: 'table-wrap', tabIndex: 0, role: 'region', 'aria-label': caption },
    el('table', { class: 'data' },
      el('caption', { text: caption }),
      el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, ...rows.map((cells) => el('tr', {}, ...cells.map((c) => (c instanceof Node ? el('td', {}, c) : el('td', { text: c == null ? '' : String(c) }))))))));
}

/**
 * `account:N` from what was typed: `account:N`, `N`, or words of a patient's name (the
 * front desk's search: exactly one match is taken, several are offered in `choices`).
 */
async function resolvePatient(ctx, text, choices, onChoose) {
  const t = text.trim();
  const m = t.match(/^(?:account:)?(\d+)$/);
  if (m) return `account:${m[1]}`;
  choices.replaceChildren();
  const isDate = /^\d{4}-\d{2}-\d{2}$/.test(t);
  const found = await rest(ctx, 'GET', `/patients?${new URLSearchParams(isDate ? { dob: t } : { name: t })}`);
  if (!found) return null;
  if (found.length === 1) return `account:${found[0].id}`;
  if (found.length === 0) throw new Error('No patient matches that name.');
  choices.replaceChildren(...found.map((p) => el('li', {},
    el('button', {
      type: 'button',
      text: `${p.label}${p.date_of_birth ? `, born ${p.date_of_birth}` : ''} (account:${p.id})`,
      onclick: () => { choices.replaceChildren(); onChoose(`account:${p.id}`); },
    }))));
  choices.querySelector('button').focus();
  return null;
}

// ------------------------------------------------------------------ sessions

async function sessionsTab(panel, ctx) {
  panel.setAttribute('aria-labelledby', 'admin-sessions-title');
  const select = el('select', { id: 'admin-sessions-account' });
  const out = el('div', { id: 'admin-sessions-list', 'aria-live': 'polite' });
  panel.replaceChildren(
    el('h2', { id: 'admin-sessions-title', text: 'Sessions' }),
    el('p', { class: 'help', text: 'Who is logged in where. Ending a session logs that browser out at once; an open consultation on it is closed.' }),
    el('form', { id: 'admin-sessions-form', noValidate: true },
      field('admin-sessions-account', 'Person', select),
      errorLine('admin-sessions-error'),
      el('button', { type: 'submit', text: 'Show sessions' })),
    out);
  let accounts = [];
  try {
    accounts = (await rest(ctx, 'GET', '/admin/accounts')) || [];
  } catch (e) {
    setError('admin-sessions-error', e.message);
  }
  select.replaceChildren(...accounts.map((a) => el('option', { value: String(a.id), text: `${a.username} (${a.role})${a.disabled ? ', disabled' : ''}` })));
  const show = async () => {
    setError('admin-sessions-error', null);
    const id = Number(select.value);
    const who = select.selectedOptions[0] ? select.selectedOptions[0].textContent : `account:${id}`;
    let list;
    try {
      list = await rest(ctx, 'GET', `/admin/accounts/${id}/sessions`);
    } catch (e) {
      setError('admin-sessions-error', e.message);
      return;
    }
    if (!list) return;
    const rows = list.map((s) => [s.id, s.kind === 'full' ? 'logged in' : 'enrolling a second factor', when(s.created_at), when(s.last_seen), when(s.expires_at),
      el('button', {
        type: 'button',
        text: 'End this session',
        'aria-label': `End this session (${s.id}) of ${who}`,
        onclick: async () => {
          try {
            await rest(ctx, 'DELETE', `/admin/accounts/${id}/sessions/${s.id}`);
            await show();
          } catch (e) { setError('admin-sessions-error', e.message); }
        },
      })]);
    const endAll = el('button', { type: 'button', class: 'danger', text: `End all sessions of ${who}` });
    endAll.addEventListener('click', async () => {
      try {
        const r = await rest(ctx, 'DELETE', `/admin/accounts/${id}/sessions`);
        await show();
        if (r) out.prepend(el('p', { class: 'ok', role: 'status', text: `Ended ${r.revoked} session${r.revoked === 1 ? '' : 's'}.` }));
      } catch (e) { setError('admin-sessions-error', e.message); }
    });
    out.replaceChildren(list.length
      ? table(`${list.length} active session${list.length === 1 ? '' : 's'} of ${who}`, ['Session', 'Kind', 'Started', 'Last seen', 'Ends at the latest', ''], rows)
      : el('p', { text: `${who} has no active session.` }));
    if (list.length) out.append(el('div', { class: 'actions' }, endAll));
  };
  $('admin-sessions-form').addEventListener('submit', (e) => { e.preventDefault(); show(); });
}

// ------------------------------------------------------------------ audit trail

async function auditTab(panel, ctx) {
  panel.setAttribute('aria-labelledby', 'admin-audit-title');
  const now = new Date();
  const dayAgo = new Date(now.getTime() - 86_400_000);
  const inHour = new Date(now.getTime() + 3_600_000);
  const actions = el('datalist', { id: 'admin-audit-actions' }, ...[
    'appointments_listed', 'appointment_booked', 'appointment_moved', 'appointment_cancelled', 'patient_searched',
    'patient_created', 'waiting_rooms_viewed', 'join_ok', 'join_waiting', 'admitted', 'login_ok', 'login_failed',
    'break_glass_granted', 'break_glass_access', 'audit_read', 'audit_exported', 'token_revoked',
  ].map((a) => el('option', { value: a })));
  const choices = el('ul', { id: 'admin-audit-patient-choices', class: 'fd-matches', 'aria-label': 'Matching patients' });
  const reportChoices = el('ul', { id: 'admin-report-patient-choices', class: 'fd-matches', 'aria-label': 'Matching patients' });
  panel.replaceChildren(
    el('h2', { id: 'admin-audit-title', text: 'Audit trail' }),
    el('section', { 'aria-labelledby': 'admin-verify-title', class: 'admin-block' },
      el('h3', { id: 'admin-verify-title', text: 'Verify the log' }),
      el('p', { class: 'help', text: 'Recomputes every entry and checks every signed checkpoint, as the command `confide audit verify` does.' }),
      el('button', { type: 'button', id: 'admin-verify', class: 'primary', text: 'Verify the audit log' }),
      el('p', { id: 'admin-verify-result', role: 'status', class: 'verify-result' })),
    el('section', { 'aria-labelledby': 'admin-entries-title', class: 'admin-block' },
      el('h3', { id: 'admin-entries-title', text: 'Entries' }),
      el('form', { id: 'admin-audit-form', noValidate: true },
        el('div', { class: 'fd-row' },
          field('admin-audit-actor', 'Person', el('input', { id: 'admin-audit-actor', autocomplete: 'off' }), 'Who acted: account:N, guest:N or anonymous.'),
          field('admin-audit-patient', 'Patient', el('input', { id: 'admin-audit-patient', autocomplete: 'off' }), 'account:N, or a name to look up.'),
          field('admin-audit-action', 'Action', withList(el('input', { id: 'admin-audit-action', autocomplete: 'off' }), 'admin-audit-actions'))),
        actions,
        choices,
        el('div', { class: 'fd-row' },
          field('admin-audit-from', 'From', el('input', { id: 'admin-audit-from', type: 'datetime-local', value: localInput(dayAgo) })),
          field('admin-audit-to', 'To', el('input', { id: 'admin-audit-to', type: 'datetime-local', value: localInput(inHour) }))),
        errorLine('admin-audit-error'),
        el('button', { type: 'submit', text: 'Show entries' })),
      el('div', { id: 'admin-audit-entries' })),
    el('section', { 'aria-labelledby': 'admin-report-title', class: 'admin-block' },
      el('h3', { id: 'admin-report-title', text: 'Access report for a patient' }),
      el('p', { class: 'help', text: 'Every account that touched the patient\'s records in the period, with counts and refusals.' }),
      el('form', { id: 'admin-report-form', noValidate: true },
        el('div', { class: 'fd-row' },
          field('admin-report-patient', 'Patient', el('input', { id: 'admin-report-patient', autocomplete: 'off' }), 'account:N, or a name to look up.'),
          field('admin-report-from', 'From', el('input', { id: 'admin-report-from', type: 'datetime-local', value: localInput(dayAgo) })),
          field('admin-report-to', 'To', el('input', { id: 'admin-report-to', type: 'datetime-local', value: localInput(inHour) }))),
        reportChoices,
        errorLine('admin-report-error'),
        el('button', { type: 'submit', text: 'Show report' })),
      el('div', { id: 'admin-report-out' })),
    el('section', { 'aria-labelledby': 'admin-package-title', class: 'admin-block' },
      el('h3', { id: 'admin-package-title', text: 'Auditor\'s package' }),
      el('p', { class: 'help', text: 'The entries of the period with their proofs, for an auditor to check offline with `confide audit check`.' }),
      el('form', { id: 'admin-package-form', noValidate: true },
        el('div', { class: 'fd-row' },
          field('admin-package-from', 'From', el('input', { id: 'admin-package-from', type: 'datetime-local', value: localInput(dayAgo) })),
          field('admin-package-to', 'To', el('input', { id: 'admin-package-to', type: 'datetime-local', value: localInput(inHour) }))),
        errorLine('admin-package-error'),
        el('button', { type: 'submit', text: 'Download package' })),
      el('p', { id: 'admin-package-result', role: 'status' })));

  $('admin-verify').addEventListener('click', () => verify(ctx));
  const runEntries = async (patientOverride) => {
    setError('admin-audit-error', null);
    const q = new URLSearchParams({ limit: '500' });
    const actor = $('admin-audit-actor').value.trim();
    const action = $('admin-audit-action').value.trim();
    if (actor) q.set('actor', actor);
    if (action) q.set('action', action);
    const from = msOf($('admin-audit-from').value);
    const to = msOf($('admin-audit-to').value);
    if (from !== null) q.set('from', String(from));
    if (to !== null) q.set('to', String(to));
    try {
      const typed = $('admin-audit-patient').value;
      const patient = patientOverride || (typed.trim() ? await resolvePatient(ctx, typed, choices, (p) => { $('admin-audit-patient').value = p; runEntries(p); }) : null);
      if (typed.trim() && !patient) return;
      if (patient) { q.set('patient', patient); $('admin-audit-patient').value = patient; }
      const list = await rest(ctx, 'GET', `/admin/audit?${q}`);
      if (!list) return;
      $('admin-audit-entries').replaceChildren(list.length
        ? table(`${list.length} entr${list.length === 1 ? 'y' : 'ies'}${list.length === 500 ? ' (the first 500)' : ''}`,
          ['#', 'Time', 'Person', 'Role', 'Action', 'Target', 'Patient', 'Outcome', 'Detail'],
          list.map((e) => [e.seq, when(e.at), e.actor, e.role || '', e.action, e.target || '', e.patient || '', e.outcome, e.detail || '']))
        : el('p', { role: 'status', text: 'No entries match.' }));
    } catch (e) {
      setError('admin-audit-error', e.message);
    }
  };
  $('admin-audit-form').addEventListener('submit', (e) => { e.preventDefault(); runEntries(null); });

  const runReport = async (patientOverride) => {
    setError('admin-report-error', null);
    const from = msOf($('admin-report-from').value);
    const to = msOf($('admin-report-to').value);
    if (from === null || to === null) { setError('admin-report-error', 'Enter the start and the end of the period.'); return; }
    try {
      const typed = $('admin-report-patient').value;
      if (!typed.trim() && !patientOverride) { setError('admin-report-error', 'Enter the patient.'); return; }
      const patient = patientOverride || await resolvePatient(ctx, typed, reportChoices, (p) => { $('admin-report-patient').value = p; runReport(p); });
      if (!patient) return;
      $('admin-report-patient').value = patient;
      const r = await rest(ctx, 'GET', `/admin/audit/report?${new URLSearchParams({ patient, from: String(from), to: String(to) })}`);
      if (!r) return;
      $('admin-report-out').replaceChildren(
        el('p', { role: 'status', text: `${r.patient}: ${r.appointments} appointment${r.appointments === 1 ? '' : 's'} on record; ${r.rows.length} account${r.rows.length === 1 ? '' : 's'} touched the record in the period.` }),
        r.rows.length ? table(`Accesses to ${r.patient}'s records`, ['Account', 'Role', 'Entries', 'Refused', 'First', 'Last', 'Actions'],
          r.rows.map((x) => [x.actor, x.role || '', x.count, x.refused, x.first, x.last, x.actions.join(', ')])) : null);
    } catch (e) {
      setError('admin-report-error', e.status === 404 ? 'That account is not a patient.' : e.message);
    }
  };
  $('admin-report-form').addEventListener('submit', (e) => { e.preventDefault(); runReport(null); });
  $('admin-package-form').addEventListener('submit', (e) => { e.preventDefault(); downloadPackage(ctx); });
}

async function verify(ctx) {
  const out = $('admin-verify-result');
  const btn = $('admin-verify');
  btn.disabled = true;
  out.className = 'verify-result';
  out.textContent = 'Verifying…';
  try {
    const r = await rest(ctx, 'POST', '/admin/audit/verify');
    if (!r) return;
    if (r.ok) {
      out.classList.add('ok');
      out.dataset.result = 'ok';
      out.textContent = `OK: all ${r.size} entries match, ${r.checkpoints} signed checkpoint${r.checkpoints === 1 ? '' : 's'} verified, signed up to entry ${r.signed_size}`
        + (r.unsigned_tail ? ` (${r.unsigned_tail} newest not signed yet).` : '.');
    } else {
      out.classList.add('error');
      out.dataset.result = 'failed';
      out.textContent = `FAILED: ${r.first_bad ? r.first_bad.message : 'the log does not verify'}. Keep this page and tell the security officer.`;
    }
  } catch (e) {
    out.dataset.result = 'error';
    out.textContent = `Could not verify: ${e.message}`;
  } finally {
    btn.disabled = false;
  }
}

/** Fetch the package with the session's token and hand it to the browser as a file. */
async function downloadPackage(ctx) {
  setError('admin-package-error', null);
  const from = msOf($('admin-package-from').value);
  const to = msOf($('admin-package-to').value);
  if (from === null || to === null || from >= to) {
    setError('admin-package-error', 'Enter a period whose start is before its end.');
    return;
  }
  const out = $('admin-package-result');
  out.textContent = 'Preparing the package…';
  let res;
  try {
    res = await fetch(`/api/admin/audit/package?from=${from}&to=${to}`, {
      headers: { Authorization: `Bearer ${token()}` },
      cache: 'no-store',
    });
  } catch {
    out.textContent = '';
    setError('admin-package-error', 'The server cannot be reached.');
    return;
  }
  if (res.status === 401) { ctx.authFailed({ status: 401, code: 'session_expired' }); return; }
  if (!res.ok) {
    out.textContent = '';
    setError('admin-package-error', res.status === 404 ? 'Nothing was recorded in that period.' : `The package could not be made (HTTP ${res.status}).`);
    return;
  }
  const blob = await res.blob();
  const disp = res.headers.get('content-disposition') || '';
  const name = (disp.match(/filename="([^"]+)"/) || [])[1] || 'confide-audit.jsonl';
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  out.textContent = `Downloaded ${name} (${blob.size} bytes). An auditor checks it with: confide audit check ${name}`;
}

// ------------------------------------------------------------------ break-glass

async function breakGlassTab(panel, ctx) {
  panel.setAttribute('aria-labelledby', 'admin-bg-title');
  const choices = el('ul', { id: 'admin-bg-choices', class: 'fd-matches', 'aria-label': 'Matching patients' });
  panel.replaceChildren(
    el('h2', { id: 'admin-bg-title', text: 'Break-glass (emergency access)' }),
    el('p', { class: 'help', text: 'Opens one patient\'s appointments, with their contact details, for one hour. State why; the request, the grant and every use are recorded with high priority and reviewed.' }),
    el('form', { id: 'admin-bg-form', noValidate: true },
      field('admin-bg-patient', 'Patient', el('input', { id: 'admin-bg-patient', autocomplete: 'off' }), 'account:N, or a name to look up.'),
      choices,
      field('admin-bg-reason', 'Reason', el('textarea', { id: 'admin-bg-reason', rows: 3, maxLength: 1000 }), 'At least 10 characters: what happened, and why this access is needed.'),
      el('div', { class: 'fd-row' },
        field('admin-bg-password', 'Your password', el('input', { id: 'admin-bg-password', type: 'password', autocomplete: 'current-password' })),
        field('admin-bg-totp', 'Authentication code', el('input', { id: 'admin-bg-totp', inputMode: 'numeric', autocomplete: 'one-time-code', maxLength: 8 }))),
      errorLine('admin-bg-error'),
      el('button', { type: 'submit', class: 'danger', text: 'Request emergency access' })),
    el('div', { id: 'admin-bg-grant', role: 'status' }),
    el('h3', { id: 'admin-bg-list-title', text: 'Grants for review' }),
    el('div', { id: 'admin-bg-list' }));
  const request = async (patientOverride) => {
    setError('admin-bg-error', null);
    const reason = $('admin-bg-reason').value.trim();
    if (reason.length < 10) { setError('admin-bg-error', 'State the reason (at least 10 characters).'); $('admin-bg-reason').focus(); return; }
    try {
      const typed = $('admin-bg-patient').value;
      if (!typed.trim() && !patientOverride) { setError('admin-bg-error', 'Enter the patient.'); return; }
      const patient = patientOverride || await resolvePatient(ctx, typed, choices, (p) => { $('admin-bg-patient').value = p; request(p); });
      if (!patient) return;
      $('admin-bg-patient').value = patient;
      const r = await rest(ctx, 'POST', '/admin/break-glass', {
        patient: Number(patient.split(':')[1]),
        reason,
        password: $('admin-bg-password').value,
        totp: $('admin-bg-totp').value.trim(),
      });
      if (!r) return;
      $('admin-bg-password').value = '';
      $('admin-bg-totp').value = '';
      showGrant(r);
      await loadGrants(ctx);
    } catch (e) {
      const text = e.status === 401 ? 'Your password or code was not accepted.'
        : e.status === 429 ? 'Too many attempts. Wait a few minutes.'
          : e.message;
      setError('admin-bg-error', text);
    }
  };
  $('admin-bg-form').addEventListener('submit', (e) => { e.preventDefault(); request(null); });
  await loadGrants(ctx);
}

/** The grant just made, with its expiry and the minutes left (kept up to date). */
function showGrant(g) {
  const box = $('admin-bg-grant');
  const left = el('span', { class: 'expiry' });
  const tick = () => {
    const mins = Math.max(0, Math.ceil((g.expires_at - Date.now()) / 60_000));
    left.textContent = mins > 0 ? `${mins} minute${mins === 1 ? '' : 's'} left` : 'expired';
  };
  tick();
  timers.push(setInterval(tick, 15_000));
  box.replaceChildren(el('p', { class: 'grant' },
    `Emergency access granted (grant ${g.grant}) to account:${g.patient}'s appointments until `,
    el('strong', { text: new Date(g.expires_at).toLocaleTimeString() }), ' — ', left, '.'));
}

async function loadGrants(ctx) {
  let list;
  try {
    list = await rest(ctx, 'GET', '/admin/break-glass');
  } catch (e) {
    $('admin-bg-list').replaceChildren(el('p', { class: 'error', role: 'alert', text: e.message }));
    return;
  }
  if (!list) return;
  $('admin-bg-list').replaceChildren(list.length
    ? table(`${list.length} grant${list.length === 1 ? '' : 's'}, newest first`, ['Grant', 'Granted to', 'Patient', 'Reason', 'Granted at', 'Expires', 'Status'],
      list.map((g) => [g.grant, g.admin.label, `${g.patient.label} (account:${g.patient.id})`, g.reason, when(g.created_at), when(g.expires_at), g.active ? 'active' : 'expired']))
    : el('p', { text: 'No emergency access has been granted.' }));
}

// ------------------------------------------------------------------ settings

async function settingsTab(panel, ctx) {
  panel.setAttribute('aria-labelledby', 'admin-settings-title');
  panel.replaceChildren(el('h2', { id: 'admin-settings-title', text: 'Settings' }),
    el('p', { class: 'help', text: 'The settings this server runs with. They are set where the server is started (docs/operations.md), not here.' }));
  let s;
  try {
    s = await rest(ctx, 'GET', '/admin/settings');
  } catch (e) {
    panel.append(el('p', { class: 'error', role: 'alert', text: e.message }));
    return;
  }
  if (!s) return;
  const mins = (secs) => `${Math.round(secs / 60)} minutes`;
  const rows = [
    ['Name shown in authenticator apps', s.issuer],
    ['Automatic logoff after inactivity', mins(s.idle_timeout_s)],
    ['Longest session', `${Math.round(s.session_lifetime_s / 3600)} hours`],
    ['Joining opens before the start (and stays open after the end)', mins(s.join_grace_s)],
    ['Rejoining without the waiting room after a dropped connection', `${s.rejoin_grace_s} seconds`],
    ['Guest invite links last', `${Math.round(s.invite_ttl_s / 3600)} hours`],
    ['Emergency access lasts', mins(s.break_glass_ttl_s)],
    ['Consent terms version', s.terms_version],
    ['People in one consultation', String(s.max_participants)],
    ['Appointment length', `${s.booking.duration_min_minutes} to ${s.booking.duration_max_minutes} minutes`],
    ['Longest reason', `${s.booking.reason_max_bytes} bytes`],
    ['Longest schedule period', `${s.booking.schedule_max_days} days`],
    ['Messages per second per connection', String(s.ws_messages_per_s)],
    ['Unauthenticated connections per address', String(s.ws_unauthenticated_per_address)],
    ['Trusted reverse proxies', s.trusted_proxies.length ? s.trusted_proxies.join(', ') : 'none'],
    ['Browser test hooks', s.client_test_hooks ? 'on (test build)' : 'off'],
  ];
  const dl = el('dl', { class: 'settings' });
  for (const [k, v] of rows) dl.append(el('dt', { text: k }), el('dd', { text: v }));
  panel.append(dl);
}
