// The front desk in the browser: staff create a patient (and hand over the activation
// link), find them, book an appointment with a doctor the admin has just created, see
// the patient in the waiting room from the schedule, and the doctor and the patient
// hold the end-to-end encrypted consultation. Day and week views, move and cancel,
// a join link. Every page state is scanned for accessibility and photographed at
// 1280x800 and 390x844 (target/browser/clinic-frontdesk-*).

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  CHROMIUM_ARGS, INIT_SCRIPT, artifactsDir, demoAccounts, inboundStats, screenshots, waitFor,
} from './lib.mjs';
import { BASE, activate, leaveStep, loginPage, rest, restLogin } from './clinic-lib.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = artifactsDir();
const STAMP = Date.now().toString(36);

let browser;
let accounts;
const pages = {};
const logs = {};
const made = {};  // the doctor, the patient and the appointment this test creates

async function open(name, { phone = false } = {}) {
  const c = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: phone ? { width: 390, height: 844 } : { width: 1280, height: 800 },
    isMobile: phone,
    hasTouch: phone,
    permissions: ['camera', 'microphone', 'clipboard-read', 'clipboard-write'],
  });
  await c.addInitScript(INIT_SCRIPT);
  const p = await c.newPage();
  logs[name] = [];
  p.on('console', (m) => logs[name].push(`[${m.type()}] ${m.text()}`));
  p.on('pageerror', (e) => logs[name].push(`[pageerror] ${e.message}`));
  pages[name] = p;
  return p;
}

const pad = (n) => String(n).padStart(2, '0');
const isoDate = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
const hhmm = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;

describe('front desk: patients, booking, the schedule and the waiting room', { timeout: 420_000 }, () => {
  before(async () => {
    assert.ok(process.env.CONFIDE_DEMO_JSON, 'CONFIDE_DEMO_JSON must name the demo data file');
    accounts = demoAccounts(process.env.CONFIDE_DEMO_JSON);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  });

  after(async () => {
    for (const [name, lines] of Object.entries(logs)) {
      writeFileSync(path.join(OUT, `clinic-frontdesk-${name}-console.log`), lines.join('\n'));
    }
    if (browser) await browser.close();
    await leaveStep();
  });

  test('the admin creates a new doctor, who activates the account', async () => {
    const p = await open('setup');
    await p.goto(`${BASE}/#/login`);
    const admin = await restLogin(p, accounts.admin);
    const username = `dr-${STAMP}`;
    const r = await rest(p, 'POST', '/api/admin/accounts',
      { username, role: 'doctor', display_name: `Dr. Nadia Okafor ${STAMP}` }, admin);
    assert.equal(r.status, 201, JSON.stringify(r.json));
    made.doctor = await activate(p, r.json.activation_token, username, 'clinic doctor passphrase 2041');
    made.doctor.label = `Dr. Nadia Okafor ${STAMP}`;
    assert.ok(made.doctor.totp_secret, 'a doctor enrols an authenticator');
    await rest(p, 'POST', '/api/logout', undefined, admin);
  });

  test('staff create a patient and get the activation link to hand over', async () => {
    const s = await open('staff');
    await loginPage(s, accounts.staff);
    await s.locator('#view-frontdesk').waitFor({ state: 'visible' });
    await s.locator('#fd-rooms-summary').filter({ hasNotText: 'Checking' }).waitFor();
    made.patientName = `Zoë Brontë-Lindqvist ${STAMP}`;
    const newForm = s.locator('#fd-new-form');
    await newForm.getByLabel('Full name').fill(made.patientName);
    await newForm.getByLabel('Date of birth').fill('1984-07-21');
    await newForm.getByLabel('Phone or e-mail (optional)').fill('+1 555 0199');
    await s.getByRole('button', { name: 'Create patient' }).click();
    const link = s.getByLabel('Activation link (works once)');
    await link.waitFor({ timeout: 10000 });
    const url = await link.inputValue();
    assert.match(url, /^https:\/\/[^/]+\/#\/activate\/[A-Za-z0-9_-]{20,}$/);
    // The copy button puts the link on the clipboard.
    await s.locator('#fd-new-result').getByRole('button', { name: 'Copy link' }).click();
    await s.locator('#fd-new-result').getByText('Copied.').waitFor();
    await screenshots(s, 'clinic-frontdesk-new-patient');
    const username = (await s.locator('#fd-new-result .ok').innerText()).match(/username (patient-[a-z0-9]+)/)[1];
    // The patient follows the link and sets a password.
    made.patient = await activate(s, url.split('/#/activate/')[1], username, 'my own long passphrase 1984');
    made.patient.label = made.patientName;
  });

  test('staff find the patient by name (any case, no accents) and by date of birth', async () => {
    const s = pages.staff;
    const patients = s.locator('#fd-search-form');
    await patients.getByLabel('Name', { exact: true }).fill(`zoe bronte ${STAMP}`);
    await patients.getByRole('button', { name: 'Search patients' }).click();
    await s.locator('#fd-search-summary').filter({ hasText: '1 patient found' }).waitFor();
    assert.match(await s.locator('#fd-search-results').innerText(), new RegExp(`Born 1984-07-21`));
    await patients.getByLabel('Name', { exact: true }).fill('');
    await patients.getByLabel('Date of birth').fill('1984-07-21');
    await patients.getByRole('button', { name: 'Search patients' }).click();
    await waitFor(async () => (await s.locator('#fd-search-results li').count()) >= 1, { what: 'a match by date of birth' });
    assert.match(await s.locator('#fd-search-results').innerText(), new RegExp(STAMP));
    await screenshots(s, 'clinic-frontdesk-search');
  });

  test('staff book the new doctor with the patient from the booking form', async () => {
    const s = pages.staff;
    await s.reload();
    await s.locator('#view-frontdesk').waitFor({ state: 'visible' });
    const form = s.locator('#fd-book');
    await waitFor(async () => (await s.locator('#fd-book-doctor option').count()) > 1, { what: 'the doctors list' });
    await form.getByLabel('Doctor', { exact: true }).selectOption({ label: made.doctor.label });
    // Keyboard only: type the name, Enter searches, the first match gets focus.
    await form.getByLabel('Patient', { exact: true }).fill(`LINDQVIST ${STAMP}`);
    await form.getByLabel('Patient', { exact: true }).press('Enter');
    const choose = form.getByRole('button', { name: new RegExp(`^Choose ${made.patientName}`) });
    await choose.waitFor();
    assert.ok(await choose.evaluate((b) => b === document.activeElement), 'the match has focus');
    await s.keyboard.press('Enter');
    await s.locator('#fd-book-chosen').filter({ hasText: made.patientName }).waitFor();
    // Now, so the consultation opens at once.
    const start = new Date();
    await form.getByLabel('Date', { exact: true }).fill(isoDate(start));
    await form.getByLabel('Start time').fill(hhmm(start));
    await form.getByLabel('Duration').selectOption('30');
    await form.getByLabel('Reason (only the doctor sees it)').fill('follow-up after the knee surgery');
    await form.getByRole('button', { name: 'Book appointment' }).click();
    await s.locator('#fd-book-done').filter({ hasText: `Booked ${made.patientName}` }).waitFor();
    const item = s.locator('#fd-schedule-body li.fd-appt', { hasText: made.patientName });
    await item.waitFor();
    made.appointment = Number(await item.getAttribute('data-appointment'));
    assert.ok(made.appointment > 0);
    // Staff never read the reason back.
    assert.doesNotMatch(await item.innerText(), /knee/);
    assert.match(await item.innerText(), new RegExp(made.doctor.label));
    await screenshots(s, 'clinic-frontdesk-day');
  });

  test('the week view, and moving and cancelling another appointment', async () => {
    const s = pages.staff;
    await s.getByRole('button', { name: 'Week', exact: true }).click();
    await s.locator('#fd-period').filter({ hasText: 'Week of' }).waitFor();
    await s.locator('.fd-week').waitFor();
    assert.ok(await s.locator('.fd-week li.fd-appt', { hasText: made.patientName }).count() >= 1);
    await screenshots(s, 'clinic-frontdesk-week');
    await s.getByRole('button', { name: 'Day', exact: true }).click();
    await s.locator('.fd-week').waitFor({ state: 'detached' });

    // A second appointment tomorrow, moved and then cancelled through the page.
    const form = s.locator('#fd-book');
    await form.getByLabel('Doctor', { exact: true }).selectOption({ label: made.doctor.label });
    await form.getByLabel('Patient', { exact: true }).fill(made.patientName);
    await form.getByRole('button', { name: 'Find patient' }).click();
    await form.getByRole('button', { name: new RegExp(`^Choose ${made.patientName}`) }).click();
    const tomorrow = new Date(Date.now() + 86_400_000);
    tomorrow.setHours(10, 0, 0, 0);
    await form.getByLabel('Date', { exact: true }).fill(isoDate(tomorrow));
    await form.getByLabel('Start time').fill('10:00');
    await form.getByRole('button', { name: 'Book appointment' }).click();
    await s.locator('#fd-book-done').filter({ hasText: 'at 10:00' }).waitFor();
    const item = s.locator('#fd-schedule-body li.fd-appt', { hasText: made.patientName });
    await item.waitFor();
    await item.getByRole('button', { name: /^Move the appointment/ }).click();
    await item.getByLabel('New start time').fill('11:30');
    await item.getByRole('button', { name: 'Save the new time' }).click();
    await s.locator('#fd-book-done').filter({ hasText: 'now at 11:30' }).waitFor();
    const moved = s.locator('#fd-schedule-body li.fd-appt', { hasText: '11:30' });
    await moved.waitFor();
    await moved.getByRole('button', { name: /^Cancel the appointment/ }).click();
    await moved.getByRole('button', { name: 'Yes, cancel it' }).click();
    await s.locator('#fd-schedule-body li.status-cancelled', { hasText: made.patientName }).waitFor();
    // Back to today.
    await s.getByRole('button', { name: 'Today' }).click();
    await s.locator(`#fd-schedule-body li[data-appointment="${made.appointment}"]`).waitFor();
  });

  test('a single-use join link for the appointment', async () => {
    const s = pages.staff;
    const item = s.locator(`#fd-schedule-body li[data-appointment="${made.appointment}"]`);
    await item.getByRole('button', { name: /^Join link \(single use\)/ }).click();
    const link = item.getByLabel(/^Join link for/);
    await link.waitFor();
    assert.match(await link.inputValue(), /\/#\/invite\/[A-Za-z0-9_-]{20,}$/);
    await screenshots(s, 'clinic-frontdesk-join-link');
    await item.getByRole('button', { name: 'Done' }).click();
  });

  test('the patient waits, and staff see it in the schedule and the waiting rooms', async () => {
    const p = await open('patient', { phone: true });
    await loginPage(p, made.patient);
    const join = p.locator(`a[data-appointment="${made.appointment}"]`);
    await join.waitFor({ timeout: 15000 });
    await join.click();
    // Consent first (the camera is asked for only after it), then the camera check.
    await p.locator('#view-consent').waitFor({ state: 'visible', timeout: 15000 });
    await p.getByLabel('I agree to have this consultation by video.').check();
    await p.getByRole('button', { name: 'Agree and continue' }).click();
    await p.locator('#view-precall').waitFor({ state: 'visible', timeout: 15000 });
    await p.getByRole('button', { name: 'Continue', exact: true }).click({ timeout: 15000 });
    await p.locator('#view-waiting').waitFor({ state: 'visible', timeout: 20000 });

    const s = pages.staff;
    const presence = s.locator(`#fd-schedule-body li[data-appointment="${made.appointment}"] [data-presence]`);
    await waitFor(async () => /waiting since/.test(await presence.innerText()), { timeout: 20000, what: 'the schedule shows the patient waiting' });
    assert.match(await presence.innerText(), new RegExp(`${made.patientName} waiting since`));
    const room = s.locator(`#fd-rooms-list li[data-appointment="${made.appointment}"]`);
    await room.waitFor();
    assert.match(await room.innerText(), /not in yet/);
    assert.match(await room.innerText(), new RegExp(`Waiting: ${made.patientName} \\(patient\\)`));
    await screenshots(s, 'clinic-frontdesk-waiting');
  });

  test('the new doctor admits the patient and the two hold the consultation', async () => {
    const d = await open('doctor');
    await loginPage(d, made.doctor);
    const join = d.locator(`a[data-appointment="${made.appointment}"]`);
    await join.waitFor({ timeout: 15000 });
    // The doctor reads the reason staff entered.
    assert.match(await d.locator('#appointments-list').innerText(), /knee surgery/);
    await join.click();
    await d.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await d.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });
    const admit = d.locator('#waiting-list button', { hasText: 'Admit' });
    await admit.first().waitFor({ timeout: 20000 });
    await admit.first().click();
    const p = pages.patient;
    await p.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });
    for (const [name, x] of [['doctor', d], ['patient', p]]) {
      await waitFor(async () => (await x.locator('#e2ee-indicator').getAttribute('data-state')) === 'ok',
        { timeout: 40000, what: `${name}: "End-to-end encrypted"` });
      await waitFor(async () => {
        const st = await inboundStats(x);
        return st.video.framesDecoded > 30 && st.audio.packetsReceived > 20 ? st : null;
      }, { timeout: 60000, interval: 1000, what: `${name} decodes the other side's video` });
    }
    // Staff see both in the call now, the doctor in.
    const s = pages.staff;
    const room = s.locator(`#fd-rooms-list li[data-appointment="${made.appointment}"]`);
    // The list is polled: wait for the poll after the admission (the doctor was shown
    // in before it, while the patient still waited).
    const inCall = new RegExp(`In the call: ${made.patientName}`);
    await waitFor(async () => inCall.test(await room.innerText()), { timeout: 15000, what: 'the patient shown in the call' });
    assert.match(await room.innerText(), /in the consultation/);
    assert.doesNotMatch(await room.innerText(), /Waiting:/);
    await s.screenshot({ path: path.join(OUT, 'clinic-frontdesk-in-call.png'), fullPage: true });
    // The doctor ends it (and confirms in the page's dialog); the waiting room empties.
    await d.getByRole('button', { name: 'End consultation for everyone' }).click();
    await d.getByRole('dialog', { name: 'End the consultation for everyone?' })
      .getByRole('button', { name: 'End for everyone' }).click();
    await waitFor(async () => (await room.count()) === 0, { timeout: 20000, what: 'the room closed' });
  });
});
