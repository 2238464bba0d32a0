// The test's own MLS devices: the wasm build the browser loads, in Node, to play a
// malicious server's ghost (a device of its own, a forged KeyPackage, a commit it signs
// itself) and to check that nothing it holds opens the frames the SFU forwarded.

import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { vp8Descriptor } from './lib.mjs';

const PKG = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../static/pkg');

let loaded = null;

/** The wasm module (crates/web/static/pkg, built by scripts/build-wasm). */
export async function wasm() {
  if (loaded) return loaded;
  // The web target is ES modules with .js names (the glue and its snippets); Node loads
  // them as such from a copy with a package.json that says so.
  const tmp = mkdtempSync(path.join(tmpdir(), 'confide-wasm-'));
  cpSync(PKG, tmp, { recursive: true });
  writeFileSync(path.join(tmp, 'package.json'), '{"type": "module"}');
  const w = await import(pathToFileURL(path.join(tmp, 'confide_e2ee_wasm.js')).href);
  rmSync(tmp, { recursive: true, force: true });
  w.initSync({ module: readFileSync(path.join(PKG, 'confide_e2ee_wasm_bg.wasm')) });
  loaded = w;
  return w;
}

export const b64 = (bytes) => Buffer.from(bytes).toString('base64');
export const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64'));

// ------------------------------------------------------------------ MLS framing

/** RFC 9420 section 2.1.2 variable-size length: [value, bytes used]. */
export function readVarint(buf, off) {
  const b = buf[off];
  const kind = b >> 6;
  if (kind === 0) return [b & 0x3f, 1];
  if (kind === 1) return [((b & 0x3f) << 8) | buf[off + 1], 2];
  if (kind === 2) return [(((b & 0x3f) << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0, 4];
  throw new Error('invalid MLS varint');
}

export function writeVarint(n) {
  if (n < 0x40) return Buffer.from([n]);
  if (n < 0x4000) return Buffer.from([0x40 | (n >> 8), n & 0xff]);
  return Buffer.from([0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
}

/**
 * A PrivateMessage (RFC 9420 section 6.3) with its public header rewritten: another
 * group id and epoch, the sealed content untouched. What a server can do to make a
 * commit a ghost signed in a group of its own look like one of the real group.
 */
export function reheadPrivateMessage(msg, groupId, epoch) {
  const buf = Buffer.from(msg);
  if (buf.readUInt16BE(0) !== 1 || buf.readUInt16BE(2) !== 2) throw new Error('not an MLS PrivateMessage');
  const [gidLen, n] = readVarint(buf, 4);
  const rest = buf.subarray(4 + n + gidLen + 8);
  const e = Buffer.alloc(8);
  e.writeBigUInt64BE(BigInt(epoch));
  return new Uint8Array(Buffer.concat([buf.subarray(0, 4), writeVarint(groupId.length), Buffer.from(groupId), e, rest]));
}

/** The (group id, epoch) of a PrivateMessage. */
export function privateMessageHeader(msg) {
  const buf = Buffer.from(msg);
  const [gidLen, n] = readVarint(buf, 4);
  const groupId = buf.subarray(4 + n, 4 + n + gidLen);
  return { groupId: new Uint8Array(groupId), epoch: Number(buf.readBigUInt64BE(4 + n + gidLen)) };
}

/**
 * A KeyPackage that names `principal`/`deviceId` and carries `claimedKey`, made by a
 * device that does not hold that key's secret: the server's forgery. Signed with the
 * forger's own key, with the claimed key written over its own afterwards.
 */
export function forgeKeyPackage(w, principal, deviceId, claimedKey) {
  const forger = w.Device.restore(principal, deviceId, crypto.getRandomValues(new Uint8Array(32)), new Uint8Array(0));
  const kp = Buffer.from(unb64(forger.keyPackages(1)[0]));
  const at = kp.indexOf(Buffer.from(forger.signatureKey));
  if (at < 0) throw new Error('the forger key is not in its KeyPackage');
  Buffer.from(claimedKey).copy(kp, at);
  forger.free();
  return new Uint8Array(kp);
}

// ------------------------------------------------------------------ tapped frames

/**
 * The whole encrypted frames among tapped payloads: every Opus payload, and VP8 frames
 * that fit one packet (a frame start whose RTP marker ends the frame is not recorded,
 * so VP8 frame starts are tried as they are: a split frame fails like a wrong key).
 */
export function tappedFrames(records) {
  const out = [];
  for (const r of records) {
    if (r.rtx) continue;
    const buf = Buffer.from(String(r.hex || ''), 'hex');
    if (buf.length === 0) continue;
    if (r.kind === 'audio') out.push({ codec: 'opus', frame: new Uint8Array(buf) });
    else if (r.kind === 'video') {
      const d = vp8Descriptor(buf);
      if (d && d.start) out.push({ codec: 'VP8', frame: new Uint8Array(buf.subarray(d.offset)) });
    }
  }
  return out;
}

/** How many of `frames` any of `decryptors` opens. */
export function opened(decryptors, frames) {
  let n = 0;
  for (const { codec, frame } of frames) {
    for (const d of decryptors) {
      try {
        d.decrypt(codec, frame);
        n++;
        break;
      } catch { /* does not open: as it should */ }
    }
  }
  return n;
}
