// Entry point: routing between views, login, appointment list, pre-call check and
// consent. The consultation itself (waiting room, call) lives in call.js.
//
// Routes (hash): #/login, #/appointments, #/consultation/<appointment id>,
// #/invite/<token> (a guest's single-use link; the token is dropped from the address bar
// at once and kept only in memory until redeemed), #/activate/<token> (an account's
// single-use activation link, handled the same way; onboarding.js), #/account (account.js),
// #/frontdesk (staff; frontdesk.js), #/admin and #/admin/<tab> (admins; admin.js).
// Test flag: `?test=1` lets the end-to-end test read plaintext samples from the sender
// transform (see e2ee-worker.js, collectSample). They never leave the page, and the flag
// counts only when the server says so (`/api/client-config`), which only a test build
// started with --test-hooks does: on a production server `?test=1` does nothing.

import { api, call, ApiError, token, setToken } from './api.js';
import { e2eeSupport } from './e2ee.js';
import { Consultation } from './call.js';
import {
  $, showView, showMessage, setError, el, formatWhen, formatTime, formatDuration, timing, banner,
} from './ui.js';
import { showActivation, showEnrolment } from './onboarding.js';
import { showAccount } from './account.js';
import { showFrontDesk } from './frontdesk.js';
import { showAdmin } from './admin.js';

const TEST_MODE = new URLSearchParams(location.search).get('test') === '1'
  && await fetch('/api/client-config').then((r) => r.json()).then((c) => c.test_hooks === true, () => false);

const state = {
  me: null,            // GET /api/me
  appointments: null,  // GET /api/appointments
  media: null,         // MediaStream from the pre-call check
  consultation: null,  // the running Consultation
  afterLogin: null,    // route to go back to after logging in
  precall: null,       // cleanup of the pre-call level meter
  invite: null,        // a guest's invite token, until redeemed
  listTimer: null,     // refreshes the appointment list while it is shown
  activation: null,    // an account's activation token, until used
};

/** What the clinic pages (onboarding, account, front desk, admin) get from the shell. */
function pageContext() {
  return {
    me: state.me,
    call,
    go,
    authFailed,
    setToken,
    /** After a successful login or activation: forget cached data, go home. */
    loggedIn(t) {
      setToken(t);
      state.me = null;
      state.appointments = null;
      go('#/');
    },
  };
}

/** Where a role starts: staff at the front desk, admins in administration. */
function homeOf(me) {
  if (me && me.role === 'staff') return '#/frontdesk';
  if (me && me.role === 'admin') return '#/admin';
  return '#/appointments';
}

/** A page that needs the caller's identity first (and the nav bar filled). */
async function withMe(show) {
  showView('loading');
  try {
    await loadMe();
  } catch (e) {
    if (authFailed(e)) return;
    showMessage('error', 'Something went wrong', e.message, { home: false });
    return;
  }
  await show(pageContext());
}

// The list's "Now" / "In 10 min" words are redrawn this often; a doctor's list is
// fetched again this often, for "Patient waiting" (each fetch is an audited read, so
// not more often than a person would notice).
const LIST_REDRAW_MS = 30_000;
const LIST_REFETCH_MS = 60_000;
// Past appointments shown under "Past appointments", most recent first.
const PAST_SHOWN = 20;

// ------------------------------------------------------------------ routing

function route() {
  const hash = location.hash || '#/';
  const m = hash.match(/^#\/consultation\/(\d+)$/);
  const inv = hash.match(/^#\/invite\/([A-Za-z0-9_-]{8,512})$/);
  if (inv) {
    // Out of the address bar and the history before anything else happens.
    state.invite = inv[1];
    history.replaceState(null, '', `${location.pathname}${location.search}#/invite`);
    return showInvite();
  }
  if (hash === '#/invite' && state.invite) return showInvite();
  const act = hash.match(/^#\/activate\/([A-Za-z0-9_-]{8,512})$/);
  if (act) {
    state.activation = act[1];
    history.replaceState(null, '', `${location.pathname}${location.search}#/activate`);
    return showActivation(pageContext(), state.activation);
  }
  if (hash === '#/activate' && state.activation) return showActivation(pageContext(), state.activation);
  if (!token() && hash !== '#/login') {
    state.afterLogin = hash === '#/' ? null : hash;
    location.hash = '#/login';
    return;
  }
  if (hash === '#/login') return showLogin();
  if (m) return openConsultation(Number(m[1]));
  if (hash === '#/') {
    return withMe(async () => { location.replace(homeOf(state.me)); });
  }
  if (hash === '#/appointments') return showAppointments();
  if (hash === '#/account') return withMe((ctx) => showAccount(ctx));
  if (hash === '#/frontdesk') return withMe((ctx) => showFrontDesk(ctx));
  const admin = hash.match(/^#\/admin(?:\/([a-z-]+))?$/);
  if (admin) return withMe((ctx) => showAdmin(ctx, admin[1] || null));
  location.hash = '#/';
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

window.addEventListener('hashchange', () => {
  stopListTimer();
  // Leaving the call view by navigation leaves the consultation.
  if (state.consultation && !location.hash.startsWith('#/consultation/')) {
    state.consultation.leave();
    state.consultation = null;
  }
  route();
});

// ------------------------------------------------------------------ session

function authFailed(e) {
  if (e instanceof ApiError && (e.status === 401 || e.code === 'session_expired')) {
    setToken(null);
    state.me = null;
    go('#/login');
    return true;
  }
  return false;
}

async function loadMe() {
  if (!state.me) state.me = await api.me();
  const who = $('who');
  who.textContent = `${state.me.label} (${state.me.role})`;
  who.hidden = false;
  $('logout').hidden = false;
  renderNav(state.me);
  return state.me;
}

const NAV = [
  { hash: '#/appointments', text: 'Appointments', roles: ['doctor', 'patient'] },
  { hash: '#/frontdesk', text: 'Front desk', roles: ['staff', 'admin'] },
  { hash: '#/admin', text: 'Administration', roles: ['admin'] },
  { hash: '#/account', text: 'Your account', roles: ['doctor', 'patient', 'staff', 'admin'] },
];

/** The links this role has; the current page is marked for screen readers. */
function renderNav(me) {
  const list = $('nav-list');
  const links = NAV.filter((n) => n.roles.includes(me.role));
  list.replaceChildren(...links.map((n) => {
    const a = el('a', { href: n.hash, text: n.text });
    if (location.hash === n.hash || location.hash.startsWith(`${n.hash}/`)) a.setAttribute('aria-current', 'page');
    return el('li', {}, a);
  }));
  $('nav').hidden = links.length === 0;
}

function hideNav() {
  $('nav').hidden = true;
  $('nav-list').replaceChildren();
}

$('logout').addEventListener('click', async () => {
  if (state.consultation) { state.consultation.leave(); state.consultation = null; }
  stopMedia();
  try { await api.logout(); } catch { /* the token is dropped either way */ }
  setToken(null);
  banner(null);
  state.me = null;
  state.appointments = null;
  $('who').hidden = true;
  $('logout').hidden = true;
  hideNav();
  go('#/login');
});

// ------------------------------------------------------------------ login

function showLogin() {
  $('who').hidden = true;
  $('logout').hidden = true;
  hideNav();
  setError('login-error', null);
  $('login-totp-field').hidden = true;
  $('login-totp').value = '';
  $('login-recovery-field').hidden = true;
  $('login-recovery').value = '';
  $('login-use-recovery').hidden = true;
  $('login-use-recovery').textContent = 'Use a recovery code instead';
  showView('login');
  $('login-username').focus();
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const username = $('login-username').value.trim();
  const password = $('login-password').value;
  const useRecovery = !$('login-recovery-field').hidden;
  const totp = useRecovery ? '' : $('login-totp').value.trim();
  const recovery = useRecovery ? $('login-recovery').value.trim() : '';
  if (!username || !password) {
    setError('login-error', 'Enter your username and password.');
    return;
  }
  const btn = $('login-submit');
  btn.disabled = true;
  setError('login-error', null);
  try {
    const res = await api.login(username, password, totp || undefined, recovery || undefined);
    $('login-password').value = '';
    $('login-totp').value = '';
    $('login-recovery').value = '';
    if (res && res.mfa_enrollment_required) {
      // Password right, no second factor yet: set it up now, in this page.
      await showEnrolment(pageContext(), res.enrollment_token, username, { title: 'Finish setting up your account' });
      return;
    }
    setToken(res.token);
    if (typeof res.recovery_codes_remaining === 'number') {
      const n = res.recovery_codes_remaining;
      banner(`You logged in with a recovery code. ${n} ${n === 1 ? 'code is' : 'codes are'} left: make new ones on your account page.`);
    }
    state.me = null;
    state.appointments = null;
    const next = state.afterLogin || '#/';
    state.afterLogin = null;
    go(next);
  } catch (err) {
    if (err instanceof ApiError && err.code === 'mfa_required') {
      $('login-totp-field').hidden = false;
      $('login-use-recovery').hidden = false;
      setError('login-error', null);
      $('login-totp').focus();
    } else if (err instanceof ApiError && err.code === 'activation_pending') {
      setError('login-error', 'Your account is not activated yet. Open the activation link your administrator gave you.');
    } else if (err instanceof ApiError && err.status === 401 && (totp || recovery)) {
      setError('login-error', recovery
        ? 'That recovery code was not accepted. Each code works once; try another one.'
        : 'That code was not accepted. Enter the current code.');
      (recovery ? $('login-recovery') : $('login-totp')).focus();
    } else if (err instanceof ApiError && err.status === 429) {
      setError('login-error', 'Too many attempts. Wait a minute and try again.');
    } else if (err instanceof ApiError && err.status === 401) {
      setError('login-error', 'The username, password or code is not correct.');
    } else {
      setError('login-error', err.message);
    }
  } finally {
    btn.disabled = false;
  }
});

$('login-use-recovery').addEventListener('click', () => {
  const useRecovery = $('login-recovery-field').hidden;
  $('login-recovery-field').hidden = !useRecovery;
  $('login-totp-field').hidden = useRecovery;
  $('login-use-recovery').textContent = useRecovery ? 'Use the authenticator app instead' : 'Use a recovery code instead';
  (useRecovery ? $('login-recovery') : $('login-totp')).focus();
});

// ------------------------------------------------------------------ appointments

function stopListTimer() {
  if (state.listTimer) { clearInterval(state.listTimer); state.listTimer = null; }
}

async function showAppointments() {
  stopMedia();
  stopListTimer();
  showView('loading');
  try {
    await loadMe();
    state.appointments = await api.appointments();
  } catch (e) {
    if (authFailed(e)) return;
    showMessage('error', 'Something went wrong', e.message, { home: false });
    return;
  }
  renderAppointments();
  showView('appointments');
  // Keep "Now", "In 10 min" and (for a doctor) "Patient waiting" true while the list
  // stays open.
  let since = Date.now();
  state.listTimer = setInterval(async () => {
    if (document.body.dataset.view !== 'appointments') { stopListTimer(); return; }
    if (state.me && state.me.role === 'doctor' && Date.now() - since >= LIST_REFETCH_MS) {
      since = Date.now();
      try {
        state.appointments = await api.appointments();
      } catch (e) {
        if (authFailed(e)) { stopListTimer(); return; }
        /* keep the last list; the next round tries again */
      }
    }
    if (document.body.dataset.view === 'appointments') renderAppointments();
  }, LIST_REDRAW_MS);
}

/** The other person of an appointment, from the viewer's side. */
function otherOf(a) {
  if (state.me.role === 'doctor') return a.patient ? a.patient.label : 'No patient yet';
  return a.doctor.label;
}

/** The list: upcoming and current appointments first (with their duration and where
 * they stand), past ones folded away below. Keeps the focused Join link focused. */
function renderAppointments() {
  const nowSecs = Date.now() / 1000;
  const doctor = state.me.role === 'doctor';
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.appointment : undefined;
  const upcoming = [];
  const past = [];
  for (const a of state.appointments) {
    const t = timing(a.start, a.duration_s, nowSecs);
    if (a.status === 'booked' && t.state !== 'past') upcoming.push([a, t]);
    else past.push([a, t]);
  }
  upcoming.sort(([x], [y]) => x.start - y.start);
  past.sort(([x], [y]) => y.start - x.start);

  const list = $('appointments-list');
  list.replaceChildren();
  $('appointments-empty').hidden = upcoming.length > 0;
  const waitingNames = [];
  for (const [a, t] of upcoming) {
    const other = otherOf(a);
    const waiting = doctor && a.waiting > 0;
    if (waiting) waitingNames.push(other);
    const chips = [];
    if (waiting) {
      chips.push(el('span', { class: 'chip waiting', text: a.waiting === 1 ? 'Patient waiting' : `${a.waiting} waiting` }));
    }
    if (t.text) chips.push(el('span', { class: `chip ${t.state}`, text: t.text }));
    const when = `${formatWhen(a.start)}–${formatTime(a.start + a.duration_s)}`;
    const join = el('a', { class: 'button primary', href: `#/consultation/${a.id}`, text: 'Join', 'data-appointment': String(a.id) });
    join.setAttribute('aria-label', `Join the consultation with ${other}, ${formatWhen(a.start)}, ${formatDuration(a.duration_s)}`
      + `${t.text ? `, ${t.text.toLowerCase()}` : ''}${waiting ? ', patient waiting' : ''}`);
    list.append(el('li', { class: [t.state, waiting ? 'waiting' : ''].join(' ').trim(), 'data-state': waiting ? 'waiting' : t.state },
      el('div', {},
        el('div', { class: 'when' }, document.createTextNode(when), ...chips),
        el('div', { class: 'with', text: `With ${other} · ${formatDuration(a.duration_s)}${a.reason ? ` — ${a.reason}` : ''}` })),
      join));
  }
  if (focused) {
    const again = list.querySelector(`a[data-appointment="${focused}"]`);
    if (again) again.focus();
  }

  const pastList = $('appointments-past-list');
  pastList.replaceChildren();
  for (const [a] of past.slice(0, PAST_SHOWN)) {
    const how = a.status === 'booked' ? 'ended' : a.status;
    pastList.append(el('li', { 'data-appointment': String(a.id) },
      el('div', {},
        el('div', { class: 'when', text: `${formatWhen(a.start)} · ${formatDuration(a.duration_s)}` }),
        el('div', { class: 'with', text: `With ${otherOf(a)} · ${how}` }))));
  }
  $('appointments-past-count').textContent = String(past.length);
  $('appointments-past').hidden = past.length === 0;

  // One line a screen reader announces when it changes: who waits, else what is next.
  const next = upcoming[0];
  let summary = '';
  if (waitingNames.length === 1) summary = `${waitingNames[0]} is waiting for you.`;
  else if (waitingNames.length > 1) summary = `${waitingNames.length} consultations have someone waiting.`;
  else if (next && next[1].state === 'now') summary = `Your consultation with ${otherOf(next[0])} is open now.`;
  else if (next && next[1].state === 'soon') summary = `Next: with ${otherOf(next[0])}, ${next[1].text.toLowerCase()}.`;
  if ($('appointments-summary').textContent !== summary) $('appointments-summary').textContent = summary;
}

// ------------------------------------------------------------------ consultation entry

async function openConsultation(id) {
  showView('loading');
  let me;
  try {
    me = await loadMe();
    state.appointments = await api.appointments();
  } catch (e) {
    if (authFailed(e)) return;
    showMessage('error', 'Something went wrong', e.message);
    return;
  }
  const appt = state.appointments.find((a) => a.id === id);
  if (!appt || !['doctor', 'patient', 'guest'].includes(me.role)) {
    // Checked again by the server when joining; refusing here means a stranger's
    // browser never even asks for the camera.
    showMessage('refused', 'You cannot join this consultation',
      'This consultation is not one of yours. Only the clinician and the patient it was booked for can join it. ' +
      'If you think this is a mistake, contact your clinic.');
    return;
  }
  if (appt.status !== 'booked') {
    showMessage('refused', 'This consultation is over', 'It has ended or was cancelled.');
    return;
  }
  if (!e2eeSupport()) {
    showMessage('unsupported', 'This browser cannot protect your consultation',
      'Confide encrypts sound and picture on your device before they leave it, and this browser lacks the ' +
      'feature needed for that (encoded media transforms). To keep the consultation private it will not ' +
      'start without it. Please use a current version of Chrome, Edge, Safari or Firefox.');
    return;
  }
  // Consent first: a patient's camera and microphone are not asked for before they
  // agreed to a video consultation (a guest agreed when redeeming the invite).
  if (me.role !== 'doctor') {
    const consented = await consentStep();
    if (!consented) return;
  }
  const ok = await precallCheck();
  if (!ok) return;
  startConsultation(appt, me);
}

// ------------------------------------------------------------------ pre-call check

function explainMediaError(e) {
  switch (e && e.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Camera and microphone access is blocked. Allow it for this site (the camera icon in the address bar, ' +
        'or your browser\'s site settings), then press "Try again".';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No camera or microphone was found. Connect one, then press "Try again".';
    case 'NotReadableError':
    case 'AbortError':
      return 'Your camera or microphone is in use by another application, or not working. Close the other ' +
        'application, then press "Try again".';
    default:
      return `The camera and microphone could not be started (${(e && e.name) || 'unknown error'}).`;
  }
}

function stopMedia() {
  if (state.precall) { state.precall(); state.precall = null; }
  if (state.media) {
    for (const t of state.media.getTracks()) t.stop();
    state.media = null;
  }
}

async function getMedia(cameraId, micId) {
  const video = cameraId ? { deviceId: { exact: cameraId } } : { width: { ideal: 1280 }, height: { ideal: 720 } };
  const audio = micId ? { deviceId: { exact: micId } } : { echoCancellation: true, noiseSuppression: true };
  return navigator.mediaDevices.getUserMedia({ video, audio });
}

async function fillDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [kind, selectId, track] of [['videoinput', 'precall-camera', state.media.getVideoTracks()[0]],
    ['audioinput', 'precall-mic', state.media.getAudioTracks()[0]]]) {
    const sel = $(selectId);
    const current = track && track.getSettings().deviceId;
    sel.replaceChildren();
    let i = 1;
    for (const d of devices.filter((x) => x.kind === kind)) {
      const opt = el('option', { value: d.deviceId, text: d.label || `${kind === 'videoinput' ? 'Camera' : 'Microphone'} ${i}` });
      if (d.deviceId === current) opt.selected = true;
      sel.append(opt);
      i++;
    }
  }
}

function levelMeter(stream) {
  const AC = window.AudioContext || window.webkitAudioContext;
  if (!AC || stream.getAudioTracks().length === 0) return () => {};
  const ctx = new AC();
  ctx.resume().catch(() => {});
  const src = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  src.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const meter = $('precall-level');
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    meter.value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
  }, 100);
  return () => { clearInterval(timer); ctx.close().catch(() => {}); };
}

function precallCheck() {
  return new Promise((resolve) => {
    showView('precall');
    const cont = $('precall-continue');
    const retry = $('precall-retry');
    const video = $('precall-video');
    cont.disabled = true;

    const start = async (cameraId, micId) => {
      setError('precall-error', null);
      retry.hidden = true;
      if (state.precall) { state.precall(); state.precall = null; }
      if (state.media) for (const t of state.media.getTracks()) t.stop();
      state.media = null;
      try {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
          throw Object.assign(new Error('no media devices'), { name: 'SecurityError' });
        }
        state.media = await getMedia(cameraId, micId);
      } catch (e) {
        setError('precall-error', explainMediaError(e));
        retry.hidden = false;
        cont.disabled = true;
        return;
      }
      video.srcObject = state.media;
      $('precall-novideo').hidden = state.media.getVideoTracks().length > 0;
      state.precall = levelMeter(state.media);
      try { await fillDevices(); } catch { /* selectors stay empty */ }
      cont.disabled = false;
    };

    const done = (ok) => {
      cont.onclick = null;
      retry.onclick = null;
      $('precall-back').onclick = null;
      $('precall-camera').onchange = null;
      $('precall-mic').onchange = null;
      if (state.precall) { state.precall(); state.precall = null; }
      video.srcObject = null;
      resolve(ok);
    };
    cont.onclick = () => done(true);
    retry.onclick = () => start();
    $('precall-back').onclick = () => { stopMedia(); done(false); go('#/appointments'); };
    $('precall-camera').onchange = () => start($('precall-camera').value, $('precall-mic').value);
    $('precall-mic').onchange = () => start($('precall-camera').value, $('precall-mic').value);
    start();
  });
}

// ------------------------------------------------------------------ consent

async function consentStep() {
  let status;
  let terms;
  try {
    status = await api.consentStatus();
    if (status.accepted) return true;
    terms = await api.consentTerms();
  } catch (e) {
    if (authFailed(e)) return false;
    showMessage('error', 'Something went wrong', e.message);
    return false;
  }
  return askConsent(terms, async () => {
    try {
      await api.acceptConsent(terms.version || status.current_version);
      return true;
    } catch (err) {
      if (authFailed(err)) return false;
      throw err;
    }
  }, () => { stopMedia(); go('#/appointments'); });
}

/** Shows the terms and the agree box. Once ticked and submitted, `agree()` records the
 * agreement: it resolves true (done) or false (it has shown something else), and what
 * it throws is shown on the form. Resolves false when the person goes back (`back()`). */
function askConsent(terms, agree, back) {
  return new Promise((resolve) => {
    const box = $('consent-text');
    if (terms && terms.text) {
      box.replaceChildren(...terms.text.split(/\n\s*\n/).map((p) => el('p', { text: p.trim() })));
    }
    $('consent-agree').checked = false;
    setError('consent-error', null);
    showView('consent');
    const form = $('consent-form');
    const finish = (ok) => { form.onsubmit = null; $('consent-back').onclick = null; resolve(ok); };
    form.onsubmit = async (e) => {
      e.preventDefault();
      if (!$('consent-agree').checked) {
        setError('consent-error', 'Please tick the box to agree, or go back.');
        $('consent-agree').focus();
        return;
      }
      try {
        finish(await agree());
      } catch (err) {
        setError('consent-error', err.message);
      }
    };
    $('consent-back').onclick = () => { finish(false); back(); };
  });
}

// ------------------------------------------------------------------ guests

/** A guest opened an invite link: the terms, then redeem (which records the consent and
 * gives a session for this one consultation), then the usual pre-call check and waiting
 * room. The camera is asked for only after that agreement. */
async function showInvite() {
  stopMedia();
  $('who').hidden = true;
  $('logout').hidden = true;
  let terms;
  try {
    terms = await api.consentTerms();
  } catch (e) {
    showMessage('error', 'Something went wrong', e.message, { home: false });
    return;
  }
  await askConsent(terms, async () => {
    try {
      const res = await api.redeemInvite(state.invite, terms.version);
      state.invite = null;
      setToken(res.token);
      state.me = null;
      state.appointments = null;
      go(`#/consultation/${res.consultation}`);
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.code === 'invite_invalid') {
        state.invite = null;
        showMessage('refused', 'This invite link cannot be used',
          'It has been used already or it has expired. Ask the clinic for a new link.', { home: false });
        return false;
      }
      if (err instanceof ApiError && err.status === 429) throw new Error('Too many attempts. Wait a minute and try again.');
      throw err;
    }
  }, () => { state.invite = null; go('#/login'); });
}

// ------------------------------------------------------------------ the consultation

function startConsultation(appt, me) {
  banner(null);
  const c = new Consultation({
    appointment: appt,
    me,
    media: state.media,
    token: token(),
    testMode: TEST_MODE,
    onExit: (kind) => {
      if (state.consultation === c) state.consultation = null;
      stopMedia();
      if (kind === 'auth') { setToken(null); state.me = null; go('#/login'); }
    },
  });
  state.consultation = c;
  if (TEST_MODE) window.confideTest = c.testHooks();
  c.start();
}

// ------------------------------------------------------------------ start

route();
