// The E2EE worker: every secret of the key layer lives here, never on the page.
//
// It holds this device's MLS credential and state (IndexedDB, identity-store.js), the
// pins of peer keys, the key-transparency view of the audit log, the consultation's
// MLS group, and the frame encryptor and decryptor keyed from the group's epochs, all
// objects of the wasm build of confide-mls and confide-e2ee. It follows docs/keys.md:
//
// * `init`: load or make the device, register it, top up KeyPackages, pin the log key.
// * Doctor: `enter` opens a new group; `prepareAdd` checks a participant (directory,
//   transparency proofs, KeyPackage, pins) and returns the commit to send
//   (`mls_commit`), `prepareRemove` the Remove of someone who left; `commitAccepted` /
//   `commitRefused` follow the server's answer.
// * Everyone else: `welcome` joins the doctor's group and checks its owner.
// * Everyone: `handleCommit`, `sealChat`, `openChat` (chat and checkpoints are MLS
//   application messages), `roster`, `markVerified`, `acceptKey`.
//
// No frame is encrypted, and no chat sealed, until every member of the group passed
// its checks (or the user accepted a changed key): until then frames are withheld
// (dropped, counted), never sent in the clear. Frames that cannot be decrypted are
// dropped and counted; the page shows the count.
//
// Network: the worker asks the page to make REST calls (`rpc` messages), so the session
// token stays on the page.

import { loadWasm } from './e2ee-wasm.js';
import { DeviceStore } from './identity-store.js';

const KP_LOW = 5;          // top up when fewer one-time KeyPackages are left
const KP_BATCH = 10;
const ACCEPTED = new Set(['first_contact', 'pinned', 'verified']);

let w = null;               // the wasm module's exports
let store = null;           // DeviceStore of our principal
let device = null;          // wasm Device
let saved = null;           // what the store holds: {secret, state, logKey}
let pins = null;            // wasm PinStore
let log = null;             // wasm LogView
let suite = 0;
let testMode = false;

// The consultation.
let consultation = null;    // appointment id (string)
let role = null;
let group = null;           // wasm Group
let encryptor = null;       // wasm GroupFrameEncryptor
let decryptor = null;       // wasm GroupFrameDecryptor
let pending = null;         // our commit awaiting the server: {kind, add: [participant]}
let ownerOk = false;        // non-doctors: the group's owner passed its checks
// "principal/device" -> {status, error, key (b64)}: the outcome of each member's check.
const checks = new Map();
// participant id -> {principal, device, label, role}: the room, as the page reports it.
let participants = new Map();
const leafOf = new Map();   // participant id -> leaf we added it at (doctor)
const seenGroups = new Map(); // group id (base64) -> newest epoch this device had in it
const codes = new Map();    // "principal/device/key" -> safety code
let testSamples = null;
const recvTransformers = new Set();
let sentKids = new Set();

const Codec = Object.freeze({ Vp8: 'VP8', Opus: 'opus', Other: 'other' });

const stats = {
  sent: { audio: 0, video: 0 },
  withheld: 0,              // frames dropped because no key may be used yet
  dropped_unencrypted: 0,   // frames dropped because encryption failed
  decrypted: { audio: 0, video: 0 },
  decrypted_from: {},       // participant id -> frames of theirs opened
  failed: { audio: 0, video: 0 },
  passthrough_empty: 0,
  keyframe_requests: 0,
  refused_messages: 0,      // group messages refused (forged, stale, wrong group)
  heads_checked: 0,         // members' log heads found consistent with ours
  split_views: 0,           // members' log heads that are not
};

// ------------------------------------------------------------------ helpers

const B64 = {
  enc(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  },
  dec(str) {
    const s = atob(str);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  },
};

const nameKey = (principal, dev) => `${principal}/${dev}`;
// What the server says about people goes into request paths: only well-formed names.
const PRINCIPAL = /^(account|guest):\d{1,20}$/;
const DEVICE = /^[0-9a-f]{32}$/;

function free(x) {
  if (x) { try { x.free(); } catch { /* already freed */ } }
}

// REST through the page (see e2ee.js): resolves to the JSON answer, or rejects with an
// Error carrying `status` and `code`.
let nextRpc = 1;
const rpcs = new Map();
function api(method, path, body, { text = false } = {}) {
  const id = nextRpc++;
  return new Promise((resolve, reject) => {
    rpcs.set(id, { resolve, reject });
    self.postMessage({ rpc: id, method, path, body, text });
  });
}

function persist() {
  return store.save({
    device: device.deviceId,
    secret: saved.secret,
    state: saved.state,
    pins: pins.toJson(),
    logKey: saved.logKey,
    logHead: log ? log.save() : saved.logHead || '',
  });
}

// ------------------------------------------------------------------ device

async function loadDevice(principal) {
  store = new DeviceStore(principal);
  const rec = await store.load();
  if (rec) {
    try {
      device = w.Device.restore(principal, rec.device, rec.secret, rec.state);
      saved = { secret: rec.secret, state: rec.state, logKey: rec.logKey, logHead: rec.logHead };
      pins = w.PinStore.fromJson(rec.pins);
    } catch {
      device = null;
    }
  }
  if (!device) {
    device = w.Device.generate(principal);
    saved = { secret: device.secretKey(), state: device.exportState(), logKey: '', logHead: '' };
    pins = new w.PinStore();
    await persist();
  }
}

/** docs/keys.md, "On every login": register, top up KeyPackages, pin the log key. */
async function registerDevice() {
  await api('PUT', `/devices/${device.deviceId}`, { signature_key: B64.enc(device.signatureKey) });
  const count = await api('GET', `/devices/${device.deviceId}/key_packages`);
  if (count.available < KP_LOW || !count.last_resort) {
    const keyPackages = device.keyPackages(KP_BATCH);
    const lastResort = device.lastResortKeyPackage();
    // Their private keys are in the state: saved before anyone can claim them. No group
    // exists yet in this worker, so the saved state holds KeyPackages only.
    saved.state = device.exportState();
    await persist();
    await api('POST', `/devices/${device.deviceId}/key_packages`, { key_packages: keyPackages, last_resort: lastResort });
  }
  if (!saved.logKey) {
    saved.logKey = await api('GET', '/audit/key', undefined, { text: true });
    if (typeof saved.logKey !== 'string') throw new Error('the audit log key is not text');
    await persist();
  }
  log = new w.LogView(saved.logKey.trim(), saved.logHead || undefined);
}

// ------------------------------------------------------------------ transparency

/** Accept a signed checkpoint note, with a consistency proof from our newest head. */
async function acceptCheckpoint(note) {
  const head = log.parseCheckpoint(note);
  const need = log.proofNeeded(head);
  let proof = [];
  if (need) {
    const r = await api('GET', `/audit/consistency?from=${need[0]}&to=${need[1]}`);
    proof = r.proof || [];
  }
  log.accept(head, proof);
  await persist();
}

/** The directory answer for `principal`, proven against the log: a wasm Directory. */
async function directory(principal) {
  if (!PRINCIPAL.test(principal)) throw new Error('malformed principal');
  for (let attempt = 0; ; attempt++) {
    const answer = await api('GET', `/directory/${principal}`);
    await acceptCheckpoint(answer.checkpoint);
    try {
      return log.verifyDirectory(JSON.stringify(answer));
    } catch (e) {
      // Another lookup moved our head past this answer's checkpoint: ask again once.
      if (attempt > 0 || !/not under the accepted checkpoint/.test(String(e.message))) throw e;
    }
  }
}

// ------------------------------------------------------------------ members

function codeFor(principal, dev, keyB64) {
  const k = `${principal}/${dev}/${keyB64}`;
  let c = codes.get(k);
  if (!c) {
    c = device.safetyCode(principal, dev, B64.dec(keyB64));
    codes.set(k, c);
  }
  return c;
}

/** A device's pin status after its directory check; first contact is pinned at once. */
function settle(principal, dev, keyB64, status) {
  if (status === 'first_contact') {
    pins.pin(principal, dev, B64.dec(keyB64));
    return 'pinned';
  }
  return status;
}

/** Check one group member (not us) against its principal's directory and the pins. */
async function checkMember(m, dirs) {
  const k = nameKey(m.principal, m.device);
  const prev = checks.get(k);
  if (prev && prev.key === m.signatureKey && prev.status !== 'failed') return prev;
  let entry;
  try {
    let dir = dirs.get(m.principal);
    if (!dir) {
      dir = await directory(m.principal);
      dirs.set(m.principal, dir);
    }
    const status = w.checkDevice(m.principal, m.device, B64.dec(m.signatureKey), dir, pins);
    entry = { status: settle(m.principal, m.device, m.signatureKey, status), key: m.signatureKey, label: labelFromDir(dir) };
  } catch (e) {
    entry = { status: 'failed', key: m.signatureKey, error: reason(e) };
  }
  checks.set(k, entry);
  return entry;
}

function labelFromDir(dir) {
  try { return JSON.parse(dir.json()).label || ''; } catch { return ''; }
}

function reason(e) {
  return String(e && e.message ? e.message : e).replace(/^(peer|misuse): /, '');
}

/** Check every member of the group; persist new pins. */
async function checkRoster() {
  const dirs = new Map();
  const me = device.deviceId;
  const roster = JSON.parse(group.roster());
  for (const m of roster) {
    if (m.device === me && m.principal === device.principal) continue;
    await checkMember(m, dirs);
  }
  for (const d of dirs.values()) free(d);
  if (role !== 'doctor' && group) {
    const owner = JSON.parse(group.ownerMember() || 'null');
    const c = owner && checks.get(nameKey(owner.principal, owner.device));
    ownerOk = !!c && ACCEPTED.has(c.status);
  }
  await persist();
}

/** May frames and chat be sent: a group with someone else in it, every member checked
 * and accepted (docs/keys.md, "What people see"). */
function sharing() {
  if (!group || !encryptor) return false;
  if (role !== 'doctor' && !ownerOk) return false;
  const roster = JSON.parse(group.roster());
  if (roster.length < 2) return false;
  for (const m of roster) {
    if (m.device === device.deviceId && m.principal === device.principal) continue;
    const c = checks.get(nameKey(m.principal, m.device));
    if (!c || c.key !== m.signatureKey || !ACCEPTED.has(c.status)) return false;
  }
  return true;
}

function rosterView() {
  if (!group) return [];
  const roster = JSON.parse(group.roster());
  const me = device.deviceId;
  return roster.map((m) => {
    const self = m.device === me && m.principal === device.principal;
    const c = self ? null : checks.get(nameKey(m.principal, m.device));
    let status = self ? 'self' : (c && c.key === m.signatureKey ? c.status : 'unchecked');
    if (!self && ACCEPTED.has(status)) {
      status = pins.isVerified(m.principal, m.device, B64.dec(m.signatureKey)) ? 'verified' : 'pinned';
    }
    return {
      leaf: m.leaf,
      principal: m.principal,
      device: m.device,
      self,
      owner: m.leaf === group.owner,
      status,
      error: c && c.error ? c.error : '',
      key: m.signatureKey,
      code: self ? '' : codeFor(m.principal, m.device, m.signatureKey),
    };
  });
}

/** What the page needs after every key-layer change. */
function snapshot(extra = {}) {
  return {
    group: !!group,
    epoch: group ? group.epoch : -1,
    groupId: group ? B64.enc(group.groupId) : '',
    sharing: sharing(),
    pending: !!pending,
    roster: rosterView(),
    ...extra,
  };
}

// ------------------------------------------------------------------ epochs

function useEpoch() {
  const gid = B64.enc(group.groupId);
  seenGroups.set(gid, Math.max(seenGroups.get(gid) ?? -1, group.epoch));
  const secret = group.epochSecret(device);
  decryptor.install(secret);
  const s2 = group.epochSecret(device);
  if (encryptor) encryptor.setEpoch(s2, group.ownLeaf);
  else encryptor = new w.GroupFrameEncryptor(suite, s2, group.ownLeaf);
  free(s2);
  sentKids.add(String(encryptor.kid));
  requestKeyframes();
}

function dropGroup() {
  if (group) {
    try { group.delete(device); } catch { free(group); }
  }
  group = null;
  free(encryptor);
  encryptor = null;
  if (decryptor) decryptor.reset();
  pending = null;
  ownerOk = false;
  leafOf.clear();
}

/** Our newest log head as a group message, for members to compare (split view). */
function checkpointMessage() {
  const head = log && log.latest();
  if (!group || !head) return [];
  return [{ type: 'chat', ciphertext: B64.enc(group.seal(device, w.checkpointPayload(head))), kind: 'checkpoint' }];
}

// ------------------------------------------------------------------ operations

const ops = {
  // Load wasm and this principal's device, register it, top up KeyPackages.
  async init({ principal, test }) {
    w = await loadWasm();
    suite = w.suiteChaCha20Poly1305();
    testMode = !!test;
    await loadDevice(principal);
    await registerDevice();
    decryptor = new w.GroupFrameDecryptor(suite);
    return { device: device.deviceId, signatureKey: B64.enc(device.signatureKey) };
  },

  // Entering the call (`joined`/`admitted`). The doctor opens a new group (a doctor
  // who comes back starts afresh and adds everyone again); everyone else waits for a
  // Welcome and sends nothing until then.
  enter({ consultation: c, role: r, samples }) {
    consultation = String(c);
    role = r;
    dropGroup();
    checks.clear();
    if (!testSamples && samples) testSamples = { audio: [], video: [], seen: { audio: 0, video: 0 } };
    if (role === 'doctor') group = w.Group.create(device, consultation);
    return snapshot();
  },

  // The room as the page sees it (for labels and per-sender statistics).
  setParticipants({ list }) {
    participants = new Map(list.map((p) => [p.id, p]));
    return {};
  },

  // Doctor: the commit that adds `participants` (one or more), after each passed its
  // checks. Returns {commit} to send, or nothing to do, plus what was refused and what
  // waits for the user's acceptance. One pending commit at a time.
  async prepareAdd({ list, present }) {
    if (role !== 'doctor' || !group) throw new Error('only the doctor adds');
    if (pending) throw new Error('a commit is already pending');
    const roster = JSON.parse(group.roster());
    const here = new Set(present || []);
    const refused = [];
    const needsAccept = [];
    const kps = [];
    const adding = []; // {id, principal, device}
    // A leaf of someone who left without a Remove yet (a reload): removed first, in a
    // commit of its own, before any KeyPackage is claimed.
    const stale = [];
    const todo = [];
    for (const p of list) {
      if (leafOf.has(p.id)) continue; // added already
      if (!p.device || !DEVICE.test(p.device) || !PRINCIPAL.test(p.principal || '')) {
        refused.push({ participant: p.id, error: 'this participant has no registered device' });
        continue;
      }
      const same = roster.find((m) => m.principal === p.principal && m.device === p.device);
      if (!same) {
        todo.push(p);
        continue;
      }
      const owner = [...leafOf.entries()].find(([, leaf]) => leaf === same.leaf);
      if (owner && here.has(owner[0])) refused.push({ participant: p.id, error: 'this device is in the call already' });
      else stale.push(same.leaf);
    }
    if (stale.length) {
      const c = group.remove(device, stale);
      pending = { kind: 'remove', leaves: stale };
      return { commit: { commit: B64.enc(c.commit) }, again: true, refused, needsAccept };
    }
    const dirs = new Map();
    for (const p of todo) {
      try {
        let dir = dirs.get(p.principal);
        if (!dir) {
          dir = await directory(p.principal);
          dirs.set(p.principal, dir);
        }
        const claim = await api('POST', `/directory/${p.principal}/devices/${p.device}/key_package`);
        const kp = w.KeyPackage.parse(device, B64.dec(claim.key_package));
        let status;
        try {
          status = w.checkJoiner(kp, p.principal, p.device, dir, pins);
        } catch (e) {
          free(kp);
          throw e;
        }
        const keyB64 = B64.enc(kp.signatureKey);
        if (!ACCEPTED.has(status)) {
          free(kp);
          needsAccept.push({ participant: p.id, principal: p.principal, device: p.device, key: keyB64, status, code: codeFor(p.principal, p.device, keyB64) });
          continue;
        }
        checks.set(nameKey(p.principal, p.device), { status: settle(p.principal, p.device, keyB64, status), key: keyB64 });
        kps.push(kp);
        adding.push({ id: p.id, principal: p.principal, device: p.device });
      } catch (e) {
        refused.push({ participant: p.id, error: reason(e) });
      }
    }
    for (const d of dirs.values()) free(d);
    await persist();
    if (kps.length === 0) return { refused, needsAccept };
    const c = group.add(device, kps);
    pending = { kind: 'add', add: adding };
    return { commit: { commit: B64.enc(c.commit), welcome: B64.enc(c.welcome), add: adding.map((a) => a.id) }, refused, needsAccept };
  },

  // Doctor: the Remove of a participant who left (matched by principal and device).
  prepareRemove({ participant }) {
    if (role !== 'doctor' || !group) return {};
    if (pending) throw new Error('a commit is already pending');
    let leaf = leafOf.get(participant.id);
    if (leaf === undefined && participant.device) {
      const m = JSON.parse(group.roster()).find((x) => x.principal === participant.principal && x.device === participant.device && x.leaf !== group.ownLeaf);
      if (m) leaf = m.leaf;
    }
    leafOf.delete(participant.id);
    if (leaf === undefined || !JSON.parse(group.roster()).some((m) => m.leaf === leaf)) return {};
    const c = group.remove(device, [leaf]);
    pending = { kind: 'remove', leaves: [leaf] };
    return { commit: { commit: B64.enc(c.commit) } };
  },

  // `mls_accepted`: apply our commit, move to the new epoch.
  commitAccepted() {
    if (!pending || !group) return snapshot();
    const before = new Set(JSON.parse(group.roster()).map((m) => m.leaf));
    group.confirmCommit(device);
    if (pending.kind === 'add') {
      // Leaves are filled in order; match the new ones to the participants we added.
      const roster = JSON.parse(group.roster());
      for (const p of pending.add) {
        const m = roster.find((x) => !before.has(x.leaf) && x.principal === p.principal && x.device === p.device);
        if (m) leafOf.set(p.id, m.leaf);
      }
    }
    pending = null;
    useEpoch();
    return snapshot({ send: checkpointMessage() });
  },

  // The server refused our commit (stale, wrong group, full, ...): drop it.
  commitRefused() {
    if (pending && group) group.discardCommit(device);
    pending = null;
    return snapshot();
  },

  // Everyone but the doctor: an `mls_welcome`. Joins (replacing any earlier group of
  // this consultation), then checks the owner and every member.
  async welcome({ welcome, owner }) {
    let g;
    try {
      g = w.Group.join(device, consultation, B64.dec(welcome), owner);
    } catch (e) {
      stats.refused_messages++;
      return snapshot({ refused: reason(e) });
    }
    // A Welcome into an epoch of a group this device has had already is a replay: it
    // would put us back in an old state of the server's choosing. (The doctor adding us
    // again after a reconnection welcomes us into a later epoch.)
    const gid = B64.enc(g.groupId);
    if (seenGroups.has(gid) && g.epoch <= seenGroups.get(gid)) {
      // A copy of the group we are in must not take its stored state with it.
      if (group && B64.enc(group.groupId) === gid) free(g);
      else { try { g.delete(device); } catch { free(g); } }
      stats.refused_messages++;
      return snapshot({ refused: 'a Welcome into an epoch this device has had before' });
    }
    dropGroup();
    group = g;
    await checkRoster();
    useEpoch();
    return snapshot({ send: checkpointMessage() });
  },

  // An `mls_commit` from the server.
  async handleCommit({ commit }) {
    if (!group) return snapshot({ refused: 'a commit before any group' });
    let info;
    try {
      info = JSON.parse(group.handleMessage(device, B64.dec(commit)).info);
    } catch (e) {
      stats.refused_messages++;
      return snapshot({ refused: reason(e) });
    }
    if (info.kind === 'removed') {
      dropGroup();
      return snapshot({ removed: true });
    }
    if (info.kind !== 'new_epoch') return snapshot();
    useEpoch();
    if (info.added.length) await checkRoster();
    return snapshot({ send: checkpointMessage() });
  },

  // Seal a chat line for the group.
  sealChat({ text }) {
    if (!sharing()) throw new Error('keys are not shared yet');
    return { ciphertext: B64.enc(group.seal(device, w.chatPayload(text))) };
  },

  // A `chat` from someone else: a chat line, or a member's log head to compare.
  async openChat({ ciphertext }) {
    if (!group) throw new Error('no group yet');
    let inc;
    try {
      inc = group.handleMessage(device, B64.dec(ciphertext));
    } catch (e) {
      stats.refused_messages++;
      throw new Error(reason(e));
    }
    const info = JSON.parse(inc.info);
    if (info.kind !== 'application') return { kind: 'other' };
    const payload = JSON.parse(w.parsePayload(inc.payload));
    const sender = info.sender;
    if (payload.type === 'chat') return { kind: 'chat', text: payload.text, sender };
    // A checkpoint: a head another member accepted must be consistent with ours.
    const ours = log && log.latest() ? JSON.parse(log.latest()) : null;
    if (!ours) return { kind: 'checkpoint', sender };
    const head = JSON.stringify({ size: payload.size, root: payload.root });
    try {
      let proof = [];
      if (payload.size !== ours.size) {
        const from = Math.min(payload.size, ours.size);
        const to = Math.max(payload.size, ours.size);
        proof = (await api('GET', `/audit/consistency?from=${from}&to=${to}`)).proof || [];
      }
      log.checkPeerHead(head, proof);
      stats.heads_checked++;
      return { kind: 'checkpoint', sender };
    } catch (e) {
      stats.split_views++;
      return { kind: 'checkpoint', sender, splitView: true, error: reason(e) };
    }
  },

  roster() {
    return snapshot();
  },

  // Our newest log head as a group message (sent after every epoch change; the test
  // asks for one more).
  logHead() {
    return { send: checkpointMessage() };
  },

  // The user compared the code with this member and it matched.
  async markVerified({ principal, device: dev }) {
    const m = group && JSON.parse(group.roster()).find((x) => x.principal === principal && x.device === dev);
    if (!m) throw new Error('not a member');
    pins.markVerified(principal, dev, B64.dec(m.signatureKey));
    await persist();
    return snapshot();
  },

  // The user accepted a new or changed key (after comparing the code).
  async acceptKey({ principal, device: dev, key }) {
    pins.pin(principal, dev, B64.dec(key));
    const k = nameKey(principal, dev);
    const c = checks.get(k);
    if (c && c.key === key && !ACCEPTED.has(c.status) && c.status !== 'failed') c.status = 'pinned';
    if (group && role !== 'doctor') {
      const owner = JSON.parse(group.ownerMember() || 'null');
      const oc = owner && checks.get(nameKey(owner.principal, owner.device));
      ownerOk = !!oc && ACCEPTED.has(oc.status);
    }
    await persist();
    return snapshot();
  },

  stats() {
    const s = structuredClone(stats);
    s.sharing = sharing();
    s.epoch = group ? group.epoch : -1;
    s.epochs = decryptor ? Array.from(decryptor.epochs()) : [];
    s.kid = encryptor ? encryptor.kid : -1;
    s.logSize = log && log.latest() ? JSON.parse(log.latest()).size : 0;
    return s;
  },

  // Test mode only (see `collectSample`).
  testSamples() {
    if (!testSamples) return null;
    return { audio: testSamples.audio, video: testSamples.video, kids: [...sentKids] };
  },

  // Test mode only: timings of the MLS operations in this browser (ms).
  benchmark() {
    if (!testMode) throw new Error('test mode only');
    return benchmark();
  },

  stop() {
    dropGroup();
    return {};
  },
};

function benchmark() {
  const now = () => performance.now();
  const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const runs = { create: [], add1: [], add7: [], commit: [], welcome: [] };
  const doc = w.Device.generate('account:900001');
  const members = Array.from({ length: 8 }, (_, i) => w.Device.generate(`account:${900010 + i}`));
  for (let r = 0; r < 5; r++) {
    let t = now();
    const g = w.Group.create(doc, '900000');
    runs.create.push(now() - t);
    // Add one member, which then processes the next commit.
    let kp = w.KeyPackage.parse(doc, B64.dec(members[0].keyPackages(1)[0]));
    t = now();
    let c = g.add(doc, [kp]);
    g.confirmCommit(doc);
    runs.add1.push(now() - t);
    t = now();
    const mg = w.Group.join(members[0], '900000', c.welcome, doc.principal);
    runs.welcome.push(now() - t);
    const kps = members.slice(1).map((m) => w.KeyPackage.parse(doc, B64.dec(m.keyPackages(1)[0])));
    t = now();
    c = g.add(doc, kps);
    g.confirmCommit(doc);
    runs.add7.push(now() - t);
    t = now();
    mg.handleMessage(members[0], c.commit);
    runs.commit.push(now() - t);
    g.delete(doc);
    mg.delete(members[0]);
  }
  for (const m of members) free(m);
  free(doc);
  return Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, { median: +median(v).toFixed(2), runs: v.map((x) => +x.toFixed(2)) }]));
}

function requestKeyframes() {
  for (const t of recvTransformers) {
    if (typeof t.sendKeyFrameRequest === 'function') {
      stats.keyframe_requests++;
      // Rejects when no frame has arrived yet; the first frame of the key asks again.
      t.sendKeyFrameRequest().catch(() => {});
    }
  }
}

// ------------------------------------------------------------------ frames

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

// Recomputed when the roster or the room changes (cheap: at most 8 people).
function participantOfLeaf(leaf) {
  if (!group) return null;
  const m = JSON.parse(group.roster()).find((x) => x.leaf === leaf);
  if (!m) return null;
  for (const [id, p] of participants) if (p.principal === m.principal && p.device === m.device) return id;
  return null;
}
const leafCache = { epoch: -2, map: new Map() };
function senderId(leaf) {
  const e = group ? group.epoch : -1;
  if (leafCache.epoch !== e || leafCache.size !== participants.size) {
    leafCache.epoch = e;
    leafCache.size = participants.size;
    leafCache.map.clear();
  }
  if (!leafCache.map.has(leaf)) leafCache.map.set(leaf, participantOfLeaf(leaf));
  return leafCache.map.get(leaf);
}

// Sharing is re-evaluated at most every 250 ms on the frame path.
let shareCache = { at: 0, value: false };
function mayShare() {
  const t = performance.now();
  if (t - shareCache.at > 250) shareCache = { at: t, value: sharing() };
  return shareCache.value;
}

function encryptFrame(kind, frame, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    stats.passthrough_empty++;
    controller.enqueue(frame);
    return;
  }
  if (!encryptor || !mayShare()) {
    stats.withheld++;
    return; // no key may be used yet: drop, never send plaintext
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
  if (!decryptor) {
    stats.failed[kind]++;
    return;
  }
  const codec = codecOf(frame, kind);
  let plain;
  try {
    plain = decryptor.decrypt(codec, data);
  } catch {
    stats.failed[kind]++;
    return;
  }
  frame.data = plain.buffer;
  stats.decrypted[kind]++;
  const id = senderId(decryptor.lastSender);
  if (id !== null) stats.decrypted_from[id] = (stats.decrypted_from[id] || 0) + 1;
  // The first frame under a new key: ask the sender for a keyframe so the picture
  // does not wait for the next periodic one.
  if (decryptor.lastFrameStartedNewKey && kind === 'video' && transformer &&
      typeof transformer.sendKeyFrameRequest === 'function') {
    stats.keyframe_requests++;
    transformer.sendKeyFrameRequest().catch(() => {});
  }
  controller.enqueue(frame);
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

// ------------------------------------------------------------------ message loop
// One request at a time, in order. REST answers (`rpcReply`) are handled at once:
// the request waiting for them holds the queue.
let queue = Promise.resolve();

self.onmessage = (event) => {
  const msg = event.data || {};
  if (msg.op === 'streams') {
    // createEncodedStreams fallback: the page transferred the streams to us.
    pipe(msg.side, msg.kind, msg.readable, msg.writable, null);
    return;
  }
  if (msg.rpcReply) {
    const p = rpcs.get(msg.rpcReply);
    if (!p) return;
    rpcs.delete(msg.rpcReply);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(Object.assign(new Error(msg.error || 'request failed'), { status: msg.status, code: msg.code }));
    return;
  }
  const { id, op, args } = msg;
  queue = queue.then(async () => {
    const fn = ops[op];
    try {
      if (!fn) throw new Error(`unknown op ${op}`);
      if (op !== 'init' && !device) throw new Error('the key layer is not started');
      const result = await fn(args || {});
      shareCache.at = 0;
      self.postMessage({ id, ok: true, result });
    } catch (e) {
      // Error text from the core names the failure, never key material.
      self.postMessage({ id, ok: false, error: String(e && e.message ? e.message : e) });
    }
  });
};
