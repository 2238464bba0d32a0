// The person's own account (#/account): change the password, add or change the second
// factor, see and renew the recovery codes. Every change asks for the password again.
//
// Also the accounts panel of administration, renderAccountAdmin(container, ctx), which
// admin.js calls: create an account (the page shows its single-use activation link to
// pass on), reset a password or a second factor (a fresh link), disable and enable.
// The admin never sees or sets anyone's password or second factor.

import { call, ApiError } from './api.js';
import { $, showView, el, setError } from './ui.js';
import { newPasswordFields, enrolSecondFactor, recoveryCodesPanel, explain } from './onboarding.js';

let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

function passwordField(label, autocomplete = 'current-password') {
  const id = nextId('pw');
  const input = el('input', { id, type: 'password', autocomplete, maxLength: 1024 });
  return { node: el('div', { class: 'field' }, el('label', { htmlFor: id, text: label }), input), input };
}

/** A status line that screen readers announce (success messages). */
function statusLine() {
  return el('p', { class: 'ok', role: 'status', hidden: true });
}

function say(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

/** A section with its heading. */
function section(title, ...children) {
  const id = nextId('sec');
  return el('section', { class: 'subpanel', 'aria-labelledby': id }, el('h2', { id, text: title }), ...children);
}

export async function showAccount(ctx) {
  const body = $('account-body');
  body.replaceChildren(el('p', { text: 'Loading…' }));
  showView('account');
  let acc;
  try {
    acc = await call('GET', '/account');
  } catch (e) {
    if (ctx.authFailed(e)) return;
    body.replaceChildren(el('p', { class: 'error', role: 'alert', text: explain(e) }));
    return;
  }
  const summary = el('dl', { class: 'facts' },
    el('dt', { text: 'Username' }), el('dd', { id: 'account-username', text: acc.username }),
    el('dt', { text: 'Role' }), el('dd', { text: acc.role }),
    el('dt', { text: 'Authenticator app' }), el('dd', { id: 'account-mfa', text: acc.mfa_enabled ? 'On' : 'Off' }),
  );
  if (acc.mfa_enabled) {
    summary.append(el('dt', { text: 'Recovery codes left' }),
      el('dd', { id: 'account-codes-left', text: String(acc.recovery_codes_remaining) }));
  }
  body.replaceChildren(summary, passwordSection(ctx, acc), secondFactorSection(ctx, acc));
  if (acc.mfa_enabled) body.append(recoverySection(ctx, acc));
}

function passwordSection(ctx, acc) {
  const current = passwordField('Current password');
  const fresh = newPasswordFields({ username: acc.username, minLength: acc.password_min_length });
  const errId = nextId('chpw-error');
  const ok = statusLine();
  ok.id = 'password-changed';
  const submit = el('button', { type: 'submit', class: 'primary', text: 'Change password' });
  const form = el('form', { id: 'password-form', noValidate: true },
    current.node, fresh.node,
    el('p', { id: errId, class: 'error', role: 'alert', hidden: true }),
    el('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    say(ok, null);
    if (!current.input.value) { setError(errId, 'Enter your current password.'); current.input.focus(); return; }
    const problem = fresh.check();
    if (problem) { setError(errId, problem); fresh.input.focus(); return; }
    submit.disabled = true;
    setError(errId, null);
    try {
      const r = await call('POST', '/account/password', { current_password: current.input.value, new_password: fresh.value() });
      form.reset();
      fresh.input.dispatchEvent(new Event('input'));
      const n = r.revoked_sessions;
      say(ok, `Your password was changed. ${n === 0 ? 'No other session was open.' : `${n} other ${n === 1 ? 'session was' : 'sessions were'} logged out.`}`);
    } catch (ex) {
      if (ex instanceof ApiError && ex.code === 'session_expired') { ctx.authFailed(ex); return; }
      setError(errId, ex instanceof ApiError && ex.code === 'invalid_credentials'
        ? 'Your current password is not correct.' : explain(ex));
    } finally {
      submit.disabled = false;
    }
  });
  return section('Change your password',
    el('p', { class: 'help', text: 'Changing it logs you out everywhere else: on other computers and phones.' }),
    form, ok);
}

function secondFactorSection(ctx, acc) {
  const area = el('div', {});
  const start = () => {
    const pw = passwordField('Your password');
    const errId = nextId('sf-error');
    const go = el('button', { type: 'submit', class: 'primary', text: 'Continue' });
    const form = el('form', { id: 'second-factor-form', noValidate: true }, pw.node,
      el('p', { id: errId, class: 'error', role: 'alert', hidden: true }),
      el('div', { class: 'actions' }, go));
    const cancelBtn = el('button', { type: 'button', text: 'Cancel' });
    cancelBtn.addEventListener('click', idle);
    go.parentNode.append(cancelBtn);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (!pw.input.value) { setError(errId, 'Enter your password.'); return; }
      go.disabled = true;
      try {
        const done = await enrolSecondFactor(area, { password: pw.input.value, cancel: idle });
        await recoveryCodesPanel(area, done.recovery_codes, { username: acc.username, doneText: 'Done' });
        await showAccount(ctx);
      } catch (ex) {
        if (ex instanceof ApiError && ex.code === 'session_expired') { ctx.authFailed(ex); return; }
        go.disabled = false;
        setError(errId, ex instanceof ApiError && ex.code === 'invalid_credentials'
          ? 'Your password is not correct.' : explain(ex));
      }
    });
    area.replaceChildren(
      el('p', { text: acc.mfa_enabled
        ? 'Your current app keeps working until the new one is confirmed.'
        : 'An authenticator app makes your account much harder to break into.' }),
      form);
    pw.input.focus();
  };
  function idle() {
    const b = el('button', { type: 'button', id: 'second-factor-start', text: acc.mfa_enabled ? 'Change authenticator app' : 'Set up an authenticator app' });
    b.addEventListener('click', start);
    area.replaceChildren(el('p', { text: acc.mfa_enabled
      ? 'You log in with a code from your authenticator app. Changing to a new phone? Set it up again here.'
      : 'You log in with your password only.' }), b);
  }
  idle();
  return section('Authenticator app', area);
}

function recoverySection(ctx, acc) {
  const area = el('div', {});
  const idle = () => {
    const b = el('button', { type: 'button', id: 'recovery-renew', text: 'Make new recovery codes' });
    b.addEventListener('click', start);
    area.replaceChildren(
      el('p', { text: `You have ${acc.recovery_codes_remaining} unused recovery ${acc.recovery_codes_remaining === 1 ? 'code' : 'codes'}. Making new ones voids all the old ones.` }),
      b);
  };
  const start = () => {
    const pw = passwordField('Your password');
    const errId = nextId('rc-error');
    const go = el('button', { type: 'submit', class: 'primary', text: 'Make new codes' });
    const cancelBtn = el('button', { type: 'button', text: 'Cancel' });
    cancelBtn.addEventListener('click', idle);
    const form = el('form', { noValidate: true }, pw.node,
      el('p', { id: errId, class: 'error', role: 'alert', hidden: true }),
      el('div', { class: 'actions' }, go, cancelBtn));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      go.disabled = true;
      try {
        const r = await call('POST', '/account/recovery-codes', { password: pw.input.value });
        await recoveryCodesPanel(area, r.recovery_codes, { username: acc.username, doneText: 'Done' });
        await showAccount(ctx);
      } catch (ex) {
        if (ex instanceof ApiError && ex.code === 'session_expired') { ctx.authFailed(ex); return; }
        go.disabled = false;
        setError(errId, ex instanceof ApiError && ex.code === 'invalid_credentials'
          ? 'Your password is not correct.' : explain(ex));
      }
    });
    area.replaceChildren(form);
    pw.input.focus();
  };
  idle();
  return section('Recovery codes', area);
}

// ------------------------------------------------------------------ administration

const ROLES = [['doctor', 'Doctor'], ['patient', 'Patient'], ['staff', 'Staff'], ['admin', 'Administrator']];

/** The link panel: the activation link to pass on, with a copy button and its expiry. */
function linkPanel(link, { title, who }) {
  const url = `${location.origin}/#/activate/${link.activation_token}`;
  const id = nextId('link');
  const input = el('input', { id, readOnly: true, value: url, class: 'activation-link' });
  const copy = el('button', { type: 'button', text: 'Copy link' });
  const copied = el('p', { role: 'status', class: 'ok', hidden: true });
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(url);
      say(copied, 'Copied.');
    } catch {
      input.select();
      say(copied, 'Select the link and copy it.');
    }
  });
  const until = new Date(link.expires_at).toLocaleString(undefined, { weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' });
  const heading = el('h3', { text: title });
  const panel = el('div', { class: 'link-result', id: 'activation-result', role: 'region', 'aria-label': title },
    heading,
    el('p', { text: `Give this link to ${who}. It works once, until ${until}. Send it by a channel only they read.` }),
    el('label', { htmlFor: id, text: 'Activation link' }), input,
    el('div', { class: 'actions' }, copy), copied);
  return panel;
}

/** The accounts panel of administration (list, filter, create, reset, disable, enable). */
export async function renderAccountAdmin(container, ctx) {
  container.replaceChildren(el('p', { text: 'Loading accounts…' }));
  const result = el('div', { id: 'account-admin-result' });
  const listArea = el('div', {});
  const filter = el('input', { id: 'account-filter', type: 'search', autocomplete: 'off', placeholder: 'Part of a username' });
  let accounts = [];
  const refresh = async () => {
    try {
      accounts = await call('GET', '/admin/accounts');
    } catch (e) {
      if (ctx.authFailed(e)) return;
      listArea.replaceChildren(el('p', { class: 'error', role: 'alert', text: explain(e) }));
      return;
    }
    renderTable(accounts);
  };
  const myId = ctx.me && ctx.me.principal ? Number(ctx.me.principal.replace('account:', '')) : null;

  const act = async (button, path, body, done) => {
    button.disabled = true;
    try {
      const r = await call('POST', path, body);
      await refresh();
      done(r);
    } catch (e) {
      if (ctx.authFailed(e)) return;
      result.replaceChildren(el('p', { class: 'error', role: 'alert', text: explain(e) }));
      button.disabled = false;
    }
  };

  function renderTable(list) {
    const q = filter.value.trim().toLowerCase();
    const rows = list.filter((a) => !q || a.username.toLowerCase().includes(q));
    const table = el('table', { class: 'accounts', id: 'accounts-table' },
      el('caption', { class: 'visually-hidden', text: 'Accounts' }),
      el('thead', {}, el('tr', {},
        ...['Username', 'Role', 'Status', 'Authenticator', 'Actions'].map((h) => el('th', { scope: 'col', text: h })))));
    const tbody = el('tbody', {});
    for (const a of rows) {
      const status = a.disabled ? 'Disabled' : a.activation_pending ? 'Waiting for activation' : 'Active';
      const actions = el('div', { class: 'row-actions' });
      if (a.id !== myId) {
        const reset = (what, label) => {
          const b = el('button', { type: 'button', text: label, 'aria-label': `${label}: ${a.username}` });
          b.addEventListener('click', () => confirmReset(a, what, label, b));
          return b;
        };
        if (!a.disabled) {
          // For an account still waiting, a password reset is simply a new link.
          actions.append(reset('password', a.activation_pending ? 'New activation link' : 'Reset password'));
          // A waiting account may have no password for its owner to prove: a new link
          // (above) is what it needs.
          if (!a.activation_pending && (a.mfa_enabled || a.role !== 'patient')) actions.append(reset('second_factor', 'Reset authenticator'));
          const d = el('button', { type: 'button', class: 'danger', text: 'Disable', 'aria-label': `Disable ${a.username}` });
          d.addEventListener('click', () => act(d, `/admin/accounts/${a.id}/disable`, undefined, () => {
            result.replaceChildren(el('p', { class: 'ok', role: 'status', text: `${a.username} is disabled and logged out everywhere.` }));
          }));
          actions.append(d);
        } else {
          const en = el('button', { type: 'button', text: 'Enable', 'aria-label': `Enable ${a.username}` });
          en.addEventListener('click', () => act(en, `/admin/accounts/${a.id}/enable`, undefined, () => {
            result.replaceChildren(el('p', { class: 'ok', role: 'status', text: `${a.username} can log in again.` }));
          }));
          actions.append(en);
        }
      } else {
        actions.append(el('span', { class: 'help', text: 'Your own account: use Your account.' }));
      }
      tbody.append(el('tr', { 'data-username': a.username },
        el('th', { scope: 'row', text: a.username }),
        el('td', { 'data-label': 'Role', text: a.role }),
        el('td', { 'data-label': 'Status', text: status }),
        el('td', { 'data-label': 'Authenticator', text: a.mfa_enabled ? 'On' : 'Off' }),
        el('td', {}, actions)));
    }
    table.append(tbody);
    listArea.replaceChildren(
      rows.length ? el('div', { class: 'table-scroll', tabIndex: 0, role: 'region', 'aria-label': 'Accounts list' }, table)
        : el('p', { text: 'No account matches.' }));
  }

  function confirmReset(a, what, label, button) {
    const text = a.activation_pending && what === 'password'
      ? `Make a new activation link for ${a.username}? The link you gave them before stops working.`
      : what === 'password'
      ? `Reset the password of ${a.username}? They are logged out everywhere and choose a new password with the link you pass on.`
      : `Reset the authenticator of ${a.username}? They are logged out everywhere, then set up their app again with the link you pass on.`;
    const yes = el('button', { type: 'button', class: 'danger', text: label });
    const no = el('button', { type: 'button', text: 'Cancel' });
    const box = el('div', { class: 'confirm', role: 'group', 'aria-label': `Confirm: ${label}` },
      el('p', { text }), el('div', { class: 'actions' }, yes, no));
    no.addEventListener('click', () => { result.replaceChildren(); button.focus(); });
    yes.addEventListener('click', () => act(yes, `/admin/accounts/${a.id}/reset`, { what }, (r) => {
      const panel = linkPanel(r, { title: `New link for ${a.username}`, who: a.username });
      result.replaceChildren(panel);
      panel.querySelector('h3').tabIndex = -1;
      panel.querySelector('h3').focus();
    }));
    result.replaceChildren(box);
    yes.focus();
  }

  // The create form.
  const f = (label, props, help) => {
    const id = nextId('new');
    const { tag = 'input', ...rest } = props;
    const input = el(tag, { id, ...rest });
    const node = el('div', { class: 'field' }, el('label', { htmlFor: id, text: label }), input);
    if (help) {
      node.append(el('p', { id: `${id}-help`, class: 'help', text: help }));
      input.setAttribute('aria-describedby', `${id}-help`);
    }
    return { node, input };
  };
  const role = f('Role', { tag: 'select', name: 'role' });
  for (const [v, t] of ROLES) role.input.append(el('option', { value: v, text: t }));
  const username = f('Username', { name: 'username', autocomplete: 'off', autocapitalize: 'none', spellcheck: false, maxLength: 64 },
    'Letters, digits and . _ - @; they log in with it.');
  const display = f('Full name', { name: 'display_name', autocomplete: 'off', maxLength: 200 });
  const contact = f('Contact (optional)', { name: 'contact', autocomplete: 'off', maxLength: 200 }, 'An e-mail address or phone number, for your records.');
  const errId = nextId('create-error');
  const submit = el('button', { type: 'submit', class: 'primary', text: 'Create account' });
  const form = el('form', { id: 'create-account-form', noValidate: true },
    el('div', { class: 'grid-2' }, role.node, username.node, display.node, contact.node),
    el('p', { id: errId, class: 'error', role: 'alert', hidden: true }),
    el('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const u = username.input.value.trim();
    const d = display.input.value.trim();
    if (!u || !d) { setError(errId, 'Enter a username and a full name.'); (u ? display : username).input.focus(); return; }
    submit.disabled = true;
    setError(errId, null);
    try {
      const body = { username: u, role: role.input.value, display_name: d };
      const c = contact.input.value.trim();
      if (c) body.contact = c;
      const r = await call('POST', '/admin/accounts', body);
      form.reset();
      await refresh();
      const panel = linkPanel(r, { title: `Account created: ${u}`, who: u });
      result.replaceChildren(panel);
      panel.querySelector('h3').tabIndex = -1;
      panel.querySelector('h3').focus();
    } catch (ex) {
      if (ctx.authFailed(ex)) return;
      setError(errId, ex instanceof ApiError && ex.status === 409 ? 'That username is taken.' : explain(ex));
    } finally {
      submit.disabled = false;
    }
  });
  filter.addEventListener('input', () => renderTable(accounts));

  container.replaceChildren(
    section('Create an account',
      el('p', { class: 'help', text: 'The person gets no password from you: you pass on a single-use link, and they choose their password (and set up their authenticator app) themselves.' }),
      form),
    result,
    section('Accounts',
      el('div', { class: 'field' }, el('label', { htmlFor: 'account-filter', text: 'Filter by username' }), filter),
      listArea),
  );
  await refresh();
}
