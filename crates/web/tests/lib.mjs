// Helpers for the browser end-to-end tests: TOTP, the demo data, the forwarding tap,
// SFrame header parsing, launching Chromium, the accessibility scan and screenshots.

import { createHash, createHmac } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';

// ------------------------------------------------------------------ TOTP (RFC 6238)

export function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  const clean = s.toUpperCase().replace(/=+$/, '').replace(/\s+/g, '');
  let bits = 0;
  let value = 0;
  const out = [];
  for (const ch of clean) {
    const v = alphabet.indexOf(ch);
    if (v < 0) throw new Error(`not base32: ${ch}`);
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** RFC 6238 TOTP: HMAC-SHA1, 30 s steps, 6 digits. */
export function totp(secretBase32, unixSecs = Math.floor(Date.now() / 1000)) {
  const key = base32Decode(secretBase32);
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSecs / 30)));
  const mac = createHmac('sha1', key).update(counter).digest();
  const off = mac[mac.length - 1] & 0x0f;
  const bin = ((mac[off] & 0x7f) << 24) | (mac[off + 1] << 16) | (mac[off + 2] << 8) | mac[off + 3];
  return String(bin % 1_000_000).padStart(6, '0');
}

/** A code that stays valid for a few seconds more (waits out the end of a step). */
export async function freshTotp(secretBase32) {
  const left = 30 - (Math.floor(Date.now() / 1000) % 30);
  if (left < 4) await new Promise((r) => setTimeout(r, (left + 1) * 1000));
  return totp(secretBase32);
}

// The steps used per secret, kept in a file so that the test files, which `node --test`
// runs one after another in separate processes, know each other's: they share the demo
// accounts. Keyed by a hash of the secret; entries older than ten minutes are dropped.
const STEPS_FILE = path.join(tmpdir(), `confide-totp-steps-${process.getuid ? process.getuid() : 0}.json`);

function readSteps() {
  try { return JSON.parse(readFileSync(STEPS_FILE, 'utf8')); } catch { return {}; }
}

function stepKey(secret) {
  return createHash('sha256').update(`confide-test-totp:${secret}`).digest('hex').slice(0, 32);
}

/**
 * A code from a 30-second step not used yet for `secret` by this or an earlier test
 * process: the server refuses a step already used (replay), so a test that logs the same
 * person in twice within a step waits for the next one.
 */
export async function unusedTotp(secret) {
  const step = () => Math.floor(Date.now() / 30000);
  const key = stepKey(secret);
  const last = readSteps()[key];
  if (last !== undefined && step() <= last) {
    await new Promise((r) => setTimeout(r, (last + 1) * 30000 - Date.now() + 500));
  }
  const code = await freshTotp(secret);
  const steps = readSteps();
  for (const [k, s] of Object.entries(steps)) if (s < step() - 20) delete steps[k];
  steps[key] = step();
  writeFileSync(STEPS_FILE, JSON.stringify(steps));
  return code;
}

// ------------------------------------------------------------------ demo data

/** Every account of the demo data file, by its key (`doctor`, `patient`, `staff`, `admin`). */
export function demoAccounts(file) {
  const raw = JSON.parse(readFileSync(file, 'utf8'));
  const list = Array.isArray(raw.accounts) ? raw.accounts
    : Object.entries(raw.accounts || {}).map(([k, v]) => ({ key: k, ...v }));
  const out = {};
  for (const a of list) {
    out[a.key || a.username] = {
      username: a.username,
      password: a.password,
      totp_secret: a.totp_secret || a.totp || null,
      role: a.role,
    };
  }
  return out;
}

/**
 * Log in through the page's form (password, then the authentication code when the
 * account has a second factor); resolves once the login view is gone.
 */
export async function loginAs(page, base, account) {
  await page.goto(`${base}/#/login`);
  await page.getByLabel('Username').fill(account.username);
  await page.getByLabel('Password', { exact: true }).fill(account.password);
  await page.getByRole('button', { name: 'Log in' }).click();
  if (account.totp_secret) {
    const code = page.getByLabel('Authentication code');
    await code.waitFor({ state: 'visible', timeout: 15000 });
    await code.fill(await unusedTotp(account.totp_secret));
    await page.getByRole('button', { name: 'Log in' }).click();
  }
  await page.waitForFunction(() => !['login', 'loading'].includes(document.body.dataset.view), null, { timeout: 15000 });
}

/**
 * The demo clinic the server seeded (`confide demo --json` output, saved by
 * scripts/parts/50-browser.sh). Returns {doctor, patient, other, appointment}: each
 * account {username, password, totp_secret?}; `other` is a second patient who is not
 * part of the appointment.
 */
export function loadDemo(file) {
  const raw = JSON.parse(readFileSync(file, 'utf8'));
  const accounts = Array.isArray(raw.accounts) ? raw.accounts
    : Object.entries(raw.accounts || {}).map(([k, v]) => ({ key: k, ...v }));
  const norm = (a) => a && ({
    username: a.username,
    password: a.password,
    totp_secret: a.totp_secret || a.totp || null,
    role: a.role,
    key: a.key,
  });
  const byKey = (k) => accounts.find((a) => a.key === k || a.name === k);
  const patients = accounts.filter((a) => a.role === 'patient');
  const appt = raw.appointment ?? raw.appointment_id ?? (raw.appointments && raw.appointments[0]);
  const appointmentId = typeof appt === 'object' && appt !== null ? appt.id : appt;
  const doctor = norm(byKey('doctor') || accounts.find((a) => a.role === 'doctor'));
  const apptPatient = typeof appt === 'object' && appt && (appt.patient_username || appt.patient);
  const patient = norm(byKey('patient') || patients.find((p) => p.username === apptPatient) || patients[0]);
  const other = norm(byKey('other_patient') || byKey('other') || patients.find((p) => p.username !== patient.username));
  if (!doctor || !patient || !other || appointmentId === undefined) {
    throw new Error(`demo data lacks a doctor, two patients or an appointment: ${Object.keys(raw)}`);
  }
  return { doctor, patient, other, appointment: Number(appointmentId) };
}

// ------------------------------------------------------------------ the forwarding tap

/** Read the tap file: one JSON object per line, {kind, hex, ...}. */
export function readTap(file) {
  if (!existsSync(file)) return [];
  const out = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try { out.push(JSON.parse(line)); } catch { /* a line cut by a running writer */ }
  }
  return out;
}

/**
 * Parse an SFrame header (RFC 9605 section 4.3) at `off`. Returns {kid, ctr, len} or
 * null when the bytes cannot be a header followed by at least a 16-byte tag.
 */
export function parseSframeHeader(buf, off) {
  if (off >= buf.length) return null;
  const b = buf[off];
  const x = (b >> 7) & 1;
  const k = (b >> 4) & 7;
  const y = (b >> 3) & 1;
  const c = b & 7;
  let p = off + 1;
  let kid = BigInt(k);
  if (x) {
    const n = k + 1;
    if (p + n > buf.length) return null;
    kid = 0n;
    for (let i = 0; i < n; i++) kid = (kid << 8n) | BigInt(buf[p + i]);
    p += n;
  }
  let ctr = BigInt(c);
  if (y) {
    const n = c + 1;
    if (p + n > buf.length) return null;
    ctr = 0n;
    for (let i = 0; i < n; i++) ctr = (ctr << 8n) | BigInt(buf[p + i]);
    p += n;
  }
  if (buf.length - p < 16) return null; // the AEAD tag alone is 16 bytes
  return { kid, ctr, len: p - off };
}

/**
 * Where the encoded frame starts inside a VP8 RTP payload (RFC 7741 section 4.2), and
 * whether this packet starts a frame (S=1, PID=0). Returns null on a malformed
 * descriptor.
 */
export function vp8Descriptor(buf) {
  if (buf.length < 1) return null;
  const b0 = buf[0];
  const x = (b0 >> 7) & 1;
  const s = (b0 >> 4) & 1;
  const pid = b0 & 7;
  let p = 1;
  if (x) {
    if (p >= buf.length) return null;
    const b1 = buf[p++];
    const i = (b1 >> 7) & 1;
    const l = (b1 >> 6) & 1;
    const t = (b1 >> 5) & 1;
    const k = (b1 >> 4) & 1;
    if (i) {
      if (p >= buf.length) return null;
      p += (buf[p] & 0x80) ? 2 : 1;
    }
    if (l) p += 1;
    if (t || k) p += 1;
  }
  if (p > buf.length) return null;
  return { start: s === 1 && pid === 0, offset: p };
}

/**
 * Check one forwarded payload. Returns {frameStart, ok, kid, why}:
 * audio (Opus) payloads are whole frames: 1 clear TOC byte, then the SFrame header;
 * video (VP8) packets that start a frame carry the 10 (keyframe) or 3 clear bytes,
 * then the header; continuation packets carry ciphertext only.
 */
export function checkPayload(kind, buf) {
  if (kind === 'audio') {
    const h = parseSframeHeader(buf, 1);
    return h ? { frameStart: true, ok: true, kid: h.kid, ctr: h.ctr } : { frameStart: true, ok: false, why: 'no SFrame header after the Opus TOC byte' };
  }
  const d = vp8Descriptor(buf);
  if (!d) return { frameStart: false, ok: false, why: 'malformed VP8 payload descriptor' };
  if (!d.start) return { frameStart: false, ok: true };
  const frame = buf.subarray(d.offset);
  if (frame.length === 0) return { frameStart: true, ok: false, why: 'empty VP8 frame' };
  const prefix = (frame[0] & 1) === 0 ? 10 : 3;
  const h = parseSframeHeader(frame, prefix);
  return h ? { frameStart: true, ok: true, kid: h.kid, ctr: h.ctr, keyframe: prefix === 10 }
    : { frameStart: true, ok: false, why: `no SFrame header after the ${prefix}-byte VP8 clear prefix` };
}

// ------------------------------------------------------------------ Chromium

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
];

export function artifactsDir() {
  const dir = process.env.CONFIDE_ARTIFACTS_DIR
    || path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../target/browser');
  mkdirSync(dir, { recursive: true });
  return dir;
}

export function freshProfileDir() {
  return mkdtempSync(path.join(tmpdir(), 'confide-chromium-'));
}

/**
 * Installed in every page before its scripts run: records each RTCPeerConnection and
 * each getUserMedia call, so the test can read getStats() and prove that a refused
 * browser never set up media at all. Test code only; the client does not know of it.
 */
export const INIT_SCRIPT = `(() => {
  const Orig = window.RTCPeerConnection;
  const pcs = [];
  const tracks = [];
  window.__test = { pcs, tracks, gum: 0 };
  if (Orig) {
    const Wrapped = function (...args) {
      const pc = new Orig(...args);
      pcs.push(pc);
      pc.addEventListener('track', (e) => tracks.push(e.track.kind));
      return pc;
    };
    Wrapped.prototype = Orig.prototype;
    Object.setPrototypeOf(Wrapped, Orig);
    window.RTCPeerConnection = Wrapped;
  }
  // Signaling sockets, the key-layer messages the server delivered on them and what the
  // page sent, so a test can replay a real message or play a malicious server (inject
  // messages on the live socket) and check what the page did about it.
  const OrigWs = window.WebSocket;
  window.__test.sockets = [];
  window.__test.mlsIn = [];
  window.__test.sent = [];
  if (OrigWs) {
    const WrappedWs = function (...args) {
      const ws = new OrigWs(...args);
      window.__test.sockets.push(ws);
      ws.addEventListener('message', (e) => {
        if (!e.isTrusted) return;
        try {
          const m = JSON.parse(e.data);
          if (m && typeof m.type === 'string' && m.type.startsWith('mls_')) window.__test.mlsIn.push(m);
        } catch { /* not JSON */ }
      });
      const send = ws.send.bind(ws);
      ws.send = (data) => {
        try {
          const m = JSON.parse(data);
          if (m && m.type !== 'ping') {
            window.__test.sent.push({ type: m.type, add: m.add, welcome: !!m.welcome, at: Date.now() });
          }
        } catch { /* not JSON */ }
        return send(data);
      };
      return ws;
    };
    WrappedWs.prototype = OrigWs.prototype;
    Object.setPrototypeOf(WrappedWs, OrigWs);
    window.WebSocket = WrappedWs;
  }
  const md = navigator.mediaDevices;
  if (md && md.getUserMedia) {
    const gum = md.getUserMedia.bind(md);
    md.getUserMedia = (c) => { window.__test.gum++; return gum(c); };
  }
})();`;

/** In-page: inbound-rtp counters of every recorded peer connection. */
export async function inboundStats(page, { lastOnly = false } = {}) {
  return page.evaluate(async (last) => {
    const out = { video: { framesDecoded: 0, packetsReceived: 0, bytesReceived: 0 }, audio: { packetsReceived: 0, bytesReceived: 0 } };
    const pcs = last ? window.__test.pcs.slice(-1) : window.__test.pcs;
    for (const pc of pcs) {
      if (pc.connectionState === 'closed') continue;
      const stats = await pc.getStats();
      stats.forEach((r) => {
        if (r.type !== 'inbound-rtp') return;
        const o = out[r.kind];
        if (!o) return;
        o.packetsReceived += r.packetsReceived || 0;
        o.bytesReceived += r.bytesReceived || 0;
        if (r.kind === 'video') o.framesDecoded += r.framesDecoded || 0;
      });
    }
    return out;
  }, lastOnly);
}

/** In-page: is the video element showing a picture (not one flat colour)? */
export async function videoVariance(page, selector) {
  return page.evaluate((sel) => {
    const v = document.querySelector(sel);
    if (!v || !v.videoWidth) return { width: 0, height: 0, variance: 0 };
    const c = document.createElement('canvas');
    c.width = Math.min(320, v.videoWidth);
    c.height = Math.round(c.width * v.videoHeight / v.videoWidth);
    const ctx = c.getContext('2d');
    ctx.drawImage(v, 0, 0, c.width, c.height);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0; let sum = 0; let sum2 = 0;
    for (let i = 0; i < d.length; i += 4) {
      const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
      sum += y; sum2 += y * y; n++;
    }
    const mean = sum / n;
    return { width: v.videoWidth, height: v.videoHeight, variance: sum2 / n - mean * mean };
  }, selector);
}

/** In-page: deliver `msg` on the page's live signaling socket, as if the server sent it. */
export async function inject(page, msg) {
  const ok = await page.evaluate((m) => {
    const ws = window.__test.sockets.filter((s) => s.readyState === WebSocket.OPEN).pop();
    if (!ws) return false;
    ws.dispatchEvent(new MessageEvent('message', { data: JSON.stringify(m) }));
    return true;
  }, msg);
  if (!ok) throw new Error('no open signaling socket to inject into');
}

export async function waitFor(fn, { timeout = 30000, interval = 250, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, interval));
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** A REST call made by `page` with `token` (or the page's own session). */
export async function rest(page, method, url, body, token) {
  return page.evaluate(async ([m, u, b, t]) => {
    const headers = { 'Content-Type': 'application/json' };
    const tok = t || sessionStorage.getItem('confide.token');
    if (tok) headers.Authorization = `Bearer ${tok}`;
    const r = await fetch(u, { method: m, headers, body: b === undefined ? undefined : JSON.stringify(b) });
    let json = null;
    try { json = await r.json(); } catch { /* empty */ }
    return { status: r.status, json };
  }, [method, url, body, token]);
}

// ------------------------------------------------------------------ accessibility, screenshots

const require = createRequire(import.meta.url);
let axeSource = null;

/**
 * Run axe-core (WCAG 2.x A and AA rules) on the page as it is now and fail on any
 * serious or critical violation, naming each with the offending elements. Lesser
 * findings are returned (and written next to the screenshots) for review, not failed on.
 */
export async function a11yScan(page, label) {
  if (!axeSource) axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) {
    // Evaluated through the driver, not as a <script>: the page's CSP (rightly) refuses
    // inline scripts, and the scan must not need a weaker CSP.
    await page.evaluate(`${axeSource}\n;void 0`);
  }
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
      resultTypes: ['violations'],
    });
    return r.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')),
    }));
  });
  const dir = artifactsDir();
  writeFileSync(path.join(dir, `a11y-${label}.json`), JSON.stringify(result, null, 2));
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    const what = bad.map((v) => `${v.impact} ${v.id} (${v.help}): ${v.nodes.join(', ')}`).join('\n  ');
    throw new Error(`accessibility scan of ${label}: ${bad.length} serious or critical violation(s):\n  ${what}`);
  }
  return result;
}

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/**
 * Screenshots of the page at desktop (1280x800) and phone (390x844) size, full page,
 * as `<name>-desktop.png` and `<name>-phone.png` under target/browser/, and the
 * accessibility scan at each size (a phone layout can hide or overlap what the desktop
 * one shows). The viewport is put back afterwards.
 */
export async function screenshots(page, name, { scan = true } = {}) {
  const dir = artifactsDir();
  const before = page.viewportSize();
  for (const [size, vp] of [['desktop', DESKTOP], ['phone', PHONE]]) {
    await page.setViewportSize(vp);
    await page.waitForTimeout(150); // a layout pass for the new width
    await page.screenshot({ path: path.join(dir, `${name}-${size}.png`), fullPage: true });
    if (scan) await a11yScan(page, `${name}-${size}`);
  }
  if (before) await page.setViewportSize(before);
}
