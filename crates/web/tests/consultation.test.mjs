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
// code computed here), the patient consents and waits, the doctor admits, both decode
// each other's video, both show the same safety code, a chat message arrives decrypted,
// the SFU only ever forwarded ciphertext, a third account is refused, the patient's
// media path is cut (ICE restart, then a full rejoin), a guest invited by the doctor
// joins and leaves (a group of three), the doctor ends.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  CHROMIUM_ARGS, INIT_SCRIPT, artifactsDir, checkPayload, freshTotp, inboundStats,
  loadDemo, readTap, videoVariance, waitFor,
} from './lib.mjs';

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

/** A new session: new keys, a safety code other than `oldCode`, the same on both sides. */
async function newEqualSafetyCode(a, b, oldCode) {
  return waitFor(async () => {
    const x = await a.locator('#safety-code').getAttribute('data-code');
    const y = await b.locator('#safety-code').getAttribute('data-code');
    return x && x === y && x !== oldCode ? x : null;
  }, { timeout: 30000, what: 'a new, equal safety code on both sides' });
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
    // The demo seeds the patient's consent; withdraw it so the consent step is shown.
    const status = await p.evaluate(async () => (await fetch('/api/consent', {
      method: 'DELETE', headers: { Authorization: `Bearer ${sessionStorage.getItem('confide.token')}` },
    })).status);
    assert.ok(status < 300, `withdrawing consent: HTTP ${status}`);
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

    // Patient: pre-call check, consent, waiting room.
    await p.locator(`a[data-appointment="${demo.appointment}"]`).click();
    await p.locator('#view-precall').waitFor({ state: 'visible' });
    await p.getByRole('button', { name: 'Continue' }).click({ timeout: 15000 });
    await p.locator('#view-consent').waitFor({ state: 'visible', timeout: 15000 });
    // Continuing without ticking the box is refused with an explanation.
    await p.getByRole('button', { name: 'Agree and continue' }).click();
    await p.locator('#consent-error').waitFor({ state: 'visible' });
    await p.getByLabel('I agree to have this consultation by video.').check();
    await p.getByRole('button', { name: 'Agree and continue' }).click();
    await p.locator('#view-waiting').waitFor({ state: 'visible', timeout: 20000 });
    assert.match(await p.locator('#view-waiting').innerText(), /The doctor will admit you/);

    // Doctor sees the patient waiting and admits.
    const admit = d.locator('#waiting-list button', { hasText: 'Admit' });
    await admit.first().waitFor({ timeout: 20000 });
    await admit.first().click();
    await p.locator('#view-call').waitFor({ state: 'visible', timeout: 20000 });
    assert.equal(await view(d), 'call');
    assert.equal(await view(p), 'call');
    for (const x of [d, p]) {
      assert.match(await x.locator('#e2ee-indicator').innerText(), /End-to-end encrypted/);
    }
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
      // Only the few frames that beat the sender's key may fail; the indicator is calm.
      assert.ok(st.failed.video < 30, `${name}: ${st.failed.video} video frames failed to decrypt`);
      assert.equal(await p.locator('#e2ee-indicator').getAttribute('data-state'), 'ok');
      if (name === 'doctor') {
        // RTCRtpScriptTransform: a keyframe was requested once the peer's key was in.
        assert.ok(st.keyframe_requests >= 1, 'no keyframe request after the key install');
      }
    }
  });

  test('both show the same safety code', async () => {
    const codes = {};
    for (const name of ['doctor', 'patient']) {
      codes[name] = await waitFor(async () => {
        const c = await page[name].locator('#safety-code').getAttribute('data-code');
        return c && /^\d{8,}$/.test(c) ? c : null;
      }, { what: `${name}: safety code` });
      assert.match(await page[name].locator('#safety').innerText(), /[Cc]ompare this code aloud/);
    }
    assert.equal(codes.doctor, codes.patient);
  });

  test('the identity secret is stored only sealed, under a non-extractable key', async () => {
    for (const name of ['doctor', 'patient']) {
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
          // Page script may use the key (that is how the page opens the secret), but
          // it opens to exactly one 32-byte Ed25519 secret, nothing else is stored.
          const plain = new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, r.wrapKey, r.sealed));
          out.push({
            fields: Object.keys(r).sort(),
            isCryptoKey: r.wrapKey instanceof CryptoKey,
            extractable: r.wrapKey.extractable,
            algorithm: r.wrapKey.algorithm.name,
            usages: [...r.wrapKey.usages].sort(),
            exported,
            ivBytes: r.iv.byteLength,
            sealedBytes: r.sealed.byteLength,
            plainBytes: plain.length,
            sealedContainsPlain: new Uint8Array(r.sealed).join(',').includes(plain.join(',')),
          });
          plain.fill(0);
        }
        return out;
      });
      assert.equal(records.length, 1, `${name}: one identity per account and browser profile`);
      assert.deepEqual(records[0], {
        fields: ['iv', 'sealed', 'v', 'wrapKey'],
        isCryptoKey: true,
        extractable: false,
        algorithm: 'AES-GCM',
        usages: ['decrypt', 'encrypt'],
        exported: false,
        ivBytes: 12,
        sealedBytes: 48,
        plainBytes: 32,
        sealedContainsPlain: false,
      }, `${name}: the stored identity record`);
    }
  });

  test('a chat message arrives decrypted', async () => {
    const text = `Hello doctor, the rash is better ${Date.now()}`;
    await page.patient.getByLabel('Message').fill(text);
    await page.patient.getByRole('button', { name: 'Send' }).click();
    await page.doctor.locator('#chat-log li[data-from="peer"] .text', { hasText: text }).waitFor({ timeout: 15000 });
    await page.patient.locator('#chat-log li[data-from="me"] .text', { hasText: text }).waitFor({ timeout: 15000 });
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
    await d.evaluate(() => window.confideTest.dropSignaling());
    await waitFor(async () => (await d.evaluate(() => window.__banners.join('|'))).includes('Reconnecting'),
      { timeout: 10000, what: 'the reconnect banner' });
    await backInCall(d, 'the doctor back in the call');
    assert.ok(await newEqualSafetyCode(d, p, oldCode));
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

  test('a real key offer replayed under another participant\'s id is refused; the call keeps its keys', async () => {
    const d = page.doctor;
    await d.evaluate(() => {
      window.__indicator = [];
      new MutationObserver(() => window.__indicator.push(document.getElementById('e2ee-text').textContent))
        .observe(document.getElementById('e2ee-text'), { childList: true, characterData: true, subtree: true });
    });
    const before = await d.evaluate(() => window.confideTest.e2eeStats());
    // The patient's latest key offer, exactly as the server delivered it, arrives again
    // on the doctor's live signaling socket, now claiming another sender: what a
    // server (or anyone relaying) would do to splice itself into the key exchange.
    const r = await d.evaluate(() => {
      const offers = window.__test.e2eeIn.filter((m) => atob(m.blob).charCodeAt(0) === 1);
      const real = offers[offers.length - 1];
      const ws = window.__test.sockets.filter((s) => s.readyState === WebSocket.OPEN).pop();
      if (!real || !ws) return { error: `offers ${offers.length}, open socket ${!!ws}` };
      const forged = Number(real.from) + 1000;
      ws.dispatchEvent(new MessageEvent('message', { data: JSON.stringify({ type: 'e2ee', from: forged, blob: real.blob }) }));
      return { from: real.from, forged };
    });
    assert.ok(!r.error, `no offer to replay: ${r.error}`);
    const shown = await waitFor(async () => {
      const seen = await d.evaluate(() => window.__indicator.join('|'));
      return /bound to another participant/.test(seen) ? seen : null;
    }, { timeout: 10000, what: 'the refusal on the encryption indicator' });
    assert.match(shown, /could not be verified/);
    const after = await d.evaluate(() => window.confideTest.e2eeStats());
    assert.ok(!after.peers.includes(r.forged), 'the forged sender got a session');
    assert.deepEqual(after.peers, before.peers);
    assert.deepEqual(after.keyed, before.keyed);
    // The call goes on with the keys it had.
    await waitFor(async () => {
      const s = await d.evaluate(() => window.confideTest.e2eeStats());
      return s.decrypted.video > after.decrypted.video + 30 ? s : null;
    }, { timeout: 15000, what: 'video still decrypting after the refusal' });
    assert.equal(await view(d), 'call');
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
    assert.ok(await newEqualSafetyCode(d, p, oldCode));
    await decodingAgain('patient', 'video decoding again after the rejoin');
    await decodingAgain('doctor', 'the patient\'s video decoding again after the rejoin');
    assert.equal(await view(p), 'call');
    assert.equal(await view(d), 'call');
  });

  test('a guest invited by the doctor joins: a tile per participant, everyone decrypts everyone; the guest leaves: tile gone, keys rotate', async () => {
    const d = page.doctor;
    const p = page.patient;
    // The doctor makes a single-use link in the call view.
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

    // The doctor admits the guest.
    const admit = d.locator('#waiting-list button', { hasText: 'Admit' });
    await admit.first().waitFor({ timeout: 20000 });
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
        assert.equal(guestTile.label, 'Guest (guest)');
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

    // The guest leaves: their tile goes on both other pages, and both rotate to a new
    // sender key sealed only to those who remain; media goes on.
    const kidsBefore = {};
    for (const name of ['doctor', 'patient']) {
      kidsBefore[name] = (await page[name].evaluate(() => window.confideTest.samples())).kids;
    }
    await g.getByRole('button', { name: 'Leave', exact: true }).click();
    await g.locator('#view-message[data-kind="left"]').waitFor({ state: 'visible', timeout: 15000 });
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
      }, { timeout: 20000, what: `${name}: a new sender key after the guest left` });
    }
    await decodingAgain('doctor', 'video decoding after the guest left');
    await decodingAgain('patient', 'video decoding after the guest left');
    await ctx.guest.close();
  });

  test('the doctor ends the consultation; both leave the call view', async () => {
    const d = page.doctor;
    d.once('dialog', (dlg) => dlg.accept());
    await d.getByRole('button', { name: 'End consultation for everyone' }).click();
    for (const name of ['doctor', 'patient']) {
      await page[name].locator('#view-message[data-kind="ended"]').waitFor({ state: 'visible', timeout: 15000 });
      assert.notEqual(await view(page[name]), 'call');
    }
    await page.patient.screenshot({ path: path.join(OUT, 'patient-ended.png'), fullPage: true });
  });
});
