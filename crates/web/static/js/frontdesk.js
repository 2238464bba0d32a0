// Front desk: the clinic's day and week schedule, booking, moving and cancelling
// appointments, finding and creating patients, and who waits in which waiting room.
//
// REST (docs/protocol.md, "Front desk"): GET /api/schedule, /api/waiting-rooms (polled
// every few seconds while the page is open), /api/doctors, /api/patients; POST
// /api/appointments, /api/patients, /api/appointments/{id}/cancel and /invites; PATCH
// /api/appointments/{id}. Every list is built with textContent (ui.js `el`), never HTML.

import { $, showView, el, setError } from './ui.js';

const POLL_MS = 4000;
const DAY_MS = 86_400_000;

/** @type {any} */
let fd = null;

// ------------------------------------------------------------------ time helpers

function startOfDay(d) {
  const x = new Date(d);
  x.setHours(0, 0, 0, 0);
  return x;
}

function addDays(d, n) {
  const x = new Date(d);
  x.setDate(x.getDate() + n);
  return x;
}

/** Monday of the week that holds `d`. */
function startOfWeek(d) {
  const x = startOfDay(d);
  return addDays(x, -((x.getDay() + 6) % 7));
}

const pad = (n) => String(n).padStart(2, '0');
const isoDate = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
const hhmm = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
const timeOf = (secs) => hhmm(new Date(secs * 1000));
const dayLabel = (d) => d.toLocaleDateString(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
const shortDay = (d) => d.toLocaleDateString(undefined, { weekday: 'short', day: 'numeric', month: 'short' });

/** Unix seconds of a local date (YYYY-MM-DD) and time (HH:MM). */
function localSecs(date, time) {
  const t = new Date(`${date}T${time}`);
  return Number.isNaN(t.getTime()) ? null : Math.floor(t.getTime() / 1000);
}

// ------------------------------------------------------------------ the page

/** Stop polling once the front desk is no longer shown. */
function stopPolling() {
  if (fd && fd.timer) clearInterval(fd.timer);
  if (fd) fd.timer = null;
}

export async function showFrontDesk(ctx) {
  stopPolling();
  const today = startOfDay(new Date());
  fd = {
    ctx,
    mode: 'day',
    anchor: today,
    doctors: [],
    schedule: [],
    rooms: new Map(),
    chosen: null,
    timer: null,
    // Staff book, move and cancel; admins see the schedule and use the register only
    // (signaling::policy), so the page offers them only that.
    books: !!(ctx.me && ctx.me.role === 'staff'),
  };
  $('frontdesk-body').replaceChildren(layout());
  showView('frontdesk');
  wireForms();
  await Promise.all([fd.books ? loadDoctors() : null, loadSchedule(), pollRooms()]);
  fd.timer = setInterval(() => {
    if ($('view-frontdesk').hidden) { stopPolling(); return; }
    pollRooms();
  }, POLL_MS);
}

/** The page's sections: waiting rooms, schedule, booking, patients. */
function layout() {
  const rooms = el('section', { class: 'fd-card', 'aria-labelledby': 'fd-rooms-title', id: 'fd-rooms' },
    el('h2', { id: 'fd-rooms-title', text: 'Waiting rooms now' }),
    el('p', { id: 'fd-rooms-summary', class: 'help', 'aria-live': 'polite', text: 'Checking…' }),
    el('ul', { id: 'fd-rooms-list', class: 'fd-rooms' }));

  const modeGroup = el('div', { class: 'fd-modes', role: 'group', 'aria-label': 'Schedule view' },
    el('button', { type: 'button', id: 'fd-mode-day', text: 'Day', 'aria-pressed': 'true' }),
    el('button', { type: 'button', id: 'fd-mode-week', text: 'Week', 'aria-pressed': 'false' }));
  const nav = el('div', { class: 'fd-nav', role: 'group', 'aria-label': 'Move through the schedule' },
    el('button', { type: 'button', id: 'fd-prev', text: 'Previous day' }),
    el('button', { type: 'button', id: 'fd-today', text: 'Today' }),
    el('button', { type: 'button', id: 'fd-next', text: 'Next day' }));
  const schedule = el('section', { class: 'fd-card fd-schedule', 'aria-labelledby': 'fd-schedule-title' },
    el('h2', { id: 'fd-schedule-title', text: 'Schedule' }),
    el('div', { class: 'fd-toolbar' }, modeGroup, nav),
    el('h3', { id: 'fd-period', class: 'fd-period', 'aria-live': 'polite' }),
    el('p', { id: 'fd-schedule-error', class: 'error', role: 'alert', hidden: true }),
    el('div', { id: 'fd-schedule-body' }));

  const book = el('section', { class: 'fd-card', 'aria-labelledby': 'fd-book-title', id: 'fd-book' },
    el('h2', { id: 'fd-book-title', text: 'Book an appointment' }),
    el('form', { id: 'fd-book-form', noValidate: true },
      field('fd-book-doctor', 'Doctor', el('select', { id: 'fd-book-doctor', required: true })),
      el('div', { class: 'field' },
        el('label', { htmlFor: 'fd-book-find', text: 'Patient' }),
        el('p', { id: 'fd-book-find-help', class: 'help', text: 'Search by a word of the name or the date of birth (YYYY-MM-DD), then choose.' }),
        el('div', { class: 'fd-inline' },
          el('input', { id: 'fd-book-find', autocomplete: 'off', 'aria-describedby': 'fd-book-find-help fd-book-chosen' }),
          el('button', { type: 'button', id: 'fd-book-find-go', text: 'Find patient' })),
        el('ul', { id: 'fd-book-matches', class: 'fd-matches', 'aria-label': 'Matching patients' }),
        el('p', { id: 'fd-book-chosen', class: 'fd-chosen', 'aria-live': 'polite', text: 'No patient chosen yet.' })),
      el('div', { class: 'fd-row' },
        field('fd-book-date', 'Date', el('input', { id: 'fd-book-date', type: 'date', required: true })),
        field('fd-book-time', 'Start time', el('input', { id: 'fd-book-time', type: 'time', required: true })),
        field('fd-book-duration', 'Duration', durationSelect('fd-book-duration', 30))),
      field('fd-book-reason', 'Reason (only the doctor sees it)',
        el('textarea', { id: 'fd-book-reason', rows: 2, maxLength: 2000 })),
      el('p', { id: 'fd-book-error', class: 'error', role: 'alert', hidden: true }),
      el('p', { id: 'fd-book-done', class: 'ok', role: 'status', hidden: true }),
      el('button', { type: 'submit', class: 'primary', id: 'fd-book-submit', text: 'Book appointment' })));

  const patients = el('section', { class: 'fd-card', 'aria-labelledby': 'fd-patients-title', id: 'fd-patients' },
    el('h2', { id: 'fd-patients-title', text: 'Patients' }),
    el('form', { id: 'fd-search-form', noValidate: true, role: 'search', 'aria-label': 'Find a patient' },
      el('div', { class: 'fd-row' },
        field('fd-search-name', 'Name', el('input', { id: 'fd-search-name', autocomplete: 'off' })),
        field('fd-search-dob', 'Date of birth', el('input', { id: 'fd-search-dob', type: 'date' }))),
      el('p', { id: 'fd-search-error', class: 'error', role: 'alert', hidden: true }),
      el('button', { type: 'submit', text: 'Search patients' })),
    el('p', { id: 'fd-search-summary', class: 'help', 'aria-live': 'polite' }),
    el('ul', { id: 'fd-search-results', class: 'fd-results' }),
    el('h3', { id: 'fd-new-title', text: 'New patient' }),
    el('form', { id: 'fd-new-form', noValidate: true, 'aria-labelledby': 'fd-new-title' },
      field('fd-new-name', 'Full name', el('input', { id: 'fd-new-name', autocomplete: 'off', required: true, maxLength: 200 })),
      el('div', { class: 'fd-row' },
        field('fd-new-dob', 'Date of birth', el('input', { id: 'fd-new-dob', type: 'date', required: true })),
        field('fd-new-contact', 'Phone or e-mail (optional)', el('input', { id: 'fd-new-contact', autocomplete: 'off', maxLength: 200 }))),
      field('fd-new-username', 'Username (optional; made up if empty)',
        el('input', { id: 'fd-new-username', autocomplete: 'off', autocapitalize: 'none', spellcheck: false, maxLength: 64 })),
      el('p', { id: 'fd-new-error', class: 'error', role: 'alert', hidden: true }),
      el('button', { type: 'submit', class: 'primary', text: 'Create patient' })),
    el('div', { id: 'fd-new-result', class: 'fd-link', hidden: true }));

  return el('div', { class: 'fd-grid' },
    el('div', { class: 'fd-main' }, rooms, schedule),
    el('div', { class: 'fd-side' }, fd.books ? book : null, patients));
}

function field(id, text, control) {
  return el('div', { class: 'field' }, el('label', { htmlFor: id, text }), control);
}

function durationSelect(id, selected) {
  const s = el('select', { id });
  for (const m of [10, 15, 20, 30, 45, 60, 90]) {
    const o = el('option', { value: String(m), text: `${m} minutes` });
    if (m === selected) o.selected = true;
    s.append(o);
  }
  return s;
}

/** A REST call; a lost session goes back to the login page (returns undefined). */
async function rest(method, path, body) {
  try {
    return await fd.ctx.call(method, path, body);
  } catch (e) {
    if (fd.ctx.authFailed(e)) return undefined;
    throw e;
  }
}

// ------------------------------------------------------------------ doctors

async function loadDoctors() {
  const sel = $('fd-book-doctor');
  try {
    fd.doctors = (await rest('GET', '/doctors')) || [];
  } catch (e) {
    setError('fd-book-error', `The list of doctors could not be loaded: ${e.message}`);
    return;
  }
  sel.replaceChildren(el('option', { value: '', text: 'Choose a doctor' }),
    ...fd.doctors.map((d) => el('option', { value: String(d.id), text: d.label })));
}

// ------------------------------------------------------------------ schedule

function period() {
  if (fd.mode === 'week') {
    const from = startOfWeek(fd.anchor);
    return { from, to: addDays(from, 7) };
  }
  const from = startOfDay(fd.anchor);
  return { from, to: addDays(from, 1) };
}

async function loadSchedule() {
  const { from, to } = period();
  $('fd-period').textContent = fd.mode === 'week'
    ? `Week of ${dayLabel(from)}`
    : dayLabel(from);
  const unit = fd.mode === 'week' ? 'week' : 'day';
  $('fd-prev').textContent = `Previous ${unit}`;
  $('fd-next').textContent = `Next ${unit}`;
  setError('fd-schedule-error', null);
  let res;
  try {
    res = await rest('GET', `/schedule?from=${Math.floor(from.getTime() / 1000)}&to=${Math.floor(to.getTime() / 1000)}`);
  } catch (e) {
    setError('fd-schedule-error', `The schedule could not be loaded: ${e.message}`);
    return;
  }
  if (!res) return;
  fd.schedule = res.appointments;
  for (const a of fd.schedule) {
    if (a.presence && (a.presence.waiting.length || a.presence.in_call.length)) {
      fd.rooms.set(a.id, { ...a.presence, appointment: a.id });
    }
  }
  renderSchedule();
}

function renderSchedule() {
  const body = $('fd-schedule-body');
  const { from } = period();
  if (fd.mode === 'day') {
    const list = fd.schedule;
    body.replaceChildren(list.length
      ? el('ol', { class: 'fd-list', 'aria-label': `Appointments on ${dayLabel(from)}` }, ...list.map((a) => item(a)))
      : el('p', { class: 'help', text: 'No appointments on this day.' }));
    return;
  }
  const days = [];
  for (let i = 0; i < 7; i++) {
    const d = addDays(from, i);
    const start = d.getTime() / 1000;
    const end = start + DAY_MS / 1000;
    const list = fd.schedule.filter((a) => a.start < end && a.start + a.duration_s > start);
    const isToday = isoDate(d) === isoDate(new Date());
    const h = el('h4', { id: `fd-day-${i}`, text: shortDay(d) + (isToday ? ' (today)' : '') });
    days.push(el('section', { class: `fd-day${isToday ? ' today' : ''}`, 'aria-labelledby': `fd-day-${i}` },
      h,
      list.length
        ? el('ol', { class: 'fd-list compact' }, ...list.map((a) => item(a)))
        : el('p', { class: 'help', text: 'Nothing booked.' })));
  }
  body.replaceChildren(el('div', { class: 'fd-week' }, ...days));
}

/** Who is in an appointment's consultation now, as words. */
function presenceText(p) {
  if (!p) return '';
  const parts = [];
  for (const w of p.waiting || []) parts.push(`${w.label} waiting since ${hhmm(new Date(w.since))}`);
  const inCall = (p.in_call || []).map((x) => x.label);
  if (inCall.length) parts.push(`in the call: ${inCall.join(', ')}`);
  return parts.join('; ');
}

function item(a) {
  const patient = a.patient ? a.patient.label : 'No patient';
  const when = `${timeOf(a.start)}–${timeOf(a.start + a.duration_s)}`;
  const li = el('li', { class: `fd-appt status-${a.status}`, 'data-appointment': String(a.id) });
  const presence = fd.rooms.get(a.id) || null;
  const status = a.status === 'booked' ? '' : ` (${a.status})`;
  li.append(
    el('div', { class: 'fd-appt-head' },
      el('span', { class: 'fd-when', text: when }),
      el('span', { class: 'fd-who', text: `${patient}${status}` })),
    el('div', { class: 'fd-appt-doctor', text: `with ${a.doctor.label} · ${Math.round(a.duration_s / 60)} min` }),
    el('p', { class: `fd-presence${presence && presence.waiting && presence.waiting.length ? ' waiting' : ''}`, 'data-presence': '', text: presenceText(presence) }));
  if (a.reason) li.append(el('p', { class: 'help', text: `Reason: ${a.reason}` }));
  if (a.status === 'booked' && fd.books) {
    const label = `${patient} at ${when}`;
    const actions = el('div', { class: 'fd-actions' },
      el('button', { type: 'button', text: 'Move', 'aria-label': `Move the appointment of ${label}`, onclick: () => moveForm(li, a) }),
      el('button', { type: 'button', text: 'Cancel', 'aria-label': `Cancel the appointment of ${label}`, onclick: () => cancelConfirm(li, a) }),
      el('button', { type: 'button', text: 'Join link', 'aria-label': `Join link (single use) for ${label}`, onclick: () => joinLink(li, a) }));
    li.append(actions);
  }
  li.append(el('div', { class: 'fd-inline-panel', hidden: true }));
  return li;
}

/** Show `content` in the appointment's inline panel (one at a time), focusing `focus`. */
function panel(li, content, focus) {
  const p = li.querySelector('.fd-inline-panel');
  p.replaceChildren(...content);
  p.hidden = false;
  if (focus) focus.focus();
}

function closePanel(li, back) {
  const p = li.querySelector('.fd-inline-panel');
  p.hidden = true;
  p.replaceChildren();
  if (back) back.focus();
}

function moveForm(li, a) {
  const id = `fd-move-${a.id}`;
  const start = new Date(a.start * 1000);
  const date = el('input', { id: `${id}-date`, type: 'date', value: isoDate(start), required: true });
  const time = el('input', { id: `${id}-time`, type: 'time', value: hhmm(start), required: true });
  const dur = durationSelect(`${id}-duration`, Math.round(a.duration_s / 60));
  if (!dur.value) dur.append(el('option', { value: String(Math.round(a.duration_s / 60)), text: `${Math.round(a.duration_s / 60)} minutes`, selected: true }));
  const doc = el('select', { id: `${id}-doctor` },
    ...fd.doctors.map((d) => el('option', { value: String(d.id), text: d.label, selected: d.id === a.doctor.id })));
  const err = el('p', { class: 'error', role: 'alert', hidden: true, id: `${id}-error` });
  const back = li.querySelector('.fd-actions button');
  const form = el('form', { class: 'fd-move', noValidate: true, 'aria-label': 'Move the appointment' },
    el('div', { class: 'fd-row' },
      field(`${id}-date`, 'New date', date),
      field(`${id}-time`, 'New start time', time),
      field(`${id}-duration`, 'Duration', dur)),
    field(`${id}-doctor`, 'Doctor', doc),
    err,
    el('div', { class: 'fd-actions' },
      el('button', { type: 'submit', class: 'primary', text: 'Save the new time' }),
      el('button', { type: 'button', text: 'Keep as it was', onclick: () => closePanel(li, back) })));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const startSecs = localSecs(date.value, time.value);
    if (startSecs === null) { setErrorEl(err, 'Enter a date and a start time.'); return; }
    const body = {};
    if (startSecs !== a.start) body.start = startSecs;
    if (Number(dur.value) * 60 !== a.duration_s) body.duration_min = Number(dur.value);
    if (Number(doc.value) !== a.doctor.id) body.doctor = Number(doc.value);
    if (!Object.keys(body).length) { closePanel(li, back); return; }
    try {
      const r = await rest('PATCH', `/appointments/${a.id}`, body);
      if (!r) return;
      announce(`Moved: ${a.patient ? a.patient.label : 'appointment'} now at ${hhmm(new Date(r.start * 1000))} on ${shortDay(new Date(r.start * 1000))}.`);
      await loadSchedule();
    } catch (x) {
      setErrorEl(err, changeError(x));
    }
  });
  panel(li, [form], date);
}

function cancelConfirm(li, a) {
  const err = el('p', { class: 'error', role: 'alert', hidden: true });
  const back = li.querySelectorAll('.fd-actions button')[1];
  const yes = el('button', { type: 'button', class: 'danger', text: 'Yes, cancel it' });
  yes.addEventListener('click', async () => {
    try {
      const r = await rest('POST', `/appointments/${a.id}/cancel`);
      if (!r) return;
      announce(`Cancelled the appointment of ${a.patient ? a.patient.label : 'nobody'} at ${timeOf(a.start)}.`);
      await loadSchedule();
    } catch (x) {
      setErrorEl(err, changeError(x));
    }
  });
  panel(li, [
    el('p', { text: `Cancel the appointment of ${a.patient ? a.patient.label : 'nobody'} at ${timeOf(a.start)}? The patient can no longer join it.` }),
    err,
    el('div', { class: 'fd-actions' }, yes,
      el('button', { type: 'button', text: 'No, keep it', onclick: () => closePanel(li, back) }))], yes);
}

function changeError(x) {
  if (x.status === 409) return `Not changed: ${x.message}.`;
  if (x.status === 403) return 'You may not change this appointment.';
  return x.message;
}

async function joinLink(li, a) {
  const back = li.querySelectorAll('.fd-actions button')[2];
  const label = a.patient ? a.patient.label : 'Guest';
  let res;
  try {
    res = await rest('POST', `/appointments/${a.id}/invites`, { label: label.slice(0, 80) });
  } catch (x) {
    panel(li, [el('p', { class: 'error', role: 'alert', text: `No link: ${x.message}` })]);
    return;
  }
  if (!res) return;
  const url = `${location.origin}/#/invite/${res.invite_token}`;
  panel(li, copyBox(`fd-join-${a.id}`, `Join link for ${label} (works once)`, url,
    `The person opening it joins as “${label}” and waits for the doctor. Valid until ${new Date(res.expires_at).toLocaleString()}.`,
    () => closePanel(li, back)));
}

/** A read-only link with a copy button and a note; `done` closes it. */
function copyBox(id, labelText, value, note, done) {
  const input = el('input', { id, readOnly: true, value, class: 'mono' });
  const status = el('span', { class: 'help', role: 'status' });
  const copy = el('button', { type: 'button', text: 'Copy link' });
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(value);
      status.textContent = 'Copied.';
    } catch {
      input.select();
      status.textContent = 'Select the link and copy it (Ctrl+C).';
    }
  });
  const parts = [el('label', { htmlFor: id, text: labelText }), input,
    el('div', { class: 'fd-actions' }, copy, done ? el('button', { type: 'button', text: 'Done', onclick: done }) : null, status),
    el('p', { class: 'help', text: note })];
  setTimeout(() => input.select(), 0);
  return parts;
}

function setErrorEl(node, text) {
  node.textContent = text || '';
  node.hidden = !text;
}

function announce(text) {
  const s = $('fd-book-done');
  s.textContent = text;
  s.hidden = !text;
}

// ------------------------------------------------------------------ waiting rooms

async function pollRooms() {
  let rooms;
  try {
    rooms = await rest('GET', '/waiting-rooms');
  } catch (e) {
    $('fd-rooms-summary').textContent = `Could not check the waiting rooms: ${e.message}`;
    return;
  }
  if (!rooms) { stopPolling(); return; }
  fd.rooms = new Map(rooms.map((r) => [r.appointment, r]));
  const waiting = rooms.reduce((n, r) => n + r.waiting.length, 0);
  const summary = rooms.length === 0
    ? 'Nobody is in a waiting room or a call.'
    : `${waiting === 1 ? '1 person' : `${waiting} people`} waiting; ${rooms.length === 1 ? '1 consultation' : `${rooms.length} consultations`} open.`;
  const sum = $('fd-rooms-summary');
  if (sum.textContent !== summary) sum.textContent = summary;
  $('fd-rooms-list').replaceChildren(...rooms.map((r) => {
    const who = r.patient ? r.patient.label : 'No patient';
    return el('li', { class: `fd-room${r.waiting.length ? ' waiting' : ''}`, 'data-appointment': String(r.appointment) },
      el('div', { class: 'fd-appt-head' },
        el('span', { class: 'fd-when', text: timeOf(r.start) }),
        el('span', { class: 'fd-who', text: who })),
      el('div', { text: `${r.doctor.label}: ${r.doctor_in ? 'in the consultation' : 'not in yet'}` }),
      ...r.waiting.map((w) => el('div', { class: 'fd-waiting', text: `Waiting: ${w.label} (${w.role}) since ${hhmm(new Date(w.since))}` })),
      ...r.in_call.filter((c) => c.role !== 'doctor').map((c) => el('div', { text: `In the call: ${c.label}` })));
  }));
  // The schedule shows the same presence on its appointments.
  for (const li of document.querySelectorAll('#fd-schedule-body li.fd-appt')) {
    const id = Number(li.dataset.appointment);
    const p = li.querySelector('[data-presence]');
    const r = fd.rooms.get(id) || null;
    const text = presenceText(r);
    if (p.textContent !== text) p.textContent = text;
    p.classList.toggle('waiting', !!(r && r.waiting.length));
  }
}

// ------------------------------------------------------------------ booking and patients

function wireForms() {
  $('fd-mode-day').addEventListener('click', () => setMode('day'));
  $('fd-mode-week').addEventListener('click', () => setMode('week'));
  $('fd-prev').addEventListener('click', () => step(-1));
  $('fd-next').addEventListener('click', () => step(1));
  $('fd-today').addEventListener('click', () => { fd.anchor = startOfDay(new Date()); loadSchedule(); });

  if (fd.books) {
    const now = new Date();
    const next = new Date(Math.ceil(now.getTime() / (15 * 60_000)) * 15 * 60_000);
    $('fd-book-date').value = isoDate(next);
    $('fd-book-time').value = hhmm(next);
    $('fd-book-find-go').addEventListener('click', () => findForBooking());
    $('fd-book-find').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') { e.preventDefault(); findForBooking(); }
    });
    $('fd-book-form').addEventListener('submit', (e) => { e.preventDefault(); book(); });
  }
  $('fd-search-form').addEventListener('submit', (e) => { e.preventDefault(); searchPatients(); });
  $('fd-new-form').addEventListener('submit', (e) => { e.preventDefault(); createPatient(); });
}

function setMode(mode) {
  fd.mode = mode;
  $('fd-mode-day').setAttribute('aria-pressed', String(mode === 'day'));
  $('fd-mode-week').setAttribute('aria-pressed', String(mode === 'week'));
  loadSchedule();
}

function step(n) {
  fd.anchor = addDays(fd.anchor, fd.mode === 'week' ? 7 * n : n);
  loadSchedule();
}

/** `q` as search parameters: a date of birth when it is one, else name words. */
function searchQuery(name, dob) {
  const p = new URLSearchParams();
  if (name && name.trim()) p.set('name', name.trim());
  if (dob) p.set('dob', dob);
  return p.toString();
}

async function findForBooking() {
  const q = $('fd-book-find').value.trim();
  const list = $('fd-book-matches');
  setError('fd-book-error', null);
  if (!q) { setError('fd-book-error', 'Type a name or a date of birth to find the patient.'); return; }
  const isDate = /^\d{4}-\d{2}-\d{2}$/.test(q);
  let found;
  try {
    found = await rest('GET', `/patients?${isDate ? searchQuery('', q) : searchQuery(q, '')}`);
  } catch (e) {
    setError('fd-book-error', e.message);
    return;
  }
  if (!found) return;
  if (!found.length) {
    list.replaceChildren(el('li', { class: 'help', text: 'No patient matches. Check the spelling, or create the patient below.' }));
    return;
  }
  list.replaceChildren(...found.map((p) => el('li', {},
    el('button', {
      type: 'button',
      text: `Choose ${p.label}${p.date_of_birth ? `, born ${p.date_of_birth}` : ''}`,
      onclick: () => choosePatient(p),
    }))));
  list.querySelector('button').focus();
}

function choosePatient(p) {
  fd.chosen = p;
  $('fd-book-matches').replaceChildren();
  $('fd-book-chosen').textContent = `Patient: ${p.label}${p.date_of_birth ? ` (born ${p.date_of_birth})` : ''}.`;
  $('fd-book-find').value = p.label;
  $('fd-book-date').focus();
}

async function book() {
  setError('fd-book-error', null);
  announce(null);
  const doctor = Number($('fd-book-doctor').value);
  const start = localSecs($('fd-book-date').value, $('fd-book-time').value);
  if (!doctor) { setError('fd-book-error', 'Choose a doctor.'); $('fd-book-doctor').focus(); return; }
  if (!fd.chosen) { setError('fd-book-error', 'Find and choose the patient.'); $('fd-book-find').focus(); return; }
  if (start === null) { setError('fd-book-error', 'Enter the date and the start time.'); $('fd-book-date').focus(); return; }
  const body = {
    doctor,
    patient: fd.chosen.id,
    start,
    duration_min: Number($('fd-book-duration').value),
  };
  const reason = $('fd-book-reason').value.trim();
  if (reason) body.reason = reason;
  const btn = $('fd-book-submit');
  btn.disabled = true;
  try {
    const r = await rest('POST', '/appointments', body);
    if (!r) return;
    const doc = fd.doctors.find((d) => d.id === doctor);
    announce(`Booked ${fd.chosen.label} with ${doc ? doc.label : 'the doctor'} on ${shortDay(new Date(start * 1000))} at ${hhmm(new Date(start * 1000))}.`);
    $('fd-book-reason').value = '';
    // Show the day of the new appointment.
    fd.anchor = startOfDay(new Date(start * 1000));
    await loadSchedule();
  } catch (e) {
    setError('fd-book-error', e.status === 403 ? 'That booking is not allowed (is the doctor or the patient disabled?).' : e.message);
  } finally {
    btn.disabled = false;
  }
}

async function searchPatients() {
  setError('fd-search-error', null);
  const name = $('fd-search-name').value;
  const dob = $('fd-search-dob').value;
  if (!name.trim() && !dob) {
    setError('fd-search-error', 'Enter a name, a date of birth, or both.');
    $('fd-search-name').focus();
    return;
  }
  let found;
  try {
    found = await rest('GET', `/patients?${searchQuery(name, dob)}`);
  } catch (e) {
    setError('fd-search-error', e.message);
    return;
  }
  if (!found) return;
  $('fd-search-summary').textContent = found.length === 0 ? 'No patient matches.'
    : `${found.length === 1 ? '1 patient' : `${found.length} patients`} found.`;
  $('fd-search-results').replaceChildren(...found.map((p) => el('li', { 'data-patient': String(p.id) },
    el('div', { class: 'fd-who', text: p.label }),
    el('div', { class: 'help', text: `Born ${p.date_of_birth || 'unknown'} · username ${p.username}${p.disabled ? ' · disabled' : ''}` }),
    fd.books ? el('button', { type: 'button', text: 'Book for this patient', 'aria-label': `Book for this patient: ${p.label}`, onclick: () => { choosePatient(p); $('fd-book').scrollIntoView({ block: 'start' }); } }) : null)));
}

async function createPatient() {
  setError('fd-new-error', null);
  const name = $('fd-new-name').value.trim();
  const dob = $('fd-new-dob').value;
  if (!name) { setError('fd-new-error', 'Enter the patient\'s full name.'); $('fd-new-name').focus(); return; }
  if (!dob) { setError('fd-new-error', 'Enter the date of birth.'); $('fd-new-dob').focus(); return; }
  const body = { display_name: name, date_of_birth: dob };
  const contact = $('fd-new-contact').value.trim();
  const username = $('fd-new-username').value.trim();
  if (contact) body.contact = contact;
  if (username) body.username = username;
  let r;
  try {
    r = await rest('POST', '/patients', body);
  } catch (e) {
    setError('fd-new-error', e.status === 409 ? 'That username is taken; choose another or leave it empty.' : e.message);
    return;
  }
  if (!r) return;
  const url = `${location.origin}/#/activate/${r.activation_token}`;
  const patient = { id: r.id, label: name, date_of_birth: dob, username: r.username };
  const box = $('fd-new-result');
  box.replaceChildren(
    el('p', { class: 'ok', role: 'status', text: `${name} is registered (username ${r.username}).` }),
    ...copyBox('fd-new-link', 'Activation link (works once)', url,
      `Give this link to ${name}: it sets their password. It works until ${new Date(r.expires_at).toLocaleString()}.`),
    fd.books ? el('button', { type: 'button', text: `Book an appointment for ${name}`, onclick: () => { choosePatient(patient); } }) : null);
  box.hidden = false;
  $('fd-new-form').reset();
}
