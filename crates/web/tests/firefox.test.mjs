// Firefox and Chromium in one end-to-end encrypted consultation, both ways. Run by
// scripts/parts/55-firefox.sh inside a network namespace, against a server whose SFU
// address was left to its default (the namespace's routable address, since Firefox
// gathers no loopback candidates). Firefox (Debian's firefox-esr) is driven over
// WebDriver BiDi by puppeteer-core, Chromium by playwright-core; every step below uses
// only `page.evaluate`, which both offer, so one script drives either browser.
//
//   CONFIDE_BASE_URL    where the server listens
//   CONFIDE_DEMO_JSON   the demo clinic, first appointment (Chromium doctor, Firefox patient)
//   CONFIDE_DEMO2_JSON  the same clinic's second appointment (Firefox doctor, Chromium patient)
//   CHROMIUM, FIREFOX   the browser binaries

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import {
  CHROMIUM_ARGS, INIT_SCRIPT, artifactsDir, inboundStats, unusedTotp, waitFor,
} from './lib.mjs';

const BASE = process.env.CONFIDE_BASE_URL;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FIREFOX = process.env.FIREFOX || '/usr/bin/firefox-esr';
const OUT = artifactsDir();

function demoOf(file) {
  const raw = JSON.parse(readFileSync(file, 'utf8'));
  const accounts = Array.isArray(raw.accounts) ? raw.accounts
    : Object.entries(raw.accounts).map(([k, v]) => ({ key: k, ...v }));
  const one = (role) => {
    const a = accounts.find((x) => x.role === role);
    assert.ok(a, `the demo clinic has a ${role}`);
    return { username: a.username, password: a.password, totp_secret: a.totp_secret || null };
  };
  const appt = raw.appointment ?? raw.appointment_id;
  return {
    doctor: one('doctor'),
    patient: one('patient'),
    appointment: Number(typeof appt === 'object' ? appt.id : appt),
  };
}

const browsers = [];
const logs = {};

async function chromiumPage(name) {
  const b = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  browsers.push(b);
  const c = await b.newContext({ ignoreHTTPSErrors: true, permissions: ['camera', 'microphone'] });
  await c.addInitScript(INIT_SCRIPT);
  const p = await c.newPage();
  logs[name] = [];
  p.on('console', (m) => logs[name].push(`[${m.type()}] ${m.text()}`));
  p.on('pageerror', (e) => logs[name].push(`[pageerror] ${e.message}`));
  return p;
}

async function firefoxPage(name) {
  const b = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    acceptInsecureCerts: true,
    extraPrefsFirefox: {
      // Fake camera and microphone, no permission prompt, autoplay allowed: what a
      // user's clicks grant. Loopback ICE candidates stay off, as in a user's Firefox.
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      'media.autoplay.default': 0,
      'media.autoplay.blocking_policy': 0,
    },
  });
  browsers.push(b);
  const p = await b.newPage();
  await p.evaluateOnNewDocument(INIT_SCRIPT);
  logs[name] = [];
  p.on('console', (m) => logs[name].push(`[${m.type()}] ${m.text()}`));
  p.on('pageerror', (e) => logs[name].push(`[pageerror] ${e.message}`));
  return p;
}

// ----------------------------------------------------------- browser-neutral steps

const visible = (p, sel) => p.evaluate((s) => {
  const el = document.querySelector(s);
  return !!el && !el.hidden && !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
}, sel);

async function waitVisible(p, sel, what, timeout = 20000) {
  await waitFor(() => visible(p, sel), { timeout, what: `${what}: ${sel} visible` });
}

async function fill(p, sel, value) {
  const ok = await p.evaluate(([s, v]) => {
    const el = document.querySelector(s);
    if (!el) return false;
    el.focus();
    el.value = v;
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
    return true;
  }, [sel, value]);
  assert.ok(ok, `no ${sel} to fill`);
}

async function click(p, sel, what) {
  await waitFor(() => p.evaluate((s) => {
    const el = document.querySelector(s);
    if (!el || el.disabled) return false;
    el.click();
    return true;
  }, sel), { timeout: 20000, what: `${what}: ${sel} clickable` });
}

// The same doctor logs in twice here within a minute: `unusedTotp` waits for a step
// not used yet (the server refuses a replayed code).

async function login(p, account) {
  await p.goto(`${BASE}/?test=1#/login`);
  await waitVisible(p, '#login-form', 'login form');
  await fill(p, '#login-username', account.username);
  await fill(p, '#login-password', account.password);
  await click(p, '#login-submit', 'log in');
  if (account.totp_secret) {
    await waitVisible(p, '#login-totp-field', 'authentication code field', 15000);
    await fill(p, '#login-totp', await unusedTotp(account.totp_secret));
    await click(p, '#login-submit', 'log in with the code');
  }
  await waitVisible(p, '#view-appointments', 'appointments after login');
}

/** This server was started without --test-hooks, as a production one is: the page
 * must have ignored `?test=1` (no hooks reading plaintext samples). */
async function noTestHooks(p) {
  const hooks = await p.evaluate(() => typeof window.confideTest);
  assert.equal(hooks, 'undefined', '?test=1 turned on the test hooks on a server that does not allow them');
}

async function enter(p, appointment, what) {
  const link = `a[data-appointment="${appointment}"]`;
  await waitVisible(p, link, `${what}: the appointment listed`);
  await click(p, link, what);
  await waitVisible(p, '#view-precall', `${what}: pre-call check`);
  await click(p, '#precall-continue', `${what}: continue after the pre-call check`);
}

async function admitFirst(d) {
  await waitFor(() => d.evaluate(() => {
    const b = [...document.querySelectorAll('#waiting-list button')].find((x) => x.textContent.trim() === 'Admit');
    if (!b) return false;
    b.click();
    return true;
  }), { timeout: 30000, what: 'an Admit button in the waiting list' });
}

async function e2eeOk(p, what) {
  await waitFor(() => p.evaluate(() => document.getElementById('e2ee-indicator').dataset.state === 'ok'),
    { timeout: 30000, what: `${what}: "End-to-end encrypted"` });
}

async function safetyCode(p) {
  return p.evaluate(() => document.getElementById('safety-code').dataset.code || null);
}

async function decodes(p, what) {
  const s = await waitFor(async () => {
    const x = await inboundStats(p);
    return x.video.framesDecoded > 100 && x.audio.packetsReceived > 50 ? x : null;
  }, { timeout: 60000, interval: 1000, what: `${what}: framesDecoded > 100 and audio` })
    .catch(async (e) => {
      const state = await p.evaluate(() => ({
        pcs: window.__test.pcs.map((pc) => [pc.connectionState, pc.iceConnectionState]),
        banner: document.getElementById('banner').textContent,
      }));
      throw new Error(`${e.message}; ${JSON.stringify(state)}`);
    });
  // Chromium's fake camera draws a moving pattern; Firefox's fills the frame with one
  // colour that cycles. Either way a decoded picture is not blank and not frozen: it has
  // detail, or its colour moves between two looks a second apart.
  const v = await waitFor(async () => {
    const a = await picture(p);
    if (a.width && a.variance > 20) return a;
    await new Promise((r) => setTimeout(r, 1000));
    const b = await picture(p);
    return a.width && b.width && Math.abs(a.mean - b.mean) + Math.abs(a.hue - b.hue) > 3 ? b : null;
  }, { timeout: 20000, what: `${what}: a remote picture that is not blank or frozen` });
  return { ...s, picture: v };
}

/** In-page: size, mean luma, luma variance and mean red-minus-blue of the remote video. */
async function picture(p) {
  return p.evaluate(() => {
    const v = document.querySelector('#remote-tiles .tile video');
    if (!v || !v.videoWidth) return { width: 0, mean: 0, hue: 0, variance: 0 };
    const c = document.createElement('canvas');
    c.width = Math.min(160, v.videoWidth);
    c.height = Math.max(1, Math.round(c.width * v.videoHeight / v.videoWidth));
    const ctx = c.getContext('2d');
    ctx.drawImage(v, 0, 0, c.width, c.height);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0; let sum = 0; let sum2 = 0; let rb = 0;
    for (let i = 0; i < d.length; i += 4) {
      const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
      sum += y; sum2 += y * y; rb += d[i] - d[i + 2]; n++;
    }
    const mean = sum / n;
    return { width: v.videoWidth, mean, hue: rb / n, variance: sum2 / n - mean * mean };
  });
}

/** The candidate pair each page's media uses: both ends on the routable address. */
async function selectedPair(p) {
  return p.evaluate(async () => {
    for (const pc of window.__test.pcs) {
      if (pc.connectionState !== 'connected') continue;
      const stats = await pc.getStats();
      const all = new Map();
      stats.forEach((r) => all.set(r.id, r));
      for (const r of all.values()) {
        if (r.type === 'candidate-pair' && r.state === 'succeeded' && (r.nominated || r.selected)) {
          const remote = all.get(r.remoteCandidateId);
          return { remote: remote && (remote.address || remote.ip), protocol: remote && remote.protocol };
        }
      }
    }
    return null;
  });
}

async function consultation(doctor, patient, demo, label) {
  await login(doctor, demo.doctor);
  await login(patient, demo.patient);
  await enter(doctor, demo.appointment, `${label} doctor`);
  await waitVisible(doctor, '#view-call', `${label} doctor in the call`);
  await enter(patient, demo.appointment, `${label} patient`);
  if (await waitFor(async () => (await visible(patient, '#view-consent')) || (await visible(patient, '#view-waiting')) || null,
    { timeout: 20000, what: `${label} patient: consent or waiting room` }) && await visible(patient, '#view-consent')) {
    await patient.evaluate(() => { document.getElementById('consent-agree').checked = true; });
    await click(patient, '#consent-continue', `${label} patient consents`);
  }
  await waitVisible(patient, '#view-waiting', `${label} patient waiting`);
  await admitFirst(doctor);
  await waitVisible(patient, '#view-call', `${label} patient admitted`);
  await e2eeOk(doctor, `${label} doctor`);
  await e2eeOk(patient, `${label} patient`);
  const code = await waitFor(async () => {
    const a = await safetyCode(doctor);
    const b = await safetyCode(patient);
    return a && a === b ? a : null;
  }, { timeout: 30000, what: `${label}: the same safety code on both pages` });
  assert.match(code, /^\d{30}$/);
  await noTestHooks(doctor);
  await noTestHooks(patient);
  const seenByDoctor = await decodes(doctor, `${label} doctor`);
  const seenByPatient = await decodes(patient, `${label} patient`);
  for (const p of [doctor, patient]) {
    const pair = await selectedPair(p);
    assert.ok(pair, `${label}: a connected candidate pair`);
    assert.equal(pair.remote, '10.77.0.1', `${label}: media reaches the SFU at its routable address`);
  }
  return { seenByDoctor, seenByPatient };
}

describe('Firefox and Chromium in one E2EE consultation, default media address', { timeout: 300_000 }, () => {
  let first;
  let second;
  before(() => {
    first = demoOf(process.env.CONFIDE_DEMO_JSON);
    second = demoOf(process.env.CONFIDE_DEMO2_JSON);
    assert.notEqual(first.appointment, second.appointment);
  });

  after(async () => {
    for (const [name, lines] of Object.entries(logs)) {
      writeFileSync(path.join(OUT, `firefox-${name}-console.log`), lines.join('\n'));
    }
    for (const b of browsers) await b.close().catch(() => {});
  });

  test('a Chromium doctor and a Firefox patient see and hear each other', async () => {
    const d = await chromiumPage('chromium-doctor');
    const p = await firefoxPage('firefox-patient');
    assert.match(await p.evaluate(() => navigator.userAgent), /Firefox\//);
    const r = await consultation(d, p, first, 'Chromium doctor / Firefox patient');
    assert.ok(r.seenByPatient.video.framesDecoded > 100);
    for (const b of browsers.splice(0)) await b.close();
  });

  test('a Firefox doctor and a Chromium patient see and hear each other', async () => {
    const d = await firefoxPage('firefox-doctor');
    const p = await chromiumPage('chromium-patient');
    const r = await consultation(d, p, second, 'Firefox doctor / Chromium patient');
    assert.ok(r.seenByDoctor.video.framesDecoded > 100);
  });
});
