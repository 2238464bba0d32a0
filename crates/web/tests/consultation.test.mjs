// End-to-end test of the browser client against a real `confide` server, in headless
// Chromium with fake camera and microphone. Run by scripts/parts/50-browser.sh, which
// starts the server and sets:
//
//   CONFIDE_BASE_URL   where the server listens (https://127.0.0.1:PORT)
//   CONFIDE_DEMO_JSON  the demo clinic (`confide demo --json`): accounts, TOTP secrets,
//                      the appointment
//   CONFIDE_TAP_FILE   where the server's SFU tap appends every forwarded payload as a
//                      JSON line {kind, hex}
//   CONFIDE_IMPAIR_FILE  a participant id written here makes the SFU lose that
//                      participant's media datagrams, both ways (test-only server hook)
//   CONFIDE_REQUIRE_TAP  0 skips the tap check and the media-path cut (a server built
//                      without the test hooks)
//   CHROMIUM           the browser binary (default /usr/bin/chromium)
//
// One consultation, in order: the doctor and the patient log in (the doctor with a TOTP
// code computed here), the patient consents (before any camera is asked for), checks
// the camera and waits, told the doctor is online; the doctor admits (an MLS Add),
// both decode each other's video, both show the same safety code and mark each other
// verified, a chat message arrives decrypted, the SFU only ever forwarded ciphertext,
// a third account is refused, the test plays a malicious server (a ghost device, a
// forged KeyPackage, a commit the ghost signs; nothing it holds opens a frame), the
// patient's media path is cut (ICE restart, then a full rejoin), a guest invited by the
// doctor joins and leaves (a group of three), the doctor ends. Then a second
// consultation of the same two shows them Verified at once, the doctor comes back on a
// new device (a key change the patient must accept before sending anything), and the
// MLS operations are timed in Chromium.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  CHROMIUM_ARGS, INIT_SCRIPT, artifactsDir, checkPayload, freshTotp, inboundStats,
  inject, loadDemo, readTap, rest, videoVariance, waitFor,
} from './lib.mjs';
import {
  b64, forgeKeyPackage, opened, privateMessageHeader, reheadPrivateMessage, tappedFrames,
  unb64, wasm,
} from './mls.mjs';

const BASE = process.env.CONFIDE_BASE_URL || 'https://127.0.0.1:8443';
const DEMO = process.env.CONFIDE_DEMO_JSON;
const TAP = process.env.CONFIDE_TAP_FILE;
const TAP_SKIP = process.env.CONFIDE_REQUIRE_TAP === '0'
  ? 'the server was built without the SFU tap (CONFIDE_REQUIRE_TAP=0)' : false;
const IMPAIR = process.env.CONFIDE_IMPAIR_FILE;
const IMPAIR_SKIP = TAP_SKIP || (IMPAIR ? false : 'CONFIDE_IMPAIR_FILE is not set');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = artifactsDir();

let browser;
let demo;
const ctx = {};      // name -> BrowserContext
const page = {};     // name -> Page
const logs = {};     // name -> console lines (for failure reports)

async function openAs(name, extraInit, { phone = false } = {}) {
  const c = await browser.newContext({
    ignoreHTTPSErrors: true,
    // The patient uses a phone-sized screen: the whole flow must work there too.
    viewport: phone ? { width: 390, height: 844 } : { width: 1280, height: 860 },
    isMobile: phone,
    hasTouch: phone,
    permissions: ['camera', 'microphone'],
  });
  await c.addInitScript(INIT_SCRIPT);
  if (extraInit) await c.addInitScript(extraInit);
  const p = await c.newPage();
  logs[name] = [];
  p.on('console', (m) => logs[name].push(`[${m.type()}] ${m.text()}`));
  p.on('pageerror', (e) => logs[name].push(`[pageerror] ${e.message}`));
  ctx[name] = c;
  page[name] = p;
  return p;
}

async function login(p, account) {
  await p.goto(`${BASE}/?test=1#/login`);
  await p.getByLabel('Username').fill(account.username);
  await p.getByLabel('Password').fill(account.password);
  await p.getByRole('button', { name: 'Log in' }).click();
  if (account.totp_secret) {
    const code = p.getByLabel('Authentication code');
    await code.waitFor({ state: 'visible', timeout: 15000 });
    await code.fill(await freshTotp(account.totp_secret));
    await p.getByRole('button', { name: 'Log in' }).click();
  }
  await p.locator('#view-appointments').waitFor({ state: 'visible', timeout: 15000 });
}

async function view(p) {
  return p.evaluate(() => document.body.dataset.view);
}

/** What a page's media looks like, for failure messages. */
async function mediaState(p) {
  return p.evaluate(async () => ({
    pcs: window.__test.pcs.map((pc) => [pc.connectionState, pc.signalingState]),
    tracks: window.__test.tracks,
    e2ee: window.confideTest ? await window.confideTest.e2eeStats() : null,
    banner: document.getElementById('banner').textContent,
  }));
}

function dumpLogs() {
  for (const [name, lines] of Object.entries(logs)) {
    writeFileSync(path.join(OUT, `${name}-console.log`), lines.join('\n'));
  }
}

/** Waits until `who` is back in the call with one peer. */
async function backInCall(who, what) {
  return waitFor(async () => {
    const s = await who.evaluate(() => window.confideTest.state());
    return s.inCall && s.peers.length === 1 ? s : null;
  }, { timeout: 30000, what });
}

async function keys(p) {
  return (await p.evaluate(() => window.confideTest.state())).keys;
}

/** Both pages in one MLS group (the same group id and epoch), sharing keys; resolves to
 * the doctor's view of it. */
async function sameGroup(a, b, what, notGroupId) {
  let last = null;
  return waitFor(async () => {
    const x = await keys(a);
    const y = await keys(b);
    last = { a: x, b: y };
    return x.group && x.sharing && y.sharing && x.groupId === y.groupId && x.epoch === y.epoch
      && x.groupId !== notGroupId ? x : null;
  }, { timeout: 30000, what }).catch(async (e) => {
    const detail = async (p) => p.evaluate(() => ({
      state: window.confideTest.state(),
      mlsIn: window.__test.mlsIn.slice(-6).map((m) => ({ type: m.type, epoch: m.epoch })),
      sent: window.__test.sent.slice(-8).map((m) => m.type),
      chat: [...document.querySelectorAll('#chat-log li.system')].slice(-4).map((li) => li.textContent),
      banner: document.getElementById('banner').textContent,
    }));
    throw new Error(`${e.message}; ${JSON.stringify({ last, a: await detail(a), b: await detail(b) })}`);
  });
}

/** The safety code both pages show, once they show the same one. */
async function equalSafetyCode(a, b) {
  return waitFor(async () => {
    const x = await a.locator('#safety-code').getAttribute('data-code');
    const y = await b.locator('#safety-code').getAttribute('data-code');
    return x && x === y ? x : null;
  }, { timeout: 30000, what: 'an equal safety code on both sides' });
}

async function e2eeOk(p, what) {
  await waitFor(async () => (await p.locator('#e2ee-indicator').getAttribute('data-state')) === 'ok',
    { timeout: 30000, what: `${what}: "End-to-end encrypted"` });
  assert.equal(await p.locator('#e2ee-text').innerText(), 'End-to-end encrypted');
}

/** Leave the call with the Leave button, confirming in the dialog it opens. */
async function leaveCall(p) {
  await p.getByRole('button', { name: 'Leave', exact: true }).click();
  await p.getByRole('dialog', { name: 'Leave the consultation?' })
    .getByRole('button', { name: 'Leave the consultation' }).click();
  await p.locator('#view-message[data-kind="left"]').waitFor({ state: 'visible', timeout: 15000 });
}

/** On a phone the chat is an overlay: open it (nothing to do on a wide screen). */
async function openChat(p) {
  if (await p.locator('#chat-toggle').isVisible() && !(await p.locator('#chat-panel').isVisible())) {
    await p.locator('#chat-toggle').click();
  }
  await p.locator('#chat-input').waitFor({ state: 'visible' });
}

/** The doctor's commits the page sent since `since` (ms). */
async function commitsSent(p, since) {
  return p.evaluate((t) => window.__test.sent.filter((m) => m.type === 'mls_commit' && m.at >= t), since);
}

describe('browser consultation, end-to-end encrypted', { timeout: 240_000 }, () => {
  before(async () => {
    assert.ok(DEMO, 'CONFIDE_DEMO_JSON must name the demo data file');
    demo = loadDemo(DEMO);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  });

  after(async () => {
    dumpLogs();
    if (browser) await browser.close();
  });

  test('doctor (password + TOTP) and patient log in and see the appointment', async () => {
    const d = await openAs('doctor');
    // The patient's browser has only the older createEncodedStreams API, so both
    // transform paths run, against each other, in one call.
    const p = await openAs('patient', 'delete window.RTCRtpScriptTransform;', { phone: true });
    await login(d, demo.doctor);
    await login(p, demo.patient);
    // The demo patient starts without consent, so the consent step is shown.
    const consent = await rest(p, 'GET', '/api/consent');
    assert.equal(consent.status, 200);
    assert.equal(consent.json.accepted, false, 'the demo patient has not consented yet');
    for (const x of [d, p]) {
      await x.locator(`a[data-appointment="${demo.appointment}"]`).waitFor({ timeout: 10000 });
    }
  });

  test('pre-call check, consent and waiting room; the doctor admits', async () => {
    const d = page.doctor;
    const p = page.patient;
    // Doctor: pre-call check, then the call view (alone) with the waiting list.
    await d.locator(`a[data-appointment="${demo.appointment}"]`).click();
    await d.locator('#view-precall').waitFor({ state: 'visible' });
    await d.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await d.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });

    // Patient: consent first (no camera or microphone asked for before it), then the
    // pre-call check, then the waiting room.
    await p.locator(`a[data-appointment="${demo.appointment}"]`).click();
    await p.locator('#view-consent').waitFor({ state: 'visible', timeout: 15000 });
    assert.equal(await p.evaluate(() => window.__test.gum), 0, 'the camera was asked for before consent');
    // Continuing without ticking the box is refused with an explanation.
    await p.getByRole('button', { name: 'Agree and continue' }).click();
    await p.locator('#consent-error').waitFor({ state: 'visible' });
    assert.equal(await p.evaluate(() => window.__test.gum), 0);
    await p.getByLabel('I agree to have this consultation by video.').check();
    await p.getByRole('button', { name: 'Agree and continue' }).click();
    await p.locator('#view-precall').waitFor({ state: 'visible', timeout: 15000 });
    await p.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await p.locator('#view-waiting').waitFor({ state: 'visible', timeout: 20000 });
    assert.match(await p.locator('#view-waiting').innerText(), /The doctor will admit you/);
    // The doctor is in the call already: the waiting room says so.
    await p.locator('#waiting-doctor[data-online="true"]').waitFor({ timeout: 10000 });
    assert.match(await p.locator('#waiting-doctor').innerText(), /doctor is online/);

    // Doctor sees the patient waiting and admits.
    const admit = d.locator('#waiting-list button', { hasText: 'Admit' });
    await admit.first().waitFor({ timeout: 20000 });
    await admit.first().click();
    await p.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });
    assert.equal(await view(d), 'call');
    assert.equal(await view(p), 'call');
    // "Waiting for keys" until the doctor's Add is accepted and the patient has joined
    // from the Welcome and checked the doctor's key; then both are in one group.
    for (const [name, x] of [['doctor', d], ['patient', p]]) await e2eeOk(x, name);
    await sameGroup(d, p, 'one MLS group on both pages');
    // The Admit click went out as an MLS commit with the Welcome, not a plain admit.
    const sent = await d.evaluate(() => window.__test.sent.map((m) => m.type));
    assert.ok(sent.includes('mls_commit') && !sent.includes('admit') && !sent.includes('e2ee'), `doctor sent ${sent}`);
    assert.equal((await d.evaluate(() => window.confideTest.state())).mode, 'script');
    assert.equal((await p.evaluate(() => window.confideTest.state())).mode, 'streams');
  });

  test('both decode the other side\'s video (framesDecoded > 100) and it is not blank', async () => {
    for (const name of ['doctor', 'patient']) {
      const p = page[name];
      await waitFor(async () => {
        const s = await inboundStats(p);
        return s.video.framesDecoded > 100 && s.audio.packetsReceived > 50 ? s : null;
      }, { timeout: 60000, interval: 1000, what: `${name}: framesDecoded > 100` })
        .catch(async (e) => { throw new Error(`${e.message}; media: ${JSON.stringify(await mediaState(p))}`); });
      const v = await waitFor(async () => {
        const r = await videoVariance(p, '#remote-tiles .tile video');
        return r.variance > 20 ? r : null;
      }, { timeout: 15000, what: `${name}: a non-uniform remote picture` });
      assert.ok(v.width > 0 && v.height > 0);
      // Two parties: one tile, the other side's, with its sound and picture.
      const tiles = await p.evaluate(() => window.confideTest.tiles());
      const other = (await p.evaluate(() => window.confideTest.state())).peers;
      assert.deepEqual(tiles.map((t) => [t.participant, t.kinds]), [[other[0], ['audio', 'video']]]);
      await p.screenshot({ path: path.join(OUT, `${name}-call.png`), fullPage: true });
      await p.locator('#remote-tiles .tile video').screenshot({ path: path.join(OUT, `${name}-remote-video.png`) });
      const st = await p.evaluate(() => window.confideTest.e2eeStats());
      assert.ok(st.decrypted.video > 100, `${name} decrypted ${st.decrypted.video} video frames`);
      assert.ok(st.sent.video > 100, `${name} encrypted ${st.sent.video} video frames`);
      assert.equal(st.dropped_unencrypted, 0, `${name} had frames it could not encrypt`);
      assert.ok(st.sharing, `${name} does not share keys`);
      // Only the few frames that beat the sender's key may fail; the indicator is calm.
      assert.ok(st.failed.video < 30, `${name}: ${st.failed.video} video frames failed to decrypt`);
      assert.equal(await p.locator('#e2ee-indicator').getAttribute('data-state'), 'ok');
      if (name === 'doctor') {
        // RTCRtpScriptTransform: a keyframe was requested once the peer's key was in.
        assert.ok(st.keyframe_requests >= 1, 'no keyframe request after the key install');
      }
    }
  });

  test('both show the same safety code, the one the directory\'s keys give', async () => {
    const codes = {};
    for (const name of ['doctor', 'patient']) {
      codes[name] = await waitFor(async () => {
        const c = await page[name].locator('#safety-code').getAttribute('data-code');
        return c && /^\d{30}$/.test(c) ? c : null;
      }, { what: `${name}: safety code` });
      assert.match(await page[name].locator('#safety').innerText(), /[Cc]ompare this code aloud/);
      // The roster entry of the other person carries the same code.
      const entry = await page[name].locator('#roster li').first().locator('.code').getAttribute('data-code');
      assert.equal(entry, codes[name]);
    }
    assert.equal(codes.doctor, codes.patient);
    // Computed here from the two devices' public keys, as the directory logs them.
    const w = await wasm();
    const members = (await page.doctor.evaluate(() => window.confideTest.state())).roster;
    assert.equal(members.length, 2);
    const [a, b] = members;
    const code = w.pairCode(a.principal, a.device, unb64(a.key), b.principal, b.device, unb64(b.key));
    assert.equal(code.replace(/\s+/g, ''), codes.doctor);
  });

  test('each marks the other verified after comparing: a persistent Verified tick', async () => {
    for (const name of ['doctor', 'patient']) {
      const p = page[name];
      const entry = p.locator('#roster li').first();
      assert.equal(await entry.locator('.verified').count(), 0, `${name}: verified before comparing`);
      await entry.getByRole('button', { name: /^Mark as verified: .+/ }).click();
      await entry.locator('.verified[data-verified="true"]').waitFor({ timeout: 10000 });
      assert.match(await entry.innerText(), /Verified/);
      assert.equal(await entry.getAttribute('data-status'), 'verified');
    }
  });

  test('the device secret and MLS state are stored only sealed, under a non-extractable key', async () => {
    for (const name of ['doctor', 'patient']) {
      const me = (await page[name].evaluate(() => window.confideTest.state())).device;
      const records = await page[name].evaluate(async () => {
        const db = await new Promise((resolve, reject) => {
          const q = indexedDB.open('confide-e2ee');
          q.onsuccess = () => resolve(q.result);
          q.onerror = () => reject(q.error);
        });
        const all = await new Promise((resolve, reject) => {
          const q = db.transaction('identity', 'readonly').objectStore('identity').getAll();
          q.onsuccess = () => resolve(q.result);
          q.onerror = () => reject(q.error);
        });
        db.close();
        const out = [];
        for (const r of all) {
          let exported = false;
          try { await crypto.subtle.exportKey('raw', r.wrapKey); exported = true; } catch { /* refused */ }
          // Page script may use the key (that is how the worker opens the record); what
          // it opens to is the device's secret, state, pins and log head, nothing else.
          const plain = new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, r.wrapKey, r.sealed));
          const c = JSON.parse(new TextDecoder().decode(plain));
          const secret = Uint8Array.from(atob(c.secret), (ch) => ch.charCodeAt(0));
          const sealed = new Uint8Array(r.sealed).join(',');
          out.push({
            fields: Object.keys(r).sort(),
            principal: /^(account|guest):\d+$/.test(r.principal),
            device: r.device,
            isCryptoKey: r.wrapKey instanceof CryptoKey,
            extractable: r.wrapKey.extractable,
            algorithm: r.wrapKey.algorithm.name,
            usages: [...r.wrapKey.usages].sort(),
            exported,
            ivBytes: r.iv.byteLength,
            contents: Object.keys(c).sort(),
            secretBytes: secret.length,
            hasState: c.state.length > 100,
            hasLogKey: c.logKey.length > 20,
            sealedContainsSecret: sealed.includes(secret.join(',')),
            sealedContainsText: sealed.includes(new TextEncoder().encode('"secret"').join(',')),
          });
          plain.fill(0);
          secret.fill(0);
        }
        return out;
      });
      assert.equal(records.length, 1, `${name}: one device per principal and browser profile`);
      assert.deepEqual(records[0], {
        fields: ['device', 'iv', 'principal', 'sealed', 'v', 'wrapKey'],
        principal: true,
        device: me,
        isCryptoKey: true,
        extractable: false,
        algorithm: 'AES-GCM',
        usages: ['decrypt', 'encrypt'],
        exported: false,
        ivBytes: 12,
        contents: ['logHead', 'logKey', 'pins', 'secret', 'state'],
        secretBytes: 32,
        hasState: true,
        hasLogKey: true,
        sealedContainsSecret: false,
        sealedContainsText: false,
      }, `${name}: the stored device record`);
    }
  });

  test('a chat message arrives decrypted; on the phone, with a count of new messages while the chat is closed', async () => {
    const d = page.doctor;
    const p = page.patient;
    // The patient's phone shows the chat as an overlay, closed: a message from the
    // doctor shows as a count on the Chat button (and is read out), not unseen below.
    assert.equal(await p.locator('#chat-panel').isVisible(), false, 'the phone shows the chat before it is opened');
    const hello = `Hello, can you hear me? ${Date.now()}`;
    await d.getByLabel('Message').fill(hello);
    await d.getByRole('button', { name: 'Send' }).click();
    await d.locator('#chat-log li[data-from="me"] .text', { hasText: hello }).waitFor({ timeout: 15000 });
    await p.locator('#chat-unread', { hasText: '1' }).waitFor({ timeout: 15000 });
    assert.equal(await p.getByRole('button', { name: 'Chat, 1 new message' }).count(), 1);
    assert.match(await p.locator('#call-announce').innerText(), /New message from/);
    // Opening the chat shows it and clears the count; the cursor is in the message box.
    await p.locator('#chat-toggle').click();
    await p.locator('#chat-log li[data-from="peer"] .text', { hasText: hello }).waitFor({ timeout: 5000 });
    assert.equal(await p.locator('#chat-unread').isVisible(), false);
    assert.equal(await p.evaluate(() => document.activeElement.id), 'chat-input');

    const text = `Hello doctor, the rash is better ${Date.now()}`;
    await p.getByLabel('Message').fill(text);
    await p.getByRole('button', { name: 'Send' }).click();
    await d.locator('#chat-log li[data-from="peer"] .text', { hasText: text }).waitFor({ timeout: 15000 });
    await p.locator('#chat-log li[data-from="me"] .text', { hasText: text }).waitFor({ timeout: 15000 });
    // Escape closes the overlay and gives focus back to the Chat button.
    await p.keyboard.press('Escape');
    assert.equal(await p.locator('#chat-panel').isVisible(), false);
    assert.equal(await p.evaluate(() => document.activeElement.id), 'chat-toggle');
    // The doctor's wide screen shows the chat beside the call: no count there.
    assert.equal(await d.locator('#chat-toggle').isVisible(), false);
    // Open again: the later steps read the patient's chat log (key messages refused).
    await openChat(p);
  });

  test('the SFU forwarded only SFrame ciphertext: no plaintext sample, a valid header on every frame', { skip: TAP_SKIP }, async () => {
    assert.ok(TAP, 'CONFIDE_TAP_FILE must name the SFU tap file');
    const samples = [];
    const kids = new Set();
    let framesSent = 0;
    for (const name of ['doctor', 'patient']) {
      const s = await page[name].evaluate(() => window.confideTest.samples());
      assert.ok(s, `${name}: no test samples (page not in test mode?)`);
      assert.ok(s.video.length >= 20 && s.audio.length >= 20, `${name}: too few samples (${s.video.length} video, ${s.audio.length} audio)`);
      samples.push(...s.video, ...s.audio);
      for (const k of s.kids) kids.add(BigInt(k));
      const st = await page[name].evaluate(() => window.confideTest.e2eeStats());
      framesSent = Math.max(framesSent, st.sent.audio + st.sent.video);
    }
    assert.ok(new Set(samples).size > samples.length / 2, 'samples are mostly distinct');
    const records = await waitFor(() => {
      const r = readTap(TAP);
      const v = r.filter((x) => x.kind === 'video').length;
      const a = r.filter((x) => x.kind === 'audio').length;
      return v > 200 && a > 100 ? r : null;
    }, { timeout: 20000, what: 'the SFU tap to record forwarded payloads' });

    const count = { audio: 0, video: 0, videoFrames: 0, keyframes: 0, empty: 0, rtx: 0 };
    const bad = [];
    const seen = new Map(); // sender -> Set of "kid/ctr" (a header is never reused)
    let repeats = 0;
    for (const r of records) {
      const hex = String(r.hex || '').toLowerCase();
      for (const s of samples) {
        if (hex.includes(s)) assert.fail(`a forwarded ${r.kind} payload contains plaintext from a sender's frame`);
      }
      if (r.rtx) { count.rtx++; continue; } // retransmissions repeat a payload checked already
      const buf = Buffer.from(hex, 'hex');
      if (buf.length === 0) { count.empty++; continue; } // padding-only probe packets
      count[r.kind]++;
      const c = checkPayload(r.kind, buf);
      if (!c.ok) { bad.push(`${r.kind}: ${c.why}`); continue; }
      if (!c.frameStart) continue;
      if (r.kind === 'video') { count.videoFrames++; if (c.keyframe) count.keyframes++; }
      // A random plaintext byte read as a header would give arbitrary KIDs and
      // counters: every header must name a KID a sender used and a counter below the
      // number of frames that sender encrypted.
      if (!kids.has(c.kid)) bad.push(`${r.kind}: KID ${c.kid} is not one the senders used`);
      if (c.ctr > BigInt(framesSent + 100)) bad.push(`${r.kind}: CTR ${c.ctr} beyond the ${framesSent} frames sent`);
      const key = String(r.from ?? '?');
      if (!seen.has(key)) seen.set(key, new Set());
      const id = `${c.kid}/${c.ctr}`;
      if (seen.get(key).has(id)) repeats++; else seen.get(key).add(id);
    }
    writeFileSync(path.join(OUT, 'tap-summary.json'), JSON.stringify({ ...count, repeats, framesSent, bad: bad.slice(0, 20), samples: samples.length }, null, 2));
    assert.deepEqual(bad.slice(0, 5), [], `${bad.length} forwarded payloads without a valid SFrame header`);
    if (records.some((r) => r.from !== undefined)) {
      // Per sender, each (KID, CTR) appears once: nonces are never reused (a resent
      // packet is marked rtx, or is a NACK retransmission of the same bytes).
      assert.ok(repeats <= count.audio / 50 + count.videoFrames / 50 + 5, `${repeats} repeated SFrame (KID, CTR) pairs`);
    }
    assert.ok(count.videoFrames > 100, `only ${count.videoFrames} video frames seen by the tap`);
    assert.ok(count.audio > 100, `only ${count.audio} audio payloads seen by the tap`);
  });

  test('signaling drops: the doctor sees the reconnect banner and rejoins by itself', async () => {
    const d = page.doctor;
    const p = page.patient;
    await d.evaluate(() => {
      const b = document.getElementById('banner');
      window.__banners = [];
      new MutationObserver(() => window.__banners.push(b.textContent))
        .observe(b, { childList: true, characterData: true, subtree: true });
    });
    const oldCode = await p.locator('#safety-code').getAttribute('data-code');
    const oldGroup = (await keys(d)).groupId;
    await d.evaluate(() => window.confideTest.dropSignaling());
    await waitFor(async () => (await d.evaluate(() => window.__banners.join('|'))).includes('Reconnecting'),
      { timeout: 10000, what: 'the reconnect banner' });
    await backInCall(d, 'the doctor back in the call');
    // The doctor's device makes a new group and adds the patient again; the patient
    // joins it from the Welcome. The devices did not change, so neither did the code,
    // and the pair is still Verified.
    await sameGroup(d, p, 'a new group on both pages after the doctor rejoined', oldGroup);
    assert.equal(await equalSafetyCode(d, p), oldCode);
    for (const x of [d, p]) await x.locator('#roster li .verified').first().waitFor({ timeout: 10000 });
    for (const [name, x] of [['doctor', d], ['patient', p]]) {
      await waitFor(async () => {
        const s = await inboundStats(x, { lastOnly: true });
        return s.video.framesDecoded > 60 ? s : null;
      }, { timeout: 45000, interval: 1000, what: `${name}: video decoding again after the rejoin` });
    }
    assert.equal(await view(d), 'call');
    assert.equal(await view(p), 'call');
  });

  test('a third account opening the consultation is refused and never receives media', async () => {
    const o = await openAs('other');
    // This one logs in with the keyboard alone: Tab between labelled fields, Enter.
    await o.goto(`${BASE}/?test=1#/login`);
    await o.locator('#login-username').waitFor({ state: 'visible' });
    await o.keyboard.type(demo.other.username); // the username field has focus
    await o.keyboard.press('Tab');
    await o.keyboard.type(demo.other.password);
    await o.keyboard.press('Enter');
    await o.locator('#view-appointments').waitFor({ state: 'visible', timeout: 15000 });
    await o.goto(`${BASE}/?test=1#/consultation/${demo.appointment}`);
    await o.locator('#view-message[data-kind="refused"]').waitFor({ state: 'visible', timeout: 15000 });
    assert.match(await o.locator('#message-title').innerText(), /cannot join/i);
    await o.screenshot({ path: path.join(OUT, 'other-refused.png'), fullPage: true });
    // The server refuses too, whatever the page does: a raw join on its own socket.
    const reply = await o.evaluate(async (appointment) => {
      const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
      const msgs = [];
      await new Promise((resolve) => {
        const done = () => { try { ws.close(); } catch { /* closed */ } resolve(); };
        ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', version: 1, token: sessionStorage.getItem('confide.token') }));
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          msgs.push(m);
          if (m.type === 'welcome') ws.send(JSON.stringify({ type: 'join', consultation: appointment }));
          else done();
        };
        ws.onclose = done;
        setTimeout(done, 5000);
      });
      return msgs;
    }, demo.appointment);
    const last = reply[reply.length - 1] || {};
    assert.equal(last.type, 'error', `server answered the stranger's join with ${JSON.stringify(reply)}`);
    assert.ok(['wrong_consultation', 'forbidden'].includes(last.code), `refusal code ${last.code}`);
    // Give any media a chance to show up, then prove none did.
    await new Promise((r) => setTimeout(r, 2000));
    const t = await o.evaluate(() => ({ pcs: window.__test.pcs.length, tracks: window.__test.tracks.length, gum: window.__test.gum }));
    assert.deepEqual(t, { pcs: 0, tracks: 0, gum: 0 });
  });

  test('a browser without encoded transforms is refused, never downgraded', async () => {
    // The patient again, in a browser that lacks both RTCRtpScriptTransform and
    // createEncodedStreams: the page must refuse before any media is set up.
    const u = await openAs('unsupported', `(() => {
      delete window.RTCRtpScriptTransform;
      if (window.RTCRtpSender) delete RTCRtpSender.prototype.createEncodedStreams;
      if (window.RTCRtpReceiver) delete RTCRtpReceiver.prototype.createEncodedStreams;
    })();`);
    await login(u, demo.patient);
    await u.goto(`${BASE}/?test=1#/consultation/${demo.appointment}`);
    await u.locator('#view-message[data-kind="unsupported"]').waitFor({ state: 'visible', timeout: 15000 });
    assert.match(await u.locator('#message-body').innerText(), /will not start without it/);
    const t = await u.evaluate(() => ({ pcs: window.__test.pcs.length, gum: window.__test.gum }));
    assert.deepEqual(t, { pcs: 0, gum: 0 });
    await ctx.unsupported.close();
  });

  test('a real Welcome replayed by the server is refused; the call keeps its keys', async () => {
    const p = page.patient;
    await p.evaluate(() => {
      window.__indicator = [];
      new MutationObserver(() => window.__indicator.push(document.getElementById('e2ee-text').textContent))
        .observe(document.getElementById('e2ee-text'), { childList: true, characterData: true, subtree: true });
    });
    const before = await keys(p);
    const st0 = await p.evaluate(() => window.confideTest.e2eeStats());
    // The patient's latest Welcome, exactly as the server delivered it, arrives again
    // on its live signaling socket: what a server would do to pull the patient back
    // into a group state of its choosing.
    const welcome = await p.evaluate(() => window.__test.mlsIn.filter((m) => m.type === 'mls_welcome').pop());
    assert.ok(welcome, 'no Welcome to replay');
    await inject(p, welcome);
    const shown = await waitFor(async () => {
      const seen = await p.evaluate(() => window.__indicator.join('|'));
      return /could not be verified/.test(seen) ? seen : null;
    }, { timeout: 10000, what: 'the refusal on the encryption indicator' });
    assert.ok(shown);
    await p.locator('#chat-log li.system', { hasText: 'was refused' }).first().waitFor({ timeout: 5000 });
    assert.deepEqual(await keys(p), before, 'the group changed');
    const st1 = await p.evaluate(() => window.confideTest.e2eeStats());
    assert.ok(st1.refused_messages > st0.refused_messages);
    // The call goes on with the keys it had.
    await waitFor(async () => {
      const s = await p.evaluate(() => window.confideTest.e2eeStats());
      return s.decrypted.video > st1.decrypted.video + 30 ? s : null;
    }, { timeout: 15000, what: 'video still decrypting after the refusal' });
    assert.equal(await view(p), 'call');
  });

  // ---------------------------------------------------------------- ghosts
  //
  // The test plays a malicious server that wants a device of its own to receive the
  // consultation's keys. It holds that device's secrets (in Node, through the wasm
  // module the browser uses) and, at the end, tries them on every frame the SFU
  // forwarded.

  const ghosts = { devices: [], decryptors: [] };

  async function ghostDevice(principal) {
    const w = await wasm();
    const g = w.Device.generate(principal);
    ghosts.devices.push(g);
    return g;
  }

  /** The doctor's page, the patient's principal and device, and the room. */
  async function scene() {
    const d = page.doctor;
    const st = await d.evaluate(() => window.confideTest.state());
    const patient = st.roster.find((m) => !m.self);
    const label = await d.evaluate((id) => document.querySelector(`#roster li[data-participant="${id}"] .who`).textContent,
      String(st.peers[0]));
    return { d, st, patient, label: label.replace(/ \(patient\)$/, '') };
  }

  /** Show `fake` in the doctor's waiting room and click its Admit button. */
  async function admitFake(d, fake) {
    await inject(d, { type: 'waiting_room', waiting: [fake] });
    await d.locator(`#waiting-list li[data-participant="${fake.id}"] button`, { hasText: 'Admit' }).click();
  }

  test('ghost (a): a device the server made for the patient\'s account needs the doctor\'s acceptance; a rewritten directory answer is refused', async () => {
    const { d, st, patient, label } = await scene();
    const p = page.patient;
    // The server registers a device of its own for the patient's account (the test
    // uses the patient's session for that) and publishes KeyPackages for it: it is in
    // the key directory and in the transparency log, like a real second device.
    const ghost = await ghostDevice(patient.principal);
    let r = await rest(p, 'PUT', `/api/devices/${ghost.deviceId}`, { signature_key: b64(ghost.signatureKey) });
    assert.ok(r.status < 300, `registering the ghost: ${r.status}`);
    r = await rest(p, 'POST', `/api/devices/${ghost.deviceId}/key_packages`, { key_packages: ghost.keyPackages(3), last_resort: ghost.lastResortKeyPackage() });
    assert.ok(r.status < 300, `ghost KeyPackages: ${r.status}`);
    const since = Date.now();
    // Then it shows that device in the doctor's waiting room as the patient.
    await admitFake(d, { id: 900001, role: 'patient', label, principal: patient.principal, device: ghost.deviceId });
    const warning = d.locator(`#key-warnings li[data-kind="changed"][data-device="${ghost.deviceId}"]`);
    await warning.waitFor({ timeout: 15000 });
    assert.equal(await warning.locator('.text').innerText(), `${label}'s security key changed. Compare the code before you continue.`);
    assert.ok(await warning.getByRole('button', { name: /accept the new key/ }).isVisible());
    // The code shown is the one of the ghost's key: it would not match the patient's.
    const code = await warning.locator('.code').getAttribute('data-code');
    assert.notEqual(code, await d.locator('#safety-code').getAttribute('data-code'));

    // The same ghost, with the directory answer rewritten to show another key for it:
    // the log does not vouch for that key, so the doctor's page refuses outright.
    const w = await wasm();
    const other = w.Device.generate(patient.principal);
    await d.route(`**/api/directory/${patient.principal}`, async (route) => {
      const res = await route.fetch();
      const json = await res.json();
      for (const dev of json.devices) if (dev.device === ghost.deviceId) dev.signature_key = b64(other.signatureKey);
      await route.fulfill({ response: res, json });
    });
    try {
      await admitFake(d, { id: 900002, role: 'patient', label, principal: patient.principal, device: ghost.deviceId });
      const refused = d.locator(`#key-warnings li[data-kind="refused"][data-device="${ghost.deviceId}"]`);
      await refused.waitFor({ timeout: 15000 });
      assert.match(await refused.innerText(), /was not admitted: their security key could not be checked/);
    } finally {
      await d.unroute(`**/api/directory/${patient.principal}`);
      other.free();
    }
    // Nobody was added: no commit went out, the group is the doctor and the patient.
    assert.deepEqual(await commitsSent(d, since), []);
    const now = await d.evaluate(() => window.confideTest.state());
    assert.equal(now.roster.length, 2);
    assert.deepEqual(now.keys, st.keys);
    await inject(d, { type: 'waiting_room', waiting: [] });
    await waitFor(async () => (await d.locator('#key-warnings li').count()) === 0, { what: 'the warnings gone with the ghosts' });
  });

  test('ghost (b): a KeyPackage claiming the patient\'s key but signed by another key is refused', async () => {
    const { d, st, patient, label } = await scene();
    const w = await wasm();
    // A device id the server made up for the patient's account, and a KeyPackage that
    // names it with the patient's real public key, signed by a key the server holds.
    const ghost = ghosts.devices[0];
    const forged = forgeKeyPackage(w, patient.principal, ghost.deviceId, unb64(patient.key));
    const url = `**/api/directory/${patient.principal}/devices/${ghost.deviceId}/key_package`;
    await d.route(url, (route) => route.fulfill({ json: { key_package: b64(forged), last_resort: false } }));
    const since = Date.now();
    try {
      await admitFake(d, { id: 900003, role: 'patient', label, principal: patient.principal, device: ghost.deviceId });
      const refused = d.locator(`#key-warnings li[data-kind="refused"][data-device="${ghost.deviceId}"]`);
      await refused.waitFor({ timeout: 15000 });
      assert.match(await refused.innerText(), /was not admitted/);
    } finally {
      await d.unroute(url);
    }
    assert.deepEqual(await commitsSent(d, since), []);
    assert.deepEqual((await d.evaluate(() => window.confideTest.state())).keys, st.keys);
    await inject(d, { type: 'waiting_room', waiting: [] });
  });

  test('ghost (c): a commit the ghost signed itself, adding a device, is refused by both; the call goes on', async () => {
    const { d, st } = await scene();
    const p = page.patient;
    const w = await wasm();
    // The ghost's own group under this consultation, committing an Add of a second
    // ghost device; the server rewrites the commit's header to name the real group and
    // epoch and delivers it as if the doctor had sent it.
    const ghost = ghosts.devices[0];
    const second = await ghostDevice('account:999999');
    const fake = w.Group.create(ghost, String(demo.appointment));
    const dec = new w.GroupFrameDecryptor(w.suiteChaCha20Poly1305());
    dec.install(fake.epochSecret(ghost));
    const c = fake.add(ghost, [w.KeyPackage.parse(ghost, unb64(second.keyPackages(1)[0]))]);
    fake.confirmCommit(ghost);
    dec.install(fake.epochSecret(ghost));
    ghosts.decryptors.push(dec);
    const groupId = unb64(st.keys.groupId);
    const forged = reheadPrivateMessage(c.commit, groupId, st.keys.epoch);
    assert.deepEqual(privateMessageHeader(forged), { groupId, epoch: st.keys.epoch });
    const doctorId = (await p.evaluate(() => window.confideTest.state())).peers[0];
    for (const x of [d, p]) {
      await inject(x, { type: 'mls_commit', from: doctorId, epoch: st.keys.epoch + 1, commit: b64(forged) });
    }
    for (const x of [d, p]) {
      await x.locator('#chat-log li.system', { hasText: 'was refused' }).last().waitFor({ timeout: 10000 });
      const k = await keys(x);
      assert.equal(k.epoch, st.keys.epoch, 'the epoch moved');
      assert.equal(k.groupId, st.keys.groupId);
      assert.equal((await x.evaluate(() => window.confideTest.state())).roster.length, 2);
    }
    await decodingAgain('doctor', 'video decoding after the forged commit');
    await decodingAgain('patient', 'video decoding after the forged commit');
    fake.free();
  });

  test('nothing the ghosts hold opens a frame the SFU forwarded', { skip: TAP_SKIP }, async () => {
    const frames = tappedFrames(readTap(TAP));
    assert.ok(frames.length > 200, `only ${frames.length} frames tapped`);
    assert.ok(ghosts.decryptors.length > 0);
    assert.equal(opened(ghosts.decryptors, frames), 0, 'a ghost opened a forwarded frame');
    // The ghost device of (a) never got a Welcome: no page sent one for it.
    for (const name of ['doctor', 'patient']) {
      const sent = await page[name].evaluate(() => window.__test.sent.filter((m) => m.type === 'mls_commit'));
      assert.ok(sent.every((m) => !(m.add || []).some((id) => id >= 900000)), `${name} added a ghost`);
    }
    // The server forgets the ghost device (revoked in the log).
    const r = await rest(page.patient, 'DELETE', `/api/devices/${ghosts.devices[0].deviceId}`);
    assert.ok(r.status < 300, `revoking the ghost: ${r.status}`);
  });

  test('members compare log heads in the group: a consistent one passes, one without a valid consistency proof (a forked log) is a visible warning', async () => {
    const d = page.doctor;
    const p = page.patient;
    const stats = (x) => x.evaluate(() => window.confideTest.e2eeStats());
    // The doctor's device looked up the patient after the ghost's registration, the
    // patient's device last looked the doctor up before it: their heads differ, so the
    // patient needs a consistency proof to compare them.
    const [sd, sp] = [await stats(d), await stats(p)];
    assert.ok(sd.logSize > sp.logSize && sp.logSize > 0, `log heads ${sd.logSize} and ${sp.logSize}`);
    await d.evaluate(() => window.confideTest.sendLogHead());
    await waitFor(async () => (await stats(p)).heads_checked > sp.heads_checked ? true : null,
      { timeout: 10000, what: 'the patient checking the doctor\'s log head' });
    assert.equal((await stats(p)).split_views, 0);
    assert.equal(await p.locator('#key-warnings li[data-kind="split_view"]').count(), 0);
    // The server now shows the patient a history the doctor's head does not extend:
    // no consistency proof it can give verifies.
    const isProof = (url) => url.pathname === '/api/audit/consistency';
    await p.route(isProof, async (route) => {
      const q = new URL(route.request().url()).searchParams;
      await route.fulfill({ json: { from: Number(q.get('from')), to: Number(q.get('to')), proof: [b64(new Uint8Array(32).fill(7))] } });
    });
    try {
      await d.evaluate(() => window.confideTest.sendLogHead());
      const warning = p.locator('#key-warnings li[data-kind="split_view"]');
      await warning.waitFor({ timeout: 10000 });
      assert.match(await warning.innerText(), /The server showed you and .+ different key histories/);
      assert.equal(await p.locator('#e2ee-indicator').getAttribute('data-state'), 'warn');
      assert.match(await p.locator('#e2ee-text').innerText(), /different key histories/);
    } finally {
      await p.unroute(isProof);
    }
  });

  /** Watches the page's banner; `banners(p)` returns what it showed since. */
  async function watchBanner(p) {
    await p.evaluate(() => {
      const b = document.getElementById('banner');
      window.__mediaBanners = [];
      new MutationObserver(() => window.__mediaBanners.push(b.textContent))
        .observe(b, { childList: true, characterData: true, subtree: true });
    });
  }

  function cutMedia(participant) {
    writeFileSync(IMPAIR, participant === null ? '' : String(participant));
  }

  async function decodingAgain(name, what) {
    await waitFor(async () => {
      const s0 = await inboundStats(page[name], { lastOnly: true });
      await new Promise((r) => setTimeout(r, 2000));
      const s1 = await inboundStats(page[name], { lastOnly: true });
      return s1.video.framesDecoded > s0.video.framesDecoded + 20 ? s1 : null;
    }, { timeout: 45000, interval: 500, what: `${name}: ${what}` });
  }

  test('the patient\'s media path is lost for a while: ICE restart on the same connection, media back', { skip: IMPAIR_SKIP }, async () => {
    const p = page.patient;
    const me = (await p.evaluate(() => window.confideTest.state())).you;
    assert.ok(Number.isInteger(me), `patient participant id: ${me}`);
    await watchBanner(p);
    const ufrag = () => p.evaluate(() => {
      const pc = window.__test.pcs[window.__test.pcs.length - 1];
      return { n: window.__test.pcs.length, state: pc.connectionState, ufrag: (/a=ice-ufrag:(\S+)/.exec(pc.localDescription.sdp) || [])[1] };
    });
    const before = await ufrag();
    assert.equal(before.state, 'connected');
    cutMedia(me);
    try {
      await waitFor(async () => (await p.evaluate(() => window.__mediaBanners.join('|'))).includes('Media connection lost'),
        { timeout: 20000, what: 'the media-lost banner' });
      // The grace period passes and the page restarts ICE: a new local ufrag, same connection.
      await waitFor(async () => {
        const u = await ufrag();
        return u.ufrag && u.ufrag !== before.ufrag ? u : null;
      }, { timeout: 20000, what: 'an ICE restart offer' });
    } finally {
      cutMedia(null);
    }
    const after = await waitFor(async () => {
      const u = await ufrag();
      return u.state === 'connected' ? u : null;
    }, { timeout: 20000, what: 'the connection back after the ICE restart' });
    assert.equal(after.n, before.n, 'the page rejoined instead of restarting ICE');
    await decodingAgain('patient', 'video decoding again after the ICE restart');
    await decodingAgain('doctor', 'the patient\'s video decoding again after the ICE restart');
    assert.equal(await p.locator('#banner').innerText(), '');
    assert.equal(await view(p), 'call');
  });

  test('the patient\'s media path stays down: the page rejoins from scratch, new keys, media back', { skip: IMPAIR_SKIP }, async () => {
    const p = page.patient;
    const d = page.doctor;
    const me = (await p.evaluate(() => window.confideTest.state())).you;
    const pcsBefore = await p.evaluate(() => window.__test.pcs.length);
    const oldCode = await p.locator('#safety-code').getAttribute('data-code');
    const before = await keys(d);
    cutMedia(me);
    try {
      // ICE restart fails too (the path is still cut); after REJOIN_AFTER_MS the page
      // drops signaling and joins again with a new peer connection.
      await waitFor(async () => (await p.evaluate(() => window.__test.pcs.length)) > pcsBefore ? true : null,
        { timeout: 60000, interval: 500, what: 'a new peer connection (full rejoin)' });
    } finally {
      cutMedia(null);
    }
    await backInCall(p, 'the patient back in the call');
    // The doctor's device removed the patient's old leaf when it left and added the
    // patient's device again when it came back: a later epoch of the same group.
    const after = await sameGroup(d, p, 'the patient back in the doctor\'s group');
    assert.equal(after.groupId, before.groupId);
    assert.ok(after.epoch >= before.epoch + 2, `epoch ${before.epoch} -> ${after.epoch}`);
    assert.equal(await equalSafetyCode(d, p), oldCode);
    await decodingAgain('patient', 'video decoding again after the rejoin');
    await decodingAgain('doctor', 'the patient\'s video decoding again after the rejoin');
    assert.equal(await view(p), 'call');
    assert.equal(await view(d), 'call');
  });

  test('a guest invited by the doctor joins: a tile per participant, everyone decrypts everyone; the guest leaves: tile gone, keys rotate', async () => {
    const d = page.doctor;
    const p = page.patient;
    // The doctor makes a single-use link in the call view, naming the guest.
    await d.getByLabel("Guest's name and role").fill('Interpreter: A. Rossi');
    await d.getByRole('button', { name: 'Create invite link' }).click();
    const link = await waitFor(async () => (await d.locator('#invite-link').inputValue()) || null,
      { timeout: 10000, what: 'the invite link' });
    const m = /^(https:\/\/[^/]+)\/#\/invite\/([A-Za-z0-9_-]{40,})$/.exec(link);
    assert.ok(m && m[1] === BASE, `invite link ${link}`);
    const invite = m[2];

    // The guest opens it: the token leaves the address bar at once; terms, then the
    // pre-call check, then the waiting room.
    const g = await openAs('guest');
    await g.goto(`${BASE}/?test=1#/invite/${invite}`);
    await g.locator('#view-consent').waitFor({ state: 'visible', timeout: 15000 });
    assert.equal(new URL(g.url()).hash, '#/invite');
    assert.ok(!g.url().includes(invite), 'the invite token is still in the address bar');
    await g.getByLabel('I agree to have this consultation by video.').check();
    await g.getByRole('button', { name: 'Agree and continue' }).click();
    await g.locator('#view-precall').waitFor({ state: 'visible', timeout: 15000 });
    await g.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await g.locator('#view-waiting').waitFor({ state: 'visible', timeout: 20000 });
    // The link worked once: redeeming it again is refused.
    const again = await g.evaluate(async (t) => {
      const terms = await (await fetch('/api/consent/terms')).json();
      const r = await fetch('/api/invites/redeem', {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ invite_token: t, accept_terms_version: terms.version }),
      });
      return { status: r.status, code: ((await r.json()).error || {}).code };
    }, invite);
    assert.deepEqual(again, { status: 404, code: 'invite_invalid' });
    // Opened again in a browser, the used link gets a clear page, not a half-joined call.
    const g2 = await ctx.guest.newPage();
    await g2.goto(`${BASE}/?test=1#/invite/${invite}`);
    await g2.getByLabel('I agree to have this consultation by video.').check();
    await g2.getByRole('button', { name: 'Agree and continue' }).click();
    await g2.locator('#view-message[data-kind="refused"]').waitFor({ state: 'visible', timeout: 15000 });
    assert.match(await g2.locator('#message-title').innerText(), /invite link cannot be used/i);
    assert.deepEqual(await g2.evaluate(() => ({ pcs: window.__test.pcs.length, gum: window.__test.gum })), { pcs: 0, gum: 0 });
    await g2.close();

    // The doctor sees the guest under the name the invite was made for, and admits them.
    const admit = d.locator('#waiting-list button', { hasText: 'Admit' });
    await admit.first().waitFor({ timeout: 20000 });
    assert.match(await d.locator('#waiting-list li').first().innerText(), /Interpreter: A\. Rossi \(guest\)/);
    await admit.first().click();
    await g.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });

    const all = { doctor: d, patient: p, guest: g };
    const you = {};
    for (const [name, x] of Object.entries(all)) you[name] = (await x.evaluate(() => window.confideTest.state())).you;
    for (const [name, x] of Object.entries(all)) {
      const others = Object.entries(you).filter(([n]) => n !== name).map(([, id]) => id).sort();
      // Each page: one tile per other participant, with sound and a moving, non-blank
      // picture, and frames of each of them decrypted by the page's own transform.
      const tiles = await waitFor(async () => {
        const s = await x.evaluate(() => window.confideTest.state());
        if (JSON.stringify([...s.peers].sort()) !== JSON.stringify(others)) return null;
        const t = await x.evaluate(() => window.confideTest.tiles());
        const ok = t.length === 2 && others.every((id) => {
          const tile = t.find((y) => y.participant === id);
          return tile && tile.kinds.join() === 'audio,video' && tile.frames > 30 && tile.width > 0;
        });
        return ok ? t : null;
      }, { timeout: 60000, interval: 1000, what: `${name}: a playing tile for each of ${others}` })
        .catch(async (e) => { throw new Error(`${e.message}; media: ${JSON.stringify(await mediaState(x))}`); });
      for (const id of others) {
        const v = await waitFor(async () => {
          const r = await videoVariance(x, `#remote-tiles .tile[data-participant="${id}"] video`);
          return r.variance > 20 ? r : null;
        }, { timeout: 15000, what: `${name}: a non-uniform picture from participant ${id}` });
        assert.ok(v.width > 0);
      }
      const st = await waitFor(async () => {
        const s = await x.evaluate(() => window.confideTest.e2eeStats());
        return others.every((id) => (s.decrypted_from[id] || 0) > 50) ? s : null;
      }, { timeout: 30000, what: `${name}: frames of ${others} decrypted` });
      assert.equal(st.dropped_unencrypted, 0);
      if (name === 'doctor') {
        const guestTile = tiles.find((t) => t.participant === you.guest);
        assert.equal(guestTile.label, 'Interpreter: A. Rossi (guest)');
      }
      await x.screenshot({ path: path.join(OUT, `${name}-group-call.png`), fullPage: true });
    }
    // Pairwise safety codes: each pair shows the same code for the other.
    const safety = {};
    for (const [name, x] of Object.entries(all)) {
      safety[name] = await waitFor(async () => {
        const s = (await x.evaluate(() => window.confideTest.state())).safety;
        return Object.keys(s).length === 2 ? s : null;
      }, { what: `${name}: two safety codes` });
    }
    for (const [a, b] of [['doctor', 'patient'], ['doctor', 'guest'], ['patient', 'guest']]) {
      assert.equal(safety[a][you[b]], safety[b][you[a]], `${a} and ${b} see different safety codes`);
    }

    // The guest leaves: their tile goes on both other pages, the doctor's device commits
    // a Remove, and both send under the new epoch's keys, which the guest never had;
    // media goes on.
    const kidsBefore = {};
    for (const name of ['doctor', 'patient']) {
      kidsBefore[name] = (await page[name].evaluate(() => window.confideTest.samples())).kids;
    }
    await leaveCall(g);
    for (const name of ['doctor', 'patient']) {
      const x = page[name];
      await waitFor(async () => {
        const s = await x.evaluate(() => window.confideTest.state());
        const t = await x.evaluate(() => window.confideTest.tiles());
        return s.peers.length === 1 && t.length === 1 && t[0].participant === s.peers[0] ? t : null;
      }, { timeout: 20000, what: `${name}: only the other's tile left` });
      await waitFor(async () => {
        const k = (await x.evaluate(() => window.confideTest.samples())).kids;
        return k.some((kid) => !kidsBefore[name].includes(kid)) ? k : null;
      }, { timeout: 20000, what: `${name}: a new epoch's key after the guest left` });
    }
    await decodingAgain('doctor', 'video decoding after the guest left');
    await decodingAgain('patient', 'video decoding after the guest left');
    await ctx.guest.close();
  });

  test('the doctor ends the consultation (after confirming); both leave the call view', async () => {
    const d = page.doctor;
    // Ending is confirmed in a dialog; cancelling it keeps the call.
    await d.getByRole('button', { name: 'End consultation for everyone' }).click();
    const dialog = d.getByRole('dialog', { name: 'End the consultation for everyone?' });
    await dialog.waitFor();
    assert.equal(await d.evaluate(() => document.activeElement.id), 'confirm-cancel', 'the safe choice has the focus');
    await d.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await view(d), 'call');
    await d.getByRole('button', { name: 'End consultation for everyone' }).click();
    await dialog.getByRole('button', { name: 'End for everyone' }).click();
    for (const name of ['doctor', 'patient']) {
      await page[name].locator('#view-message[data-kind="ended"]').waitFor({ state: 'visible', timeout: 15000 });
      assert.notEqual(await view(page[name]), 'call');
    }
    // The doctor is told they ended it, the patient that the doctor did.
    assert.match(await d.locator('#message-body').innerText(), /^You ended the consultation for everyone/);
    assert.match(await page.patient.locator('#message-body').innerText(), /^The doctor ended the consultation/);
    await page.patient.screenshot({ path: path.join(OUT, 'patient-ended.png'), fullPage: true });
  });

  // ---------------------------------------------------------------- a second consultation

  let second;          // the second appointment's id
  let patientId;       // the patient's participant id in it

  /** Open consultation `id` from the appointments list: pre-call check, then the call
   * view (doctor) or the waiting room (everyone else; consent was given already). */
  async function openConsultation(p, id, waitingRoom) {
    await p.goto(`${BASE}/?test=1#/appointments`);
    await p.locator(`a[data-appointment="${id}"]`).click({ timeout: 15000 });
    await p.locator('#view-precall').waitFor({ state: 'visible', timeout: 15000 });
    await p.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await p.locator(waitingRoom ? '#view-waiting' : '#view-call').waitFor({ state: 'visible', timeout: 20000 });
  }

  test('a second consultation of the same doctor and patient: the pair is Verified without comparing again', async () => {
    const d = page.doctor;
    const p = page.patient;
    // The doctor books it (same browsers: the same devices, pins and log head).
    const list = await rest(d, 'GET', '/api/appointments');
    const first = list.json.find((a) => a.id === demo.appointment);
    assert.ok(first && first.patient, 'the first appointment and its patient');
    const booked = await rest(d, 'POST', '/api/appointments', {
      doctor: first.doctor.id, patient: first.patient.id, start: Math.floor(Date.now() / 1000), duration_min: 30,
    });
    assert.equal(booked.status, 201, `booking: ${JSON.stringify(booked.json)}`);
    second = booked.json.id;
    await openConsultation(d, second, false);
    await openConsultation(p, second, true);
    const admit = d.locator('#waiting-list button', { hasText: 'Admit' });
    await admit.first().waitFor({ timeout: 20000 });
    await admit.first().click();
    await p.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });
    for (const [name, x] of [['doctor', d], ['patient', p]]) await e2eeOk(x, name);
    await sameGroup(d, p, 'the second consultation\'s group');
    for (const [name, x] of [['doctor', d], ['patient', p]]) {
      const entry = x.locator('#roster li').first();
      await entry.locator('.verified[data-verified="true"]').waitFor({ timeout: 10000 });
      assert.equal(await entry.getAttribute('data-status'), 'verified', `${name}: not verified`);
      assert.equal(await x.locator('#key-warnings li').count(), 0, `${name}: a key warning`);
    }
    patientId = (await d.evaluate(() => window.confideTest.state())).peers[0];
    await decodingAgain('doctor', 'video in the second consultation');
  });

  test('the doctor comes back on a new device: the patient is warned and sends nothing until it accepts; the acceptance survives a reload', async () => {
    const p = page.patient;
    // The doctor leaves and logs in again from another browser: a new device, a new key.
    await leaveCall(page.doctor);
    const d2 = await openAs('doctor2');
    await login(d2, demo.doctor);
    await openConsultation(d2, second, false);
    const doctorLabel = (await rest(d2, 'GET', '/api/me')).json.label;
    // The patient joins the new device's group, checks its owner against the pins:
    // the doctor's principal has another device pinned. A warning, keys withheld.
    const warning = p.locator('#key-warnings li[data-kind="changed"]');
    await warning.waitFor({ timeout: 30000 });
    assert.equal(await warning.locator('.text').innerText(), `${doctorLabel}'s security key changed. Compare the code before you continue.`);
    assert.equal(await p.locator('#e2ee-indicator').getAttribute('data-state'), 'warn');
    // The code in the warning is the one the new doctor device shows for the patient.
    const code = await warning.locator('.code').getAttribute('data-code');
    await waitFor(async () => (await d2.locator('#safety-code').getAttribute('data-code')) === code ? true : null,
      { what: 'the same code on the doctor\'s new device' });
    // Nothing goes out from the patient while the key is not accepted: frames are
    // withheld, no chat can be sealed, and the new doctor device opens nothing of the
    // patient's.
    const s0 = await p.evaluate(() => window.confideTest.e2eeStats());
    await new Promise((r) => setTimeout(r, 3000));
    const s1 = await p.evaluate(() => window.confideTest.e2eeStats());
    assert.equal(s1.sharing, false);
    assert.equal(s1.sent.video + s1.sent.audio, s0.sent.video + s0.sent.audio, 'frames were sent before the key was accepted');
    assert.ok(s1.withheld > s0.withheld + 20, `withheld ${s0.withheld} -> ${s1.withheld}`);
    const heard = await d2.evaluate(() => window.confideTest.e2eeStats());
    assert.equal(heard.decrypted_from[patientId] || 0, 0);
    await openChat(p);
    await p.getByLabel('Message').fill('are you there?');
    await p.getByRole('button', { name: 'Send' }).click();
    await p.locator('#chat-log li.system', { hasText: 'could not be encrypted yet' }).waitFor({ timeout: 5000 });
    // The phone's chat overlay closes again, off the key warning.
    await p.getByRole('button', { name: 'Close chat' }).click();

    // The patient compares the code and accepts: keys are shared, media flows.
    await warning.getByRole('button', { name: /accept the new key/ }).click();
    await e2eeOk(p, 'patient after accepting');
    await sameGroup(d2, p, 'the new doctor device\'s group');
    const dState = await d2.evaluate(() => window.confideTest.state());
    await waitFor(async () => {
      const s = await d2.evaluate(() => window.confideTest.e2eeStats());
      return (s.decrypted_from[dState.peers[0]] || 0) > 50 ? s : null;
    }, { timeout: 30000, what: 'the new doctor device decrypting the patient' });

    // The patient reloads: the acceptance was stored; no warning this time.
    await p.reload();
    await p.locator('#view-precall').waitFor({ state: 'visible', timeout: 20000 });
    await p.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await p.locator('#view-call').waitFor({ state: 'visible', timeout: 30000 });
    await e2eeOk(p, 'patient after the reload');
    await sameGroup(d2, p, 'the patient back in the group after the reload');
    assert.equal(await p.locator('#key-warnings li').count(), 0);
    assert.equal(await p.locator('#roster li').first().getAttribute('data-status'), 'pinned');
  });

  test('MLS timings in Chromium: group create, add 1 and 7, a commit and a Welcome processed', async () => {
    const t = await page.patient.evaluate(() => window.confideTest.benchmark());
    writeFileSync(path.join(OUT, 'mls-timings.json'), JSON.stringify(t, null, 2));
    console.log(`MLS timings in Chromium (median ms): ${Object.entries(t).map(([k, v]) => `${k} ${v.median}`).join(', ')}`);
    for (const k of ['create', 'add1', 'add7', 'commit', 'welcome']) assert.ok(t[k].median > 0 && t[k].median < 2000, `${k}: ${t[k].median} ms`);
  });
});
