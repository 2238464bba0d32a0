// Account activation from a single-use link: set a password (or prove the current
// one), enrol the second factor from a QR code, save the recovery codes.
//
// Also the parts the account page reuses: the new-password fields with their rules
// checked as the person types, the enrolment step (QR code, typed code) and the
// recovery codes panel (shown once, download as a text file, "I saved them").
//
// The activation token came in the URL fragment; app.js took it out of the address bar
// before calling here, and it travels only in request bodies.

import { call, ApiError } from './api.js';
import { $, showView, el, setError } from './ui.js';

let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

/** The rules as the page shows them; GET /api/password/policy, fetched once. */
let policyPromise = null;
function policy() {
  if (!policyPromise) policyPromise = call('GET', '/password/policy').catch((e) => { policyPromise = null; throw e; });
  return policyPromise;
}

/** A labelled field; returns {field, input}. */
function field(label, props = {}, help = null) {
  const id = props.id || nextId('f');
  const input = el('input', { id, ...props });
  const f = el('div', { class: 'field' }, el('label', { htmlFor: id, text: label }));
  f.append(input);
  if (help) {
    const hid = `${id}-help`;
    f.append(el('p', { id: hid, class: 'help', text: help }));
    input.setAttribute('aria-describedby', hid);
  }
  return { field: f, input };
}

/**
 * The new-password fields: the password, typed twice, with the rules listed under it
 * and each marked met or not as the person types (length, username and service name,
 * the two copies matching; the list of common passwords is checked by the server).
 * Returns {node, input, value(), check()} where check() is an error text or null.
 */
export function newPasswordFields({ username, minLength, maxLength = 256, label = 'New password' }) {
  const rulesId = nextId('pw-rules');
  const pw = field(label, { type: 'password', autocomplete: 'new-password', maxLength, spellcheck: false });
  const again = field('Type it again', { type: 'password', autocomplete: 'new-password', maxLength, spellcheck: false });
  pw.input.setAttribute('aria-describedby', rulesId);
  const show = el('input', { type: 'checkbox', id: nextId('pw-show') });
  const showRow = el('div', { class: 'check' }, show, el('label', { htmlFor: show.id, text: 'Show the password' }));
  show.addEventListener('change', () => {
    pw.input.type = show.checked ? 'text' : 'password';
    again.input.type = show.checked ? 'text' : 'password';
  });

  const lower = (s) => s.toLowerCase();
  const rules = [
    { text: `At least ${minLength} characters`, ok: (p) => [...p].length >= minLength },
    { text: `At most ${maxLength} characters`, ok: (p) => [...p].length <= maxLength },
    { text: 'Not containing your username', ok: (p) => !username || username.length < 3 || !lower(p).includes(lower(username)) },
    { text: 'Not containing the name of this service', ok: (p) => !lower(p).includes('confide') },
    { text: 'Both copies the same', ok: (p, a) => p.length > 0 && p === a },
  ];
  const items = rules.map((r) => {
    const state = el('span', { class: 'rule-state', text: 'To do: ' });
    const li = el('li', { class: 'rule', 'data-ok': 'false' }, state, el('span', { text: r.text }));
    return { r, li, state };
  });
  const list = el('ul', { id: rulesId, class: 'rules', 'aria-label': 'Password rules' }, ...items.map((i) => i.li));
  const note = el('p', { class: 'help', text: 'Spaces and letters of any language are welcome; no digits or symbols are required. A common password is refused.' });
  const update = () => {
    for (const { r, li, state } of items) {
      const ok = r.ok(pw.input.value, again.input.value);
      li.dataset.ok = String(ok);
      state.textContent = ok ? 'Done: ' : 'To do: ';
    }
  };
  pw.input.addEventListener('input', update);
  again.input.addEventListener('input', update);
  update();
  const node = el('div', { class: 'new-password' }, pw.field, list, note, again.field, showRow);
  return {
    node,
    input: pw.input,
    value: () => pw.input.value,
    check() {
      const p = pw.input.value;
      for (const { r } of items) if (!r.ok(p, again.input.value)) return `The password does not meet a rule yet: ${r.text.toLowerCase()}.`;
      return null;
    },
  };
}

/** The message of a refused password or code, as the person should read it. */
export function explain(e) {
  if (!(e instanceof ApiError)) return String(e && e.message || e);
  if (e.code && e.code.startsWith('password_')) return e.message;
  switch (e.code) {
    case 'invalid_credentials': return 'That was not accepted. Check it and try again.';
    case 'mfa_required': return 'Enter the code from your authenticator app, or one of your recovery codes.';
    case 'too_many_attempts': return 'Too many attempts. Wait a minute and try again.';
    case 'activation_invalid': return 'This link is invalid, already used or expired. Ask your administrator for a new one.';
    default: return e.message;
  }
}

/**
 * The recovery codes, shown once: the list, a download as a text file and the "I
 * saved them" confirmation that enables `doneText`. Resolves when the person goes on.
 */
export function recoveryCodesPanel(container, codes, { username, doneText = 'Continue' }) {
  return new Promise((resolve) => {
    const titleId = nextId('rc-title');
    const list = el('ol', { class: 'recovery-codes', 'aria-labelledby': titleId });
    for (const c of codes) list.append(el('li', {}, el('code', { text: c })));
    const download = el('button', { type: 'button', text: 'Download as a text file' });
    download.addEventListener('click', () => {
      const text = `Confide recovery codes for ${username}\n` +
        `Each code works once, in place of a code from your authenticator app.\n\n${codes.join('\n')}\n`;
      const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
      const a = el('a', { href: url, download: `confide-recovery-codes-${username}.txt` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    });
    const saved = el('input', { type: 'checkbox', id: nextId('rc-saved') });
    const go = el('button', { type: 'button', class: 'primary', text: doneText, disabled: true });
    saved.addEventListener('change', () => { go.disabled = !saved.checked; });
    go.addEventListener('click', () => { if (saved.checked) resolve(); });
    const heading = el('h2', { id: titleId, text: 'Your recovery codes' });
    container.replaceChildren(
      heading,
      el('p', { text: 'If you lose your phone, each of these codes lets you log in once instead of a code from the app. They are shown only now: download them or write them down, and keep them somewhere safe.' }),
      list,
      el('div', { class: 'actions' }, download),
      el('div', { class: 'check' }, saved, el('label', { htmlFor: saved.id, text: 'I saved my recovery codes somewhere safe' })),
      el('div', { class: 'actions' }, go),
    );
    heading.tabIndex = -1;
    heading.focus();
  });
}

/** "ABCD EFGH ..." for reading and typing a base32 key. */
function groupKey(k) {
  return k.replace(/(.{4})(?=.)/g, '$1 ');
}

/**
 * The second-factor enrolment step: POST /api/totp/enroll (`password` with a full
 * session), the QR code and the key as text, then the typed code. Resolves with the
 * confirmation ({recovery_codes, token?}); rejects with the enrolment's error.
 */
export async function enrolSecondFactor(container, { password = undefined, cancel = null } = {}) {
  const res = await call('POST', '/totp/enroll', password === undefined ? undefined : { password });
  return new Promise((resolve) => {
    const titleId = nextId('enrol-title');
    const img = el('img', {
      id: 'enrol-qr',
      class: 'qr',
      src: `data:image/svg+xml;base64,${btoa(res.qr_svg)}`,
      alt: 'QR code to scan with your authenticator app. The same key is written out below.',
      width: 240,
      height: 240,
    });
    const key = el('code', { id: 'enrol-key', class: 'totp-key', text: groupKey(res.secret) });
    key.dataset.secret = res.secret;
    const code = field('6-digit code from the app', { inputMode: 'numeric', autocomplete: 'one-time-code', maxLength: 8, pattern: '[0-9]*', spellcheck: false });
    const errId = nextId('enrol-error');
    const err = el('p', { id: errId, class: 'error', role: 'alert', hidden: true });
    const confirmBtn = el('button', { type: 'submit', class: 'primary', text: 'Confirm' });
    const form = el('form', { noValidate: true }, code.field, err, el('div', { class: 'actions' }, confirmBtn));
    if (cancel) {
      const c = el('button', { type: 'button', text: 'Cancel' });
      c.addEventListener('click', cancel);
      form.lastChild.append(c);
    }
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const v = code.input.value.replace(/\s+/g, '');
      if (!/^[0-9]{6}$/.test(v)) {
        setError(errId, 'Enter the 6 digits the app shows now.');
        code.input.focus();
        return;
      }
      confirmBtn.disabled = true;
      setError(errId, null);
      try {
        resolve(await call('POST', '/totp/confirm', { code: v }));
      } catch (ex) {
        setError(errId, ex instanceof ApiError && ex.code === 'invalid_credentials'
          ? 'That code was not accepted. Check the time on your phone and enter the current code.'
          : explain(ex));
        code.input.focus();
      } finally {
        confirmBtn.disabled = false;
      }
    });
    const heading = el('h2', { id: titleId, text: 'Set up your authenticator app' });
    container.replaceChildren(
      heading,
      el('ol', { class: 'steps' },
        el('li', { text: 'Open an authenticator app on your phone (for example FreeOTP, Aegis, Google or Microsoft Authenticator).' }),
        el('li', { text: 'Add an account and scan this QR code.' }),
        el('li', { text: 'Type the 6-digit code the app shows.' })),
      el('div', { class: 'qr-box' }, img),
      el('p', { class: 'help' }, 'Cannot scan? Type this key into the app instead: ', key),
      form,
    );
    heading.tabIndex = -1;
    heading.focus();
  });
}

const PURPOSE = {
  activate: {
    lead: 'Welcome. Choose a password to activate your account.',
    button: 'Set password',
  },
  reset_password: {
    lead: 'Your administrator reset your password. Choose a new one.',
    button: 'Set new password',
  },
  reset_second_factor: {
    lead: 'Your administrator reset your second factor. Enter your current password, then set up your authenticator app again.',
    button: 'Continue',
  },
};

/** The message shown in place of the form when the link cannot be used. */
function linkProblem(body, e) {
  body.replaceChildren(
    el('p', { class: 'error', role: 'alert', text: explain(e) }),
    el('p', {}, el('a', { href: '#/login', text: 'Go to the login page' })),
  );
}

/** `#/activate/<token>`: the whole flow, from the link to a logged-in session. */
export async function showActivation(ctx, activationToken) {
  $('activate-title').textContent = 'Activate your account';
  const body = $('activate-body');
  body.replaceChildren(el('p', { text: 'Checking your link…' }));
  showView('activate');
  let info;
  try {
    info = await call('POST', '/activation/inspect', { token: activationToken });
  } catch (e) {
    linkProblem(body, e);
    return;
  }
  const purpose = PURPOSE[info.purpose] || PURPOSE.activate;
  const errId = nextId('activate-error');
  const form = el('form', { id: 'activate-form', noValidate: true });
  const userField = field('Username', { value: info.username, readOnly: true, autocomplete: 'username' });
  form.append(userField.field);
  let pwd = null;
  let current = null;
  if (info.password === 'new') {
    pwd = newPasswordFields({ username: info.username, minLength: info.min_length, maxLength: info.policy.max_length });
    form.append(pwd.node);
  } else {
    current = field('Current password', { type: 'password', autocomplete: 'current-password' });
    form.append(current.field);
  }
  let second = null;
  if (info.second_factor_code) second = secondFactorFields();
  if (second) form.append(second.node);
  form.append(
    el('p', { id: errId, class: 'error', role: 'alert', hidden: true }),
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary', text: purpose.button })),
  );
  body.replaceChildren(
    el('p', { text: purpose.lead }),
    info.enrol_second_factor
      ? el('p', { class: 'help', text: 'Next you will set up an authenticator app on your phone: your account needs it to log in.' })
      : null,
    form,
  );
  (pwd ? pwd.input : current.input).focus();

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const problem = pwd ? pwd.check() : (current.input.value ? null : 'Enter your current password.');
    if (problem) { setError(errId, problem); return; }
    const req = { token: activationToken };
    if (pwd) req.new_password = pwd.value();
    else req.current_password = current.input.value;
    if (second) Object.assign(req, second.value());
    const btn = form.querySelector('button[type=submit]');
    btn.disabled = true;
    setError(errId, null);
    let res;
    try {
      res = await call('POST', '/activation/complete', req);
    } catch (ex) {
      if (ex instanceof ApiError && ex.code === 'activation_invalid') { linkProblem(body, ex); return; }
      setError(errId, explain(ex));
      btn.disabled = false;
      return;
    }
    if (res.mfa_enrollment_required) {
      await showEnrolment(ctx, res.enrollment_token, info.username);
    } else {
      ctx.loggedIn(res.token);
    }
  });
}

/**
 * The second factor for a step that asks for one: the authenticator's code, or (after
 * "Use a recovery code instead") one of the recovery codes.
 */
export function secondFactorFields() {
  const totp = field('Authentication code', { inputMode: 'numeric', autocomplete: 'one-time-code', maxLength: 8, pattern: '[0-9]*' },
    'The 6-digit code from your authenticator app.');
  const rc = field('Recovery code', { autocomplete: 'off', spellcheck: false, autocapitalize: 'none', maxLength: 32 },
    'One of the codes you saved when you set up the app. Each works once.');
  rc.field.hidden = true;
  const toggle = el('button', { type: 'button', class: 'text-button', text: 'Use a recovery code instead' });
  toggle.addEventListener('click', () => {
    const useRc = rc.field.hidden;
    rc.field.hidden = !useRc;
    totp.field.hidden = useRc;
    toggle.textContent = useRc ? 'Use the authenticator app instead' : 'Use a recovery code instead';
    (useRc ? rc.input : totp.input).focus();
  });
  return {
    node: el('div', { class: 'second-factor' }, totp.field, rc.field, toggle),
    value: () => (rc.field.hidden ? { totp: totp.input.value.trim() } : { recovery_code: rc.input.value.trim() }),
  };
}

/**
 * With an enrolment-only session (after activation, or a clinician's login without a
 * second factor): the QR step, then the recovery codes, then the full session.
 */
export async function showEnrolment(ctx, enrollmentToken, username, { title = null } = {}) {
  ctx.setToken(enrollmentToken);
  if (title) $('activate-title').textContent = title;
  const body = $('activate-body');
  showView('activate');
  let done;
  try {
    done = await enrolSecondFactor(body);
  } catch (e) {
    body.replaceChildren(el('p', { class: 'error', role: 'alert', text: explain(e) }),
      el('p', {}, el('a', { href: '#/login', text: 'Go to the login page' })));
    return;
  }
  // The full session replaces the enrolment one; kept until the codes are saved.
  ctx.setToken(done.token);
  await recoveryCodesPanel(body, done.recovery_codes, { username, doneText: 'Continue to Confide' });
  ctx.loggedIn(done.token);
}
