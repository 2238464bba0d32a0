// The E2EE worker: every secret of a consultation lives here, never on the page.
//
// It holds the device identity key (loaded from IndexedDB), the session (our signed
// ephemeral key offer), the pairwise keys with each peer, our media sender key and one
// decryptor per peer, all as objects of the wasm build of confide-e2ee. The page talks
// to it with request/response messages (see `ops` below) and hands it the encoded
// media streams: RTCRtpScriptTransform delivers them here as `rtctransform` events; the
// createEncodedStreams fallback transfers them with a `streams` message.
//
// Frames that cannot be encrypted are dropped, never sent in the clear. Frames that
// cannot be decrypted are dropped and counted; the page shows the count.

import { loadWasm } from './e2ee-wasm.js';
import { loadIdentity } from './identity-store.js';

let w = null;               // the wasm module's exports, once loaded
let identity = null;        // wasm Identity (Ed25519)
let session = null;         // wasm Session of the current consultation
let me = null;              // our participant id (number)
let consultationId = null;  // the consultation id our offers are bound to (string)
let encryptor = null;       // wasm FrameEncryptor: our sender key and frame counter
// participant id -> { peer: wasm Peer, decryptor: wasm FrameDecryptor,
//                     keys: [wasm ReceivedKey] (newest last), code: safety code }
const peers = new Map();
let testSamples = null;     // Test mode only: plaintext samples, see `collectSample`.
const recvTransformers = new Set(); // video receive transformers, for keyframe requests
let sentKids = new Set();   // KIDs we have sent under (public values, for the test)
const MAX_KEYS_PER_PEER = 4;

const Codec = Object.freeze({ Vp8: 'VP8', Opus: 'opus', Other: 'other' });

const stats = {
  sent: { audio: 0, video: 0 },
  dropped_unencrypted: 0,
  decrypted: { audio: 0, video: 0 },
  decrypted_from: {},  // participant id -> frames of theirs opened (group consultations)
  failed: { audio: 0, video: 0 },
  passthrough_empty: 0,
  keyframe_requests: 0,
};

// --- randomness: the wasm core takes its entropy from the host --------------------
function seed() {
  const s = new Uint8Array(32);
  crypto.getRandomValues(s);
  return s;
}

// --- small encoding helpers --------------------------------------------------------
const B64 = {
  enc(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  },
  dec(str) {
    const s = atob(str);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  },
};

// Envelope of an `e2ee` signaling blob: one type byte, then the payload.
const BLOB_OFFER = 1;       // our signed key offer
const BLOB_SENDER_KEY = 2;  // our sender key, sealed to one peer

function envelope(type, payload) {
  const out = new Uint8Array(payload.length + 1);
  out[0] = type;
  out.set(payload, 1);
  return B64.enc(out);
}

// --- operations requested by the page ---------------------------------------------
const ops = {
  // Load wasm and the device identity. Resolves to the public identity key (base64).
  async init({ account }) {
    w = await loadWasm();
    identity = await loadIdentity(w, account);
    return { identity: B64.enc(identity.publicKey()) };
  },

  // Start (or restart) the E2EE session of one consultation. Returns our offer blob,
  // to be sent to every admitted peer.
  start({ consultation, participant, samples }) {
    reset();
    me = participant;
    consultationId = String(consultation);
    session = new w.Session(identity, consultationId, BigInt(participant), seed());
    encryptor = new w.FrameEncryptor(w.suiteChaCha20Poly1305(), seed());
    sentKids = new Set([String(encryptor.kid)]);
    testSamples = samples ? { audio: [], video: [], seen: { audio: 0, video: 0 } } : null;
    return { offer: envelope(BLOB_OFFER, session.offer()) };
  },

  // Our offer again (to send to one newcomer).
  offer() {
    requireSession();
    return { offer: envelope(BLOB_OFFER, session.offer()) };
  },

  // Someone new was admitted: ratchet our key so they cannot read what was said before.
  // Existing receivers would follow the ratchet by themselves; they get the new key
  // anyway so their chat key follows too. The newcomer's copy is sealed once its
  // offer arrives.
  peerJoined({ participant }) {
    requireSession();
    if (participant === me || peers.size === 0) return { send: [] };
    encryptor.ratchet();
    sentKids.add(String(encryptor.kid));
    return { send: sealToAll() };
  },

  // Someone left: forget their keys and switch to a fresh sender key that they never
  // had; returns it sealed to every remaining peer.
  peerLeft({ participant }) {
    requireSession();
    const p = peers.get(participant);
    if (p) {
      freePeer(p);
      peers.delete(participant);
    }
    encryptor.rotate(seed());
    sentKids.add(String(encryptor.kid));
    return { send: sealToAll() };
  },

  // An `e2ee` blob from `from`. Returns blobs to send back ({to, blob}) and, when a
  // pairwise session was made, the safety code for that peer.
  receive({ from, blob }) {
    requireSession();
    const bytes = B64.dec(blob);
    if (bytes.length < 2) throw new Error('empty e2ee message');
    const type = bytes[0];
    const payload = bytes.subarray(1);
    if (type === BLOB_OFFER) {
      // The offer must be bound to the participant the server says sent it (and, as
      // Session.accept checks, to this consultation): a relayed or replayed offer from
      // someone else is refused.
      const info = w.OfferInfo.parse(payload);
      const bound = info.participantId;
      info.free();
      if (bound !== BigInt(from)) throw new Error('key offer is bound to another participant');
      const peer = session.accept(payload);
      const old = peers.get(from);
      if (old) freePeer(old);
      const code = peer.safetyCode();
      peers.set(from, { peer, decryptor: new w.FrameDecryptor(), keys: [], code });
      const sealed = peer.sealSenderKey(encryptor, seed());
      return { send: [{ to: from, blob: envelope(BLOB_SENDER_KEY, sealed) }], safety: { peer: from, code } };
    }
    if (type === BLOB_SENDER_KEY) {
      const p = peers.get(from);
      if (!p) throw new Error('sender key before key offer');
      const key = p.peer.openSenderKey(payload);
      p.decryptor.install(key);
      p.keys.push(key);
      while (p.keys.length > MAX_KEYS_PER_PEER) p.keys.shift().free();
      p.keyed = true;
      requestKeyframes();
      return { send: [], keyed: from };
    }
    throw new Error('unknown e2ee message type');
  },

  // Seal a chat message under our current sender key: one ciphertext that every peer
  // holding the key opens.
  sealChat({ text }) {
    requireSession();
    if (peers.size === 0) throw new Error('nobody to send to yet');
    const plain = new TextEncoder().encode(text);
    return { ciphertext: B64.enc(encryptor.sealMessage('chat', plain, seed())) };
  },

  openChat({ from, ciphertext }) {
    requireSession();
    const p = peers.get(from);
    if (!p || p.keys.length === 0) throw new Error('no key from the sender');
    const sealed = B64.dec(ciphertext);
    for (let i = p.keys.length - 1; i >= 0; i--) {
      let opened;
      try { opened = p.keys[i].openMessage(sealed); } catch { continue; }
      const plain = opened.plaintext;
      const kind = opened.kind;
      opened.free();
      if (kind !== 'chat') throw new Error('not a chat message');
      return { text: new TextDecoder('utf-8', { fatal: true }).decode(plain) };
    }
    throw new Error('message could not be opened');
  },

  stats() {
    const keyed = [...peers.entries()].filter(([, p]) => p.keyed).map(([id]) => id);
    return { ...structuredClone(stats), keyed, peers: [...peers.keys()] };
  },

  // Test mode only (see `collectSample`).
  testSamples() {
    if (!testSamples) return null;
    return { audio: testSamples.audio, video: testSamples.video, kids: [...sentKids] };
  },

  stop() {
    reset();
    return {};
  },
};

function requireSession() {
  if (!session) throw new Error('no consultation session');
}

function sealToAll() {
  const out = [];
  for (const [pid, p] of peers) {
    out.push({ to: pid, blob: envelope(BLOB_SENDER_KEY, p.peer.sealSenderKey(encryptor, seed())) });
  }
  return out;
}

function freePeer(p) {
  for (const k of p.keys) { try { k.free(); } catch { /* already freed */ } }
  try { p.decryptor.free(); } catch { /* already freed */ }
  try { p.peer.free(); } catch { /* already freed */ }
}

function reset() {
  for (const p of peers.values()) freePeer(p);
  peers.clear();
  if (encryptor) { try { encryptor.free(); } catch { /* already freed */ } }
  if (session) { try { session.free(); } catch { /* already freed */ } }
  encryptor = null;
  session = null;
  me = null;
  consultationId = null;
  for (const k of Object.keys(stats)) {
    if (typeof stats[k] === 'number') stats[k] = 0;
    else for (const kk of Object.keys(stats[k])) stats[k][kk] = 0;
  }
}

function requestKeyframes() {
  for (const t of recvTransformers) {
    if (typeof t.sendKeyFrameRequest === 'function') {
      stats.keyframe_requests++;
      // Rejects when no frame has arrived yet; the next key install retries.
      t.sendKeyFrameRequest().catch(() => {});
    }
  }
}

// --- frames --------------------------------------------------------------------------

function codecOf(frame, kind) {
  if (kind === 'audio') return Codec.Opus;
  let mime = '';
  try { mime = (frame.getMetadata().mimeType || '').toLowerCase(); } catch { /* older API */ }
  // No mimeType (older browsers): the page negotiates VP8 only (call.js, preferVp8).
  if (mime === '' || mime.endsWith('/vp8')) return Codec.Vp8;
  return Codec.Other;
}

// The clear prefix the e2ee core keeps (mirrors confide_e2ee::Codec::clear_prefix_len).
function clearPrefix(codec, bytes) {
  if (bytes.length === 0) return 0;
  if (codec === Codec.Opus) return 1;
  if (codec === Codec.Vp8) return (bytes[0] & 1) === 0 ? 10 : 3;
  return 0;
}

// Test mode only: keep 32 plaintext bytes past the clear prefix from some frames, so
// the end-to-end test can prove that none of them ever reaches the SFU. The samples
// stay in this page's memory (which holds the decoded media anyway) until the test
// reads them; they are never sent anywhere. Enabled only when the page was opened with
// the test flag (see app.js).
function collectSample(kind, codec, bytes) {
  const t = testSamples;
  if (!t) return;
  const n = t.seen[kind]++;
  const list = t[kind];
  if (list.length >= 400 || n % 3 !== 0) return;
  const p = clearPrefix(codec, bytes);
  if (bytes.length < p + 32) return;
  list.push(hex(bytes.subarray(p, p + 32)));
}

function hex(bytes) {
  let s = '';
  for (const b of bytes) s += (b < 16 ? '0' : '') + b.toString(16);
  return s;
}

function encryptFrame(kind, frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    stats.passthrough_empty++;
    controller.enqueue(frame);
    return;
  }
  if (!encryptor) {
    stats.dropped_unencrypted++;
    return; // no key yet: drop, never send plaintext
  }
  const codec = codecOf(frame, kind);
  collectSample(kind, codec, data);
  let out;
  try {
    out = encryptor.encrypt(codec, data);
  } catch {
    stats.dropped_unencrypted++;
    return;
  }
  frame.data = out.buffer;
  stats.sent[kind]++;
  controller.enqueue(frame);
}

function decryptFrame(kind, frame, controller, transformer) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    stats.passthrough_empty++;
    controller.enqueue(frame);
    return;
  }
  const codec = codecOf(frame, kind);
  for (const [id, p] of peers) {
    if (!p.keyed) continue;
    let plain;
    try {
      plain = p.decryptor.decrypt(codec, data);
    } catch {
      continue;
    }
    frame.data = plain.buffer;
    stats.decrypted[kind]++;
    stats.decrypted_from[id] = (stats.decrypted_from[id] || 0) + 1;
    // The first frame under a new key: ask the sender for a keyframe so the picture
    // does not wait for the next periodic one.
    if (p.decryptor.lastFrameStartedNewKey && kind === 'video' && transformer &&
        typeof transformer.sendKeyFrameRequest === 'function') {
      stats.keyframe_requests++;
      transformer.sendKeyFrameRequest().catch(() => {});
    }
    controller.enqueue(frame);
    return;
  }
  stats.failed[kind]++;
}

function pipe(side, kind, readable, writable, transformer) {
  if (side === 'recv' && kind === 'video' && transformer) recvTransformers.add(transformer);
  const transform = new TransformStream({
    transform(frame, controller) {
      if (side === 'send') encryptFrame(kind, frame, controller);
      else decryptFrame(kind, frame, controller, transformer);
    },
  });
  readable.pipeThrough(transform).pipeTo(writable).catch(() => {
    if (transformer) recvTransformers.delete(transformer);
  });
}

// RTCRtpScriptTransform: Chromium, Safari, Firefox.
self.onrtctransform = (event) => {
  const t = event.transformer;
  const { side, kind } = t.options || {};
  pipe(side === 'send' ? 'send' : 'recv', kind === 'audio' ? 'audio' : 'video', t.readable, t.writable, t);
};

// --- message loop: one request at a time, in order --------------------------------
let queue = Promise.resolve();

self.onmessage = (event) => {
  const msg = event.data || {};
  if (msg.op === 'streams') {
    // createEncodedStreams fallback: the page transferred the streams to us.
    pipe(msg.side, msg.kind, msg.readable, msg.writable, null);
    return;
  }
  const { id, op, args } = msg;
  queue = queue.then(async () => {
    const fn = ops[op];
    try {
      if (!fn) throw new Error(`unknown op ${op}`);
      const result = await fn(args || {});
      self.postMessage({ id, ok: true, result });
    } catch (e) {
      // Error text from the core names the failure, never key material.
      self.postMessage({ id, ok: false, error: String(e && e.message ? e.message : e) });
    }
  });
};
