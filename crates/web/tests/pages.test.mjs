// Every page of a consultation, as a person meets it, checked for accessibility and
// photographed at 1280x800 and 390x844. Run by scripts/parts/50-browser.sh after
// consultation.test.mjs, against the same server (CONFIDE_BASE_URL, CONFIDE_DEMO_JSON).
//
// In order: the login page; the patient's way in with the keyboard alone (login, Join,
// consent before any camera, the camera check, the waiting room told the doctor is not
// in yet); the doctor's list saying "Patient waiting", with the duration and "Now";
// the doctor alone in the call ("Waiting for keys", never green), the patient told the
// doctor is online; both in the call (the badge and the safety code with their
// screen-reader text); Leave asks first; a guest's invite page; the doctor ends, and is
// told so. On each page an axe-core scan must find no serious or critical violation,
// and the screenshots go to target/browser/<page>-desktop.png and <page>-phone.png.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  CHROMIUM_ARGS, INIT_SCRIPT, PHONE, artifactsDir, loadDemo, rest, screenshots, totp, waitFor,
} from './lib.mjs';

const BASE = process.env.CONFIDE_BASE_URL || 'https://127.0.0.1:8443';
const DEMO = process.env.CONFIDE_DEMO_JSON;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = artifactsDir();

let browser;
let demo;
const page = {};
const logs = {};

async function open(name) {
  const c = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 800 },
    permissions: ['camera', 'microphone'],
  });
  await c.addInitScript(INIT_SCRIPT);
  const p = await c.newPage();
  logs[name] = [];
  p.on('console', (m) => logs[name].push(`[${m.type()}] ${m.text()}`));
  p.on('pageerror', (e) => logs[name].push(`[pageerror] ${e.message}`));
  page[name] = p;
  return p;
}

/** Both screenshots of the page as it is now, each size scanned by axe-core (no serious
 * or critical violation; the findings go to target/browser/a11y-<name>-<size>.json). */
async function check(p, name) {
  await screenshots(p, name);
  // At phone width nothing sticks out sideways (no horizontal scrolling, nothing cut).
  const before = p.viewportSize();
  await p.setViewportSize(PHONE);
  await p.waitForTimeout(150);
  const wide = await p.evaluate(() => document.documentElement.scrollWidth);
  await p.setViewportSize(before);
  assert.ok(wide <= PHONE.width, `${name}: the phone layout is ${wide} px wide`);
}

async function view(p) {
  return p.evaluate(() => document.body.dataset.view);
}

/** The element that has the focus: its id, text, and whether a focus ring is drawn. */
async function focused(p) {
  return p.evaluate(() => {
    const e = document.activeElement;
    if (!e || e === document.body) return null;
    const cs = getComputedStyle(e);
    return {
      id: e.id,
      tag: e.tagName.toLowerCase(),
      text: (e.getAttribute('aria-label') || e.textContent || '').trim().slice(0, 80),
      appointment: e.dataset ? e.dataset.appointment || null : null,
      ring: cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2,
    };
  });
}

/** Press Tab until `want(focused)` holds; every element passed on the way must show a
 * visible focus ring. Returns the path taken (for failure messages). */
async function tabTo(p, want, what, max = 25) {
  const seen = [];
  for (let i = 0; i < max; i++) {
    await p.keyboard.press('Tab');
    const f = await focused(p);
    seen.push(f);
    if (f) assert.ok(f.ring, `${what}: no visible focus on ${JSON.stringify(f)}`);
    if (f && want(f)) return seen;
  }
  throw new Error(`${what}: not reached with Tab; went through ${JSON.stringify(seen)}`);
}

/** The server refuses a TOTP code of a step already used, and the consultation test
 * logged the doctor in a little earlier: on a refusal, wait for the next step. */
async function loginDoctor(p) {
  await p.goto(`${BASE}/?test=1#/login`);
  await p.getByLabel('Username').fill(demo.doctor.username);
  await p.getByLabel('Password').fill(demo.doctor.password);
  await p.getByRole('button', { name: 'Log in' }).click();
  const code = p.getByLabel('Authentication code');
  await code.waitFor({ state: 'visible', timeout: 15000 });
  for (let attempt = 0; attempt < 3; attempt++) {
    const step = Math.floor(Date.now() / 30000);
    await code.fill(totp(demo.doctor.totp_secret));
    await p.getByRole('button', { name: 'Log in' }).click();
    const done = await waitFor(async () => {
      if (await p.locator('#view-appointments').isVisible()) return 'in';
      if (await p.locator('#login-error').isVisible()) return 'refused';
      return null;
    }, { timeout: 15000, what: 'the doctor logged in or refused' });
    if (done === 'in') return;
    await new Promise((r) => setTimeout(r, (step + 1) * 30000 - Date.now() + 1500));
  }
  throw new Error('the doctor could not log in with a fresh TOTP code');
}

describe('every page: accessible, and photographed at 1280x800 and 390x844', { timeout: 300_000 }, () => {
  let appt;

  before(async () => {
    assert.ok(DEMO, 'CONFIDE_DEMO_JSON must name the demo data file');
    demo = loadDemo(DEMO);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  });

  after(async () => {
    for (const [name, lines] of Object.entries(logs)) {
      writeFileSync(path.join(OUT, `pages-${name}-console.log`), lines.join('\n'));
    }
    if (browser) await browser.close();
  });

  test('the login page', async () => {
    const p = await open('patient');
    await p.goto(`${BASE}/#/login`);
    await p.locator('#view-login').waitFor({ state: 'visible' });
    assert.equal(await p.evaluate(() => document.documentElement.lang), 'en');
    // The page starts with a skip link and the username field has the focus.
    assert.equal((await focused(p)).id, 'login-username');
    await check(p, 'login');
  });

  test('the doctor books a consultation that starts now and one in a quarter of an hour', async () => {
    const d = await open('doctor');
    await loginDoctor(d);
    const list = await rest(d, 'GET', '/api/appointments');
    const first = list.json.find((a) => a.id === demo.appointment);
    assert.ok(first && first.patient, 'the demo appointment and its patient');
    const now = Math.floor(Date.now() / 1000);
    const book = async (start, minutes) => {
      const r = await rest(d, 'POST', '/api/appointments', {
        doctor: first.doctor.id, patient: first.patient.id, start, duration_min: minutes, reason: 'Rash, follow-up',
      });
      assert.equal(r.status, 201, `booking: ${JSON.stringify(r.json)}`);
      return r.json.id;
    };
    appt = await book(now, 20);
    await book(now + 15 * 60, 15);
  });

  test('the patient, with the keyboard alone: login, Join, consent before any camera, the camera check, the waiting room', async () => {
    const p = page.patient;
    // Consent was given in the consultation test: withdraw it so the step shows again.
    await p.goto(`${BASE}/?test=1#/login`);
    await p.locator('#login-username').waitFor({ state: 'visible' });
    await p.keyboard.type(demo.patient.username);
    await p.keyboard.press('Tab');
    await p.keyboard.type(demo.patient.password);
    await p.keyboard.press('Enter');
    await p.locator('#view-appointments').waitFor({ state: 'visible', timeout: 15000 });
    const r = await rest(p, 'DELETE', '/api/consent');
    assert.ok(r.status < 300, `withdrawing consent: ${r.status}`);
    await p.reload();
    await p.locator(`a[data-appointment="${appt}"]`).waitFor({ timeout: 15000 });

    // The list: durations and where each stands; the Join link is the primary button.
    const item = p.locator('#appointments-list li', { has: p.locator(`a[data-appointment="${appt}"]`) });
    assert.match(await item.innerText(), /20 min/);
    assert.match(await item.locator('.chip').first().innerText(), /^Now$/);
    const soon = p.locator('#appointments-list li .chip.soon');
    assert.match(await soon.first().innerText(), /^In 1[45] min$/);
    const joinColour = await p.locator(`a[data-appointment="${appt}"]`).evaluate((a) => getComputedStyle(a).backgroundColor);
    assert.equal(joinColour, 'rgb(11, 92, 85)', 'the Join link is styled as the primary button');
    // Ended appointments are folded away under "Past appointments".
    assert.equal(await p.locator(`#appointments-list a[data-appointment="${demo.appointment}"]`).count(), 0);
    assert.ok(await p.locator('#appointments-past').isVisible());
    assert.ok(await p.locator(`#appointments-past-list li[data-appointment="${demo.appointment}"]`).count() === 1);
    await check(p, 'appointments-patient');

    // Tab to this appointment's Join link and press Enter: consent comes first.
    await tabTo(p, (f) => f.appointment === String(appt), 'the Join link');
    await p.keyboard.press('Enter');
    await p.locator('#view-consent').waitFor({ state: 'visible', timeout: 15000 });
    assert.equal(await p.evaluate(() => window.__test.gum), 0, 'the camera was asked for before consent');
    await check(p, 'consent');
    await tabTo(p, (f) => f.id === 'consent-agree', 'the agree box');
    await p.keyboard.press('Space');
    await tabTo(p, (f) => f.id === 'consent-continue', 'Agree and continue');
    await p.keyboard.press('Enter');

    // The camera check, only now.
    await p.locator('#view-precall').waitFor({ state: 'visible', timeout: 15000 });
    await waitFor(async () => !(await p.locator('#precall-continue').isDisabled()), { what: 'the camera started' });
    assert.ok(await p.evaluate(() => window.__test.gum) > 0);
    await check(p, 'precall');
    await tabTo(p, (f) => f.id === 'precall-continue', 'Continue');
    await p.keyboard.press('Enter');

    // The waiting room says the doctor is not in yet.
    await p.locator('#view-waiting').waitFor({ state: 'visible', timeout: 20000 });
    await p.locator('#waiting-doctor[data-online="false"]').waitFor();
    assert.match(await p.locator('#waiting-doctor').innerText(), /has not joined yet/);
    await check(p, 'waiting');
  });

  test('the doctor\'s list says the patient is waiting; alone in the call the badge waits for keys', async () => {
    const d = page.doctor;
    const p = page.patient;
    // The doctor's page shows the list it fetched at login: load it again.
    await d.reload();
    const item = d.locator('#appointments-list li', { has: d.locator(`a[data-appointment="${appt}"]`) });
    await item.locator('.chip.waiting', { hasText: 'Patient waiting' }).waitFor({ timeout: 15000 });
    assert.equal(await item.getAttribute('data-state'), 'waiting');
    assert.match(await d.locator('#appointments-summary').innerText(), /is waiting for you/);
    await check(d, 'appointments');

    await d.locator(`a[data-appointment="${appt}"]`).click();
    await d.locator('#view-precall').waitFor({ state: 'visible' });
    await d.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await d.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });
    // Nobody else in the group yet: a neutral badge, no safety code, never green.
    const badge = d.locator('#e2ee-indicator');
    assert.equal(await badge.getAttribute('data-state'), 'waiting');
    assert.equal(await d.locator('#e2ee-text').innerText(), 'Waiting for keys');
    const colour = await badge.evaluate((b) => getComputedStyle(b).backgroundColor);
    assert.notEqual(colour, 'rgb(223, 243, 228)', 'the badge is green before any key exchange');
    assert.equal(await d.locator('#safety-code').innerText(), '—');
    assert.match(await d.locator('#safety-code-sr').textContent(), /No safety code yet/);
    await d.locator('#waiting-list button', { hasText: 'Admit' }).first().waitFor({ timeout: 20000 });
    await check(d, 'call-doctor-alone');

    // The patient's waiting room now says the doctor is online.
    await p.locator('#waiting-doctor[data-online="true"]').waitFor({ timeout: 10000 });
    assert.match(await p.locator('#waiting-doctor').innerText(), /doctor is online/);
    await check(p, 'waiting-doctor-online');
  });

  test('both in the call: the badge and the safety code, with their screen-reader text; Leave asks first', async () => {
    const d = page.doctor;
    const p = page.patient;
    await d.locator('#waiting-list button', { hasText: 'Admit' }).first().click();
    await p.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });
    for (const x of [d, p]) {
      await waitFor(async () => (await x.locator('#e2ee-indicator').getAttribute('data-state')) === 'ok',
        { timeout: 30000, what: '"End-to-end encrypted"' });
    }
    const code = await waitFor(async () => {
      const a = await d.locator('#safety-code').getAttribute('data-code');
      const b = await p.locator('#safety-code').getAttribute('data-code');
      return a && a === b ? a : null;
    }, { what: 'the same safety code on both pages' });
    for (const x of [d, p]) {
      // The badge's accessible text says what it means; the code is read digit by digit
      // (the digits on screen are hidden from screen readers, which would read a number).
      const said = (await x.locator('#e2ee-indicator').textContent()).replace(/\s+/g, ' ').trim();
      assert.match(said, /^End-to-end encrypted\. Only the people in this call can see, hear and read it/);
      const spoken = await x.locator('#safety-code-sr').textContent();
      assert.equal(spoken.replace(/[^0-9]/g, ''), code);
      assert.match(spoken, /^Safety code: \d \d \d \d \d, \d/);
      assert.equal(await x.locator('#safety-code').getAttribute('aria-hidden'), 'true');
    }
    await check(d, 'call-doctor');
    await check(p, 'call-patient');

    // Keyboard: from the call's heading, Tab reaches the controls in the order shown,
    // each with a visible focus ring; Leave and End are not side by side.
    await d.locator('#call-title').focus();
    const pathTaken = await tabTo(d, (f) => f.id === 'btn-end', 'End consultation for everyone');
    const ids = pathTaken.map((f) => f && f.id);
    assert.deepEqual(ids.slice(-4), ['btn-mic', 'btn-cam', 'btn-leave', 'btn-end']);
    const [leaveBox, endBox] = [await d.locator('#btn-leave').boundingBox(), await d.locator('#btn-end').boundingBox()];
    // Set apart: End sits at the far end of the row, several button gaps from Leave.
    const gap = endBox.x - (leaveBox.x + leaveBox.width);
    assert.ok(gap >= 40, `Leave and End are adjacent (${gap} px apart)`);
    assert.notEqual(await d.locator('#btn-leave').evaluate((b) => getComputedStyle(b).backgroundColor),
      await d.locator('#btn-end').evaluate((b) => getComputedStyle(b).backgroundColor), 'Leave looks like End');

    // Leave asks first; Stay (the focused choice) keeps the call.
    await p.getByRole('button', { name: 'Leave', exact: true }).click();
    const dialog = p.getByRole('dialog', { name: 'Leave the consultation?' });
    await dialog.waitFor();
    assert.equal(await p.evaluate(() => document.activeElement.id), 'confirm-cancel');
    await check(p, 'leave-dialog');
    await p.keyboard.press('Enter');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await view(p), 'call');
    assert.equal(await p.evaluate(() => document.activeElement.id), 'btn-leave', 'focus goes back to Leave');
  });

  test('a guest\'s invite page', async () => {
    const d = page.doctor;
    await d.getByLabel("Guest's name and role").fill('Interpreter: B. Costa');
    await d.getByRole('button', { name: 'Create invite link' }).click();
    const link = await waitFor(async () => (await d.locator('#invite-link').inputValue()) || null,
      { timeout: 10000, what: 'the invite link' });
    const g = await open('guest');
    await g.goto(link);
    await g.locator('#view-consent').waitFor({ state: 'visible', timeout: 15000 });
    assert.equal(await g.evaluate(() => window.__test.gum), 0);
    await check(g, 'invite');
  });

  test('the doctor ends the consultation: the ended page, and the doctor is told they ended it', async () => {
    const d = page.doctor;
    const p = page.patient;
    await d.getByRole('button', { name: 'End consultation for everyone' }).click();
    await d.getByRole('dialog', { name: 'End the consultation for everyone?' })
      .getByRole('button', { name: 'End for everyone' }).click();
    for (const x of [d, p]) {
      await x.locator('#view-message[data-kind="ended"]').waitFor({ state: 'visible', timeout: 15000 });
    }
    assert.match(await d.locator('#message-body').innerText(), /^You ended the consultation for everyone/);
    assert.match(await p.locator('#message-body').innerText(), /^The doctor ended the consultation/);
    await check(p, 'ended');
    await check(d, 'ended-doctor');
  });
});
