// One consultation: signaling, the waiting room, the media connection, the key layer
// (through the E2EE worker), chat, and reconnection.
//
// Media: every client sends `media_offer` once admitted and answers any `media_offer`
// the server sends (the SFU renegotiates when tracks come and go). Every sender and
// receiver gets an encoded-frame transform before media flows (e2ee.js); there is no
// unencrypted path: until the keys are there, frames are withheld.
//
// Group consultations: the SFU sends each other participant's tracks under the stream id
// `confide-<participant id>`; each participant gets a tile of its own (video and sound),
// removed when they leave. The doctor can invite guests (interpreter, relative, second
// clinician) with a single-use link; they wait until admitted like the patient.
//
// Keys (docs/keys.md): one MLS group per consultation, made by the doctor's device.
// The doctor's Admit checks the participant's device in the key directory (with
// key-transparency proofs) and against the pins, then commits an Add (`mls_commit` with
// the Welcome); a participant who leaves is removed by a commit; a doctor who comes back
// makes a new group with everyone in it; a participant who comes back is added again.
// The people shown, their safety codes and the Verified ticks come from the group. The
// doctor's commits go out one at a time (`keyJob`), each waiting for the server's answer.

import { api } from './api.js';
import { E2ee } from './e2ee.js';
import { Signaling } from './signaling.js';
import {
  $, showView, showMessage, banner, el, groupDigits, confirmDialog, closeDialog, spokenDigits,
} from './ui.js';

const ICE_GRACE_MS = 8000;   // 'disconnected' this long: try an ICE restart
const REJOIN_AFTER_MS = 20000; // still not connected: rejoin from scratch
const STATS_EVERY_MS = 2000;

const REFUSALS = {
  wrong_consultation: ['You cannot join this consultation', 'This consultation is not one of yours. Only the clinician and the patient it was booked for can join it.'],
  forbidden: ['You cannot join this consultation', 'Your account is not allowed to join consultations.'],
  consent_required: ['Consent needed', 'Please accept the telehealth terms before joining.'],
  outside_window: ['Not open yet', 'This consultation is not open at this time. Please come back at the appointment time.'],
  consultation_ended: ['This consultation is over', 'The consultation has ended.'],
  already_joined: ['Already open elsewhere', 'You are already in this consultation in another window or device.'],
  unknown_device: ['This device is not registered', 'The security key of this browser could not be registered with the clinic. Reload the page to try again.'],
};

// Server refusals of an `mls_commit` (the pending commit is dropped).
const COMMIT_ERRORS = new Set(['stale_commit', 'wrong_group', 'invalid_message', 'not_doctor', 'unknown_participant',
  'consultation_full', 'too_large', 'not_admitted', 'not_in_consultation', 'rate_limited']);
const COMMIT_TIMEOUT_MS = 20000;
// A room participant not in the group this long after joining is shown in red.
const ROSTER_GRACE_MS = 5000;

const info = (p) => ({ id: p.id, principal: p.principal, device: p.device || null, label: p.label, role: p.role });

export class Consultation {
  constructor({ appointment, me, media, token, testMode, onExit }) {
    this.appt = appointment;
    this.meInfo = me;
    this.role = me.role;
    this.media = media;
    this.testMode = !!testMode;
    this.onExit = onExit;
    this.sig = new Signaling(token);
    this.e2ee = null;
    this.pc = null;
    this.you = null;             // our participant id in this consultation
    this.peers = new Map();      // participant id -> {role, label, principal, device, joinedAt}
    this.waiting = [];           // the waiting room (doctor)
    this.keys = { group: false, sharing: false, roster: [] }; // the worker's last snapshot
    this.warnings = new Map();   // "principal/device" -> key warning shown
    this.keyJobs = Promise.resolve(); // the doctor's commits, one at a time
    this.commitWaiter = null;    // the commit awaiting the server's answer
    this.mediaWarn = null;       // decryption trouble, shown on the badge
    this.inCall = false;
    this.done = false;
    this.echoes = [];            // our own group messages awaiting the server's echo
    this.tiles = new Map();      // participant id -> {fig, video, stream}
    this.timers = [];
    this.lastStats = null;
    this.iceTimer = null;
    this.rejoinTimer = null;
    this.wasInCall = false;
    this.endedByMe = false;      // the doctor pressed End for everyone
    this.unread = 0;             // chat messages not seen (phones: chat closed)
    this.queue = Promise.resolve();
    this.bindUi();
  }

  // ---------------------------------------------------------------- lifecycle

  async start() {
    try {
      this.e2ee = new E2ee();
      const principal = this.meInfo.principal;
      if (!principal) throw new Error('the server did not say who you are');
      const { device } = await this.e2ee.call('init', { principal, test: this.testMode });
      this.device = device;
    } catch (e) {
      this.exit('unsupported', 'This browser cannot protect your consultation',
        `End-to-end encryption could not be started here (${e.message}). The consultation will not start without it.`);
      return;
    }
    this.sig.addEventListener('up', (e) => this.onUp(e.detail));
    this.sig.addEventListener('down', () => this.onDown());
    this.sig.addEventListener('fatal', () => this.exit('auth', 'Please log in again', 'Your session has expired.'));
    // One message at a time, in arrival order: a media_offer must not overtake the
    // admitted that creates the peer connection.
    this.sig.addEventListener('message', (e) => {
      this.queue = this.queue.then(() => this.onMessage(e.detail)).catch((err) => this.onHandlerError(err));
    });
    showView('loading');
    this.sig.connect();
    this.timers.push(setInterval(() => this.pollStats(), STATS_EVERY_MS));
  }

  onUp({ reconnected }) {
    if (reconnected) banner('Reconnected. Rejoining the consultation…');
    this.sig.send({ type: 'join', consultation: this.appt.id, device: this.device });
  }

  onDown() {
    if (this.done) return;
    banner('Connection lost. Reconnecting…');
    // The server drops us from the consultation when the socket closes, so the media
    // session is over too: tear it down and rejoin when signaling is back.
    this.wasInCall = this.wasInCall || this.inCall;
    this.inCall = false;
    this.teardownMedia();
    if (this.commitWaiter) this.finishCommit(false, { code: 'connection_lost' }).catch(() => {});
  }

  onHandlerError(err) {
    // A malformed or unexpected message must not break the call; show it quietly.
    if (!this.done) banner(`Problem: ${err.message}`);
  }

  leave() {
    if (this.done) return;
    this.sig.send({ type: 'leave' });
    this.exit('left', 'You left the consultation', 'You can close this page, or go back to your appointments.');
  }

  endForEveryone() {
    if (this.done || this.role !== 'doctor') return;
    this.endedByMe = true;
    this.sig.send({ type: 'end' });
    // `ended` arrives and closes the view; fall back if the socket is gone.
    setTimeout(() => this.exit('ended', 'The consultation has ended', this.endedText('ended_by_doctor')), 3000);
  }

  exit(kind, title, body) {
    if (this.done) return;
    this.done = true;
    banner(null);
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.iceTimer);
    clearTimeout(this.rejoinTimer);
    if (this.commitWaiter) clearTimeout(this.commitWaiter.timer);
    this.commitWaiter = null;
    this.teardownMedia();
    this.sig.close();
    if (this.e2ee) this.e2ee.terminate();
    for (const v of ['local-video', 'waiting-video']) $(v).srcObject = null;
    this.clearTiles();
    this.unbindUi();
    closeDialog();
    if (kind !== 'auth') showMessage(kind, title, body);
    this.onExit(kind);
  }

  // ---------------------------------------------------------------- signaling

  async onMessage(msg) {
    if (this.done) return;
    switch (msg.type) {
      case 'waiting':
        this.you = msg.you;
        this.inCall = false;
        this.showWaiting(msg.doctor_online === true);
        break;
      case 'doctor_presence':
        if (!this.inCall) this.showDoctorPresence(msg.online === true);
        break;
      case 'joined':
      case 'admitted':
        await this.enterCall(msg.you, msg.participants || []);
        break;
      case 'waiting_room':
        this.renderWaitingList(msg.waiting || []);
        break;
      case 'participant_joined':
        await this.onPeerJoined(msg.participant);
        break;
      case 'participant_left':
        await this.onPeerLeft(msg.participant);
        break;
      case 'participant_denied':
        break;
      case 'mls_accepted':
        await this.finishCommit(true, msg);
        break;
      case 'mls_commit':
        await this.onMlsCommit(msg);
        break;
      case 'mls_welcome':
        await this.onWelcome(msg);
        break;
      case 'chat':
        await this.onChat(msg);
        break;
      case 'media_offer':
        await this.onRemoteOffer(msg.sdp);
        break;
      case 'media_answer':
        if (this.pc && this.pc.signalingState === 'have-local-offer') {
          await this.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        }
        break;
      case 'ice_candidate':
        await this.onRemoteCandidate(msg.candidate);
        break;
      case 'denied':
        this.exit('denied', 'The doctor did not admit you', 'Please contact your clinic if you think this is a mistake.');
        break;
      case 'left':
        break;
      case 'ended':
        this.exit('ended', 'The consultation has ended', this.endedText(msg.reason));
        break;
      case 'error':
        if (this.commitWaiter && COMMIT_ERRORS.has(msg.code)) await this.finishCommit(false, msg);
        this.onServerError(msg);
        break;
      default:
        break;
    }
  }

  onServerError(msg) {
    const refusal = REFUSALS[msg.code];
    if (refusal && !this.inCall) {
      this.exit('refused', refusal[0], refusal[1]);
      return;
    }
    if (msg.code === 'media_error') {
      // Peer-to-peer stand-in: both sides offered at once and ours lost; the other
      // side's offer follows and we answer it.
      return;
    }
    if (msg.code === 'consultation_full') {
      banner('The consultation is full: 8 people are in it. Someone has to leave before you can admit another.');
      return;
    }
    if (msg.code === 'stale_commit' || msg.code === 'wrong_group') {
      // The doctor's device starts again from the group's current state.
      return;
    }
    if (msg.code === 'consultation_ended') {
      this.exit('ended', 'The consultation has ended', 'The consultation is over.');
      return;
    }
    banner(`The server refused a request: ${msg.message || msg.code}`);
  }

  send(msg) {
    if (!this.sig.send(msg)) throw new Error('not connected');
  }

  /** The end page's words: the doctor who ended it is not told "the doctor ended it". */
  endedText(reason) {
    if (reason === 'time_window_closed') return 'The appointment time is over.';
    if (this.endedByMe) return 'You ended the consultation for everyone. You can close this page, or go back to your appointments.';
    return 'The doctor ended the consultation. Thank you.';
  }

  // ---------------------------------------------------------------- waiting room

  showWaiting(doctorOnline) {
    banner(this.wasInCall ? 'Reconnected. The doctor will admit you again.' : null);
    $('waiting-video').srcObject = this.media;
    this.showDoctorPresence(doctorOnline);
    showView('waiting');
  }

  /** The waiting room's line about the doctor (from `waiting` and `doctor_presence`). */
  showDoctorPresence(online) {
    const line = $('waiting-doctor');
    line.dataset.online = String(online);
    $('waiting-doctor-text').textContent = online
      ? 'The doctor is online and will let you in shortly.'
      : 'The doctor has not joined yet. You will be let in once they arrive.';
  }

  renderWaitingList(waiting) {
    if (this.role !== 'doctor') return;
    this.waiting = waiting;
    // A warning about someone who is no longer waiting nor here goes with them.
    for (const [k, wv] of this.warnings) {
      if (wv.participant !== undefined && !waiting.some((p) => p.id === wv.participant) && !this.peers.has(wv.participant)) {
        this.warnings.delete(k);
      }
    }
    this.renderWarnings();
    const list = $('waiting-list');
    list.replaceChildren();
    $('waiting-list-empty').hidden = waiting.length > 0;
    for (const p of waiting) {
      const admit = el('button', { type: 'button', class: 'primary', text: 'Admit', 'data-participant': String(p.id) });
      admit.setAttribute('aria-label', `Admit ${p.label}`);
      // Admitting is adding to the group: the server admits whoever the doctor's
      // accepted commit adds (docs/keys.md, "Admitting someone").
      admit.addEventListener('click', () => {
        admit.disabled = true;
        this.keyJob(() => this.addParticipants([p])).finally(() => { admit.disabled = false; });
      });
      const deny = el('button', { type: 'button', text: 'Deny', 'data-participant': String(p.id) });
      deny.setAttribute('aria-label', `Deny ${p.label}`);
      deny.addEventListener('click', () => this.sig.send({ type: 'deny', participant: p.id }));
      list.append(el('li', { 'data-participant': String(p.id) },
        el('span', { text: `${p.label} (${p.role})` }),
        el('span', { class: 'buttons' }, admit, deny)));
    }
    if (waiting.length > 0 && this.inCall) {
      banner(`${waiting.length === 1 ? waiting[0].label + ' is' : waiting.length + ' people are'} waiting to be admitted.`);
    } else if (this.inCall) {
      banner(null);
    }
  }

  // ---------------------------------------------------------------- the call

  async enterCall(you, participants) {
    this.you = you;
    this.inCall = true;
    this.wasInCall = true;
    this.peers.clear();
    for (const p of participants) if (p.id !== you) this.peers.set(p.id, { ...p, joinedAt: Date.now() });
    banner(null);
    this.showCall();
    await this.syncParticipants();
    // The doctor opens a new group; everyone else waits for the doctor's Welcome and
    // sends nothing until then.
    this.applyKeys(await this.e2ee.call('enter', {
      consultation: this.appt.id, role: this.role, samples: this.testMode,
    }));
    if (this.role === 'doctor' && this.peers.size > 0) {
      // Back in a consultation with people in it: add them all in one commit.
      const all = [...this.peers.values()];
      this.keyJob(() => this.addParticipants(all));
    }
    await this.startMedia();
  }

  showCall() {
    $('btn-end').hidden = this.role !== 'doctor';
    $('doctor-panel').hidden = this.role !== 'doctor';
    $('local-video').srcObject = this.media;
    $('invite-result').hidden = true;
    $('invite-error').hidden = true;
    this.updatePeerLabel();
    this.renderRoster();
    this.renderWarnings();
    this.renderIndicator();
    showView('call');
  }

  updatePeerLabel() {
    const labels = [...this.peers.values()].map((p) => p.label);
    $('call-peer').textContent = labels.length ? `With ${labels.join(', ')}` : 'Waiting for the other participant to join';
    const showing = [...this.tiles.values()].some((t) => t.stream.getVideoTracks().length > 0);
    $('remote-placeholder').hidden = this.peers.size > 0 && showing;
    if (this.peers.size === 0) $('remote-placeholder').textContent = 'Waiting for the other participant…';
    for (const [id, t] of this.tiles) t.caption.textContent = this.labelOf(id);
  }

  /** The room, for the worker's per-sender statistics. */
  syncParticipants() {
    return this.e2ee.call('setParticipants', { list: [...this.peers.values()].map(info) });
  }

  async onPeerJoined(p) {
    if (!p || p.id === this.you) return;
    this.peers.set(p.id, { ...p, joinedAt: Date.now() });
    this.updatePeerLabel();
    this.systemChat(`${p.label} joined.`);
    await this.syncParticipants();
    this.renderRoster();
    // Someone the doctor's commit added is in the group already; someone readmitted
    // after a reconnection (or a reload) is added again.
    if (this.role === 'doctor') this.keyJob(() => this.addParticipants([p]));
  }

  async onPeerLeft(id) {
    const p = this.peers.get(id);
    this.peers.delete(id);
    this.updatePeerLabel();
    if (p) this.systemChat(`${p.label} left.`);
    // Their picture and sound go at once, before the SFU's renegotiation arrives.
    this.removeTile(id);
    this.updatePeerLabel();
    await this.syncParticipants();
    this.renderRoster();
    if (p && this.role === 'doctor') this.keyJob(() => this.removeParticipant(p));
  }

  // ---------------------------------------------------------------- keys

  /** Run `fn` after the key jobs before it (the doctor's commits go one at a time). */
  keyJob(fn) {
    const run = this.keyJobs.then(() => (this.done ? null : fn()));
    this.keyJobs = run.catch((err) => this.onHandlerError(err));
    return run.catch(() => {});
  }

  /** Send a commit; resolves on `mls_accepted`, rejects (with `code`) on a refusal. */
  sendCommit(commit) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.finishCommit(false, { code: 'timeout' }).catch(() => {}); }, COMMIT_TIMEOUT_MS);
      this.commitWaiter = { resolve, reject, timer };
      if (!this.sig.send({ type: 'mls_commit', ...commit })) {
        this.finishCommit(false, { code: 'not_connected' }).catch(() => {});
      }
    });
  }

  async finishCommit(accepted, msg) {
    const waiter = this.commitWaiter;
    if (!waiter) return;
    this.commitWaiter = null;
    clearTimeout(waiter.timer);
    let snap = null;
    try {
      snap = await this.e2ee.call(accepted ? 'commitAccepted' : 'commitRefused');
      this.applyKeys(snap);
    } catch (e) {
      waiter.reject(e);
      return;
    }
    if (accepted) {
      this.sendGroupMessages(snap.send);
      waiter.resolve(snap);
    } else {
      waiter.reject(Object.assign(new Error(msg.message || msg.code), { code: msg.code }));
    }
  }

  /** Doctor: add these participants to the group (checks first; docs/keys.md). */
  async addParticipants(list) {
    if (this.role !== 'doctor' || !this.inCall) return;
    for (let round = 0; round < 4; round++) {
      if (this.done || !this.inCall) return;
      const present = [...this.peers.keys()];
      const r = await this.e2ee.call('prepareAdd', { list: list.map(info), present });
      for (const x of r.refused || []) this.keyRefused(x, list);
      for (const x of r.needsAccept || []) this.keyChanged({ ...x, label: this.labelFor(x.principal, list) }, list);
      if (!r.commit) return;
      try {
        await this.sendCommit(r.commit);
      } catch (e) {
        if (e.code === 'stale_commit' || e.code === 'wrong_group') continue;
        if (e.code !== 'consultation_full') banner(`The keys could not be updated: ${e.message}`);
        return;
      }
      if (!r.again) return;
    }
  }

  /** Doctor: remove someone who left from the group. */
  async removeParticipant(p) {
    for (let round = 0; round < 3; round++) {
      if (this.done || !this.inCall) return;
      const r = await this.e2ee.call('prepareRemove', { participant: info(p) });
      if (!r.commit) return;
      try {
        await this.sendCommit(r.commit);
        return;
      } catch (e) {
        if (e.code !== 'stale_commit') return;
      }
    }
  }

  async onMlsCommit(msg) {
    if (!this.inCall) return;
    const snap = await this.e2ee.call('handleCommit', { commit: msg.commit });
    if (snap.refused) {
      // A commit no member made (or one for another group or epoch): the group is
      // unchanged and the call goes on with the keys it has.
      this.keyMessageRefused(snap.refused);
    }
    if (snap.removed) this.systemChat('You were removed from the group of keys. The doctor will add you again.');
    this.applyKeys(snap);
    this.sendGroupMessages(snap.send);
  }

  async onWelcome(msg) {
    if (!this.inCall || this.role === 'doctor') return;
    // The group must be the consultation's doctor's: the core refuses a Welcome made
    // by a device of anyone else.
    const doctor = [...this.peers.values()].find((p) => p.role === 'doctor');
    if (!doctor) {
      this.keyMessageRefused('a Welcome while the doctor is not in the call');
      return;
    }
    const snap = await this.e2ee.call('welcome', { welcome: msg.welcome, owner: doctor.principal });
    if (snap.refused) this.keyMessageRefused(snap.refused);
    this.applyKeys(snap);
    this.sendGroupMessages(snap.send);
  }

  /** Our group messages (the log head after an epoch change) go out as `chat`. */
  sendGroupMessages(list) {
    for (const m of list || []) {
      if (this.sig.send({ type: 'chat', ciphertext: m.ciphertext })) this.echoes.push({ kind: m.kind });
    }
  }

  keyMessageRefused(why) {
    this.setMediaWarn(`A key message could not be verified (${why}).`);
    this.systemChat(`A key change from the server was refused: ${why}. The call goes on with the keys it has.`);
  }

  /** Label of a principal: a participant in the room or the list given, else its role. */
  labelFor(principal, list = []) {
    const p = [...this.peers.values(), ...list, ...this.waiting].find((x) => x.principal === principal);
    if (p) return p.label;
    return principal === this.meInfo.principal ? 'You' : 'A participant';
  }

  keyRefused(x, list) {
    const p = list.find((y) => y.id === x.participant) || {};
    const k = `${p.principal}/${p.device}/refused`;
    this.warnings.set(k, {
      kind: 'refused', participant: x.participant, principal: p.principal, device: p.device,
      text: `${p.label || 'This participant'} was not admitted: their security key could not be checked (${x.error}).`,
    });
    this.renderWarnings();
  }

  keyChanged(x, list = []) {
    const k = `${x.principal}/${x.device}`;
    this.warnings.set(k, {
      kind: 'changed', participant: x.participant, principal: x.principal, device: x.device, key: x.key, code: x.code,
      text: `${x.label}'s security key changed. Compare the code before you continue.`,
      list,
    });
    this.renderWarnings();
  }

  async acceptWarning(k) {
    const wv = this.warnings.get(k);
    if (!wv) return;
    this.warnings.delete(k);
    this.renderWarnings();
    this.applyKeys(await this.e2ee.call('acceptKey', { principal: wv.principal, device: wv.device, key: wv.key }));
    if (this.role === 'doctor' && wv.participant !== undefined) {
      const p = this.waiting.find((x) => x.id === wv.participant) || this.peers.get(wv.participant);
      if (p) this.keyJob(() => this.addParticipants([p]));
    }
  }

  /** The worker's snapshot of the group after a change. */
  applyKeys(snap) {
    if (!snap) return;
    this.keys = snap;
    // Members whose key needs the user's acceptance before keys are shared with them.
    for (const m of snap.roster) {
      const k = `${m.principal}/${m.device}`;
      if ((m.status === 'new_device' || m.status === 'changed') && !this.warnings.has(k)) {
        this.keyChanged({ principal: m.principal, device: m.device, key: m.key, code: m.code, label: this.labelFor(m.principal) });
      }
    }
    this.renderRoster();
    this.renderIndicator();
  }

  /** The participant in the room a group member is. */
  participantOf(m) {
    for (const [id, p] of this.peers) if (p.principal === m.principal && p.device === m.device) return id;
    return null;
  }

  /** The people in the group (from MLS state), their safety codes and Verified ticks;
   * in red: a member not in the room, a participant not in the group after a few
   * seconds, a key that failed its checks or waits for acceptance. */
  renderRoster() {
    const list = $('roster');
    const others = (this.keys.roster || []).filter((m) => !m.self);
    const now = Date.now();
    const stray = [...this.peers.entries()].filter(([, p]) => now - (p.joinedAt || 0) >= ROSTER_GRACE_MS
      && !others.some((m) => m.principal === p.principal && m.device === p.device));
    // Rebuilt only when something shown changes (a button keeps its focus).
    const sig = JSON.stringify([others, [...this.peers.entries()], stray.map(([id]) => id)]);
    if (sig === this.rosterSig && list.isConnected) return;
    this.rosterSig = sig;
    list.replaceChildren();
    for (const m of others) {
      const id = this.participantOf(m);
      const p = id === null ? null : this.peers.get(id);
      const label = p ? `${p.label} (${p.role})` : this.labelFor(m.principal);
      const bad = id === null || !['pinned', 'verified'].includes(m.status);
      const li = el('li', {
        class: bad ? 'mismatch' : '', 'data-principal': m.principal, 'data-device': m.device,
        'data-participant': id === null ? '' : String(id), 'data-status': m.status,
      }, el('span', { class: 'who', text: label }),
      el('span', { class: 'code', text: m.code, 'data-code': m.code.replace(/\s+/g, '') }),
      el('span', { class: 'visually-hidden', text: `Code ${spokenDigits(m.code)}.` }));
      li.querySelector('.code').setAttribute('aria-hidden', 'true');
      if (m.status === 'verified') {
        li.append(el('span', { class: 'verified', text: '✓ Verified', 'data-verified': 'true' }));
      } else if (m.status === 'pinned') {
        const b = el('button', { type: 'button', class: 'verify', text: 'Mark as verified' });
        // The name starts with the words shown, so speech input ("click Mark as verified") finds it.
        b.setAttribute('aria-label', `Mark as verified: ${label}, the code is the same on both screens`);
        b.addEventListener('click', () => this.markVerified(m));
        li.append(b);
      }
      const note = id === null ? 'Not in the room.'
        : m.status === 'failed' ? `Key check failed: ${m.error}`
          : (m.status === 'new_device' || m.status === 'changed') ? 'New security key: not accepted yet.'
            : m.status === 'unchecked' ? 'Checking the security key…' : '';
      if (note) li.append(el('span', { class: 'note', text: note }));
      list.append(li);
    }
    // Participants the group does not have (beyond a few seconds of joining).
    for (const [id, p] of stray) {
      list.append(el('li', { class: 'mismatch', 'data-participant': String(id), 'data-status': 'not_in_group' },
        el('span', { class: 'who', text: `${p.label} (${p.role})` }),
        el('span', { class: 'note', text: 'Has no key in this call.' })));
    }
    const codes = others.filter((m) => m.code);
    const box = $('safety-code');
    let spoken;
    if (codes.length === 0) {
      box.textContent = '—';
      box.dataset.code = '';
      spoken = 'No safety code yet: nobody else is in the call.';
    } else if (codes.length === 1) {
      box.textContent = codes[0].code;
      box.dataset.code = codes[0].code.replace(/\s+/g, '');
      spoken = `Safety code: ${spokenDigits(codes[0].code)}.`;
    } else {
      box.textContent = codes.map((m) => `${this.labelFor(m.principal)}: ${m.code}`).join('\n');
      box.dataset.code = codes.map((m) => m.code.replace(/\s+/g, '')).join(',');
      spoken = `Safety codes. ${codes.map((m) => `${this.labelFor(m.principal)}: ${spokenDigits(m.code)}.`).join(' ')}`;
    }
    // Read out digit by digit: the shown code is hidden from screen readers.
    if ($('safety-code-sr').textContent !== spoken) $('safety-code-sr').textContent = spoken;
    $('safety-help').textContent = codes.length > 1
      ? 'Compare each code aloud with that person. If it is the same on both screens, nobody is listening in: mark it as verified. If one differs, end the call.'
      : 'Compare this code aloud with the other person. If it is the same on both screens, nobody is listening in: mark it as verified. If it differs, end the call.';
  }

  async markVerified(m) {
    this.applyKeys(await this.e2ee.call('markVerified', { principal: m.principal, device: m.device }));
  }

  renderWarnings() {
    const list = $('key-warnings');
    list.replaceChildren();
    for (const [k, wv] of this.warnings) {
      const li = el('li', { class: 'key-warning', 'data-kind': wv.kind, 'data-principal': wv.principal || '', 'data-device': wv.device || '' },
        el('span', { class: 'text', text: wv.text }));
      if (wv.code) li.append(el('span', { class: 'code', text: wv.code, 'data-code': wv.code.replace(/\s+/g, '') }));
      if (wv.kind === 'changed') {
        const b = el('button', { type: 'button', class: 'primary', text: 'The code matches: accept the new key' });
        b.addEventListener('click', () => this.acceptWarning(k).catch((err) => this.onHandlerError(err)));
        li.append(b);
      }
      list.append(li);
    }
    list.hidden = this.warnings.size === 0;
  }

  /** A warning on the badge; a sticky one (a forked log) stays for the whole call. */
  setMediaWarn(text, sticky = false) {
    if (this.mediaWarnSticky && !sticky) return;
    this.mediaWarn = text;
    this.mediaWarnSticky = sticky;
    this.renderIndicator();
  }

  /** Neutral "Waiting for keys" until a group with someone else in it is set up and
   * checked (never green before a key exchange); a warning while keys are withheld or
   * media does not decrypt. A longer sentence for screen readers says what it means. */
  renderIndicator() {
    const badge = $('e2ee-indicator');
    const k = this.keys;
    const others = (k.roster || []).filter((m) => !m.self).length;
    let state;
    let text;
    let spoken;
    if (!k.group || others === 0) {
      state = 'waiting';
      text = 'Waiting for keys';
      spoken = this.peers.size === 0
        ? 'Encryption keys are exchanged when someone else joins. Nothing is sent until then.'
        : 'Setting up the encryption keys with the other participants. Nothing is sent until they are checked.';
    } else if (!k.sharing) {
      state = 'warn';
      text = 'Keys withheld — a security key needs checking';
      spoken = 'Nothing is sent until you check the security key shown under Safety code.';
    } else if (this.mediaWarn) {
      state = 'warn';
      text = `End-to-end encrypted — ${this.mediaWarn}`;
      spoken = 'Warning: see the safety code section.';
    } else {
      state = 'ok';
      text = 'End-to-end encrypted';
      spoken = 'Only the people in this call can see, hear and read it; the clinic\'s server cannot. Compare the safety code to be sure.';
    }
    badge.classList.toggle('warn', state === 'warn');
    badge.classList.toggle('ok', state === 'ok');
    badge.classList.toggle('waiting', state === 'waiting');
    if ($('e2ee-text').textContent !== text) $('e2ee-text').textContent = text;
    // After the visible words, for a screen reader: what the state means.
    const sr = `. ${spoken}`;
    if ($('e2ee-sr').textContent !== sr) $('e2ee-sr').textContent = sr;
    badge.dataset.state = state;
  }

  // ---------------------------------------------------------------- media

  /** A fresh peer connection with our tracks, every sender and receiver transformed. */
  createPc() {
    this.teardownMedia();
    const pc = new RTCPeerConnection({
      iceServers: [],
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
      ...this.e2ee.pcConfig(),
    });
    this.pc = pc;
    for (const track of this.media.getTracks()) {
      const sender = pc.addTrack(track, this.media);
      this.e2ee.attachSender(sender, track.kind);
    }
    for (const t of pc.getTransceivers()) {
      this.e2ee.attachReceiver(t.receiver, t.receiver.track.kind);
      preferVp8(t);
    }
    pc.ontrack = (e) => {
      this.e2ee.attachReceiver(e.receiver, e.track.kind);
      this.addRemoteTrack(e.track, e.streams[0]);
    };
    // No trickle: offers and answers go out once gathering is complete, with every
    // candidate in the SDP (see `localSdp`). A candidate trickled while we are alone
    // in the room would reach nobody.
    pc.onconnectionstatechange = () => this.onConnectionState();
    return pc;
  }

  async startMedia() {
    const pc = this.createPc();
    await pc.setLocalDescription(await pc.createOffer());
    this.send({ type: 'media_offer', sdp: await localSdp(pc) });
  }

  /** The participant a remote stream belongs to: the SFU names streams
   * `confide-<participant id>`. Other streams (the peer-to-peer development mode, or
   * transceivers our own offer created) belong to the one peer when there is one. */
  ownerOf(stream) {
    const m = stream && /^confide-(\d+)$/.exec(stream.id);
    if (m) return Number(m[1]);
    return this.peers.size === 1 ? [...this.peers.keys()][0] : null;
  }

  labelOf(id) {
    const p = this.peers.get(id);
    return p ? `${p.label} (${p.role})` : 'Participant';
  }

  /** The tile of participant `id`, created on first use. */
  tileFor(id) {
    let t = this.tiles.get(id);
    if (t) return t;
    const video = el('video', { autoplay: true, playsInline: true });
    const caption = el('figcaption', { text: this.labelOf(id) });
    const fig = el('figure', { class: 'tile', 'data-participant': String(id) }, video, caption);
    video.setAttribute('aria-label', `Video of ${this.labelOf(id)}`);
    const stream = new MediaStream();
    video.srcObject = stream;
    t = { fig, video, caption, stream };
    this.tiles.set(id, t);
    $('remote-tiles').append(fig);
    this.layoutTiles();
    return t;
  }

  removeTile(id) {
    const t = this.tiles.get(id);
    if (!t) return;
    this.tiles.delete(id);
    t.video.srcObject = null;
    t.fig.remove();
    this.layoutTiles();
  }

  layoutTiles() {
    document.querySelector('.stage').classList.toggle('group', this.tiles.size > 1);
  }

  clearTiles() {
    for (const id of [...this.tiles.keys()]) this.removeTile(id);
  }

  /** Show `track` in its participant's tile unless a track of its kind that is receiving
   * media is shown there already; a track that starts receiving (unmutes) takes over.
   * With an SFU, answered transceivers can carry tracks that never receive anything. */
  addRemoteTrack(track, stream) {
    const show = () => {
      const id = this.ownerOf(stream);
      if (id === null || !this.peers.has(id) || track.readyState !== 'live') return;
      const t = this.tileFor(id);
      for (const old of t.stream.getTracks()) {
        if (old.kind === track.kind && old !== track) t.stream.removeTrack(old);
      }
      if (!t.stream.getTracks().includes(track)) t.stream.addTrack(track);
      t.video.play().catch(() => {});
      this.updatePeerLabel();
    };
    if (!track.muted) {
      show();
    } else {
      const id = this.ownerOf(stream);
      const t = id === null ? null : this.tiles.get(id);
      const current = t && t.stream.getTracks().find((x) => x.kind === track.kind);
      if (id !== null && this.peers.has(id) && (!current || current.muted || current.readyState === 'ended')) show();
    }
    track.addEventListener('unmute', () => {
      if (this.done) return;
      show();
    });
    track.addEventListener('ended', () => {
      for (const t of this.tiles.values()) t.stream.removeTrack(track);
      this.updatePeerLabel();
    });
  }

  async onRemoteOffer(sdp) {
    if (!this.pc || !this.inCall) return;
    let pc = this.pc;
    try {
      // An offer while ours is outstanding rolls ours back (perfect negotiation).
      await pc.setRemoteDescription({ type: 'offer', sdp });
    } catch {
      // An offer this connection cannot take (a peer that rejoined, with a new DTLS
      // identity, in peer-to-peer mode): answer it on a fresh connection.
      pc = this.createPc();
      await pc.setRemoteDescription({ type: 'offer', sdp });
    }
    for (const t of pc.getTransceivers()) {
      this.e2ee.attachReceiver(t.receiver, t.receiver.track.kind);
      preferVp8(t);
    }
    await pc.setLocalDescription(await pc.createAnswer());
    this.send({ type: 'media_answer', sdp: await localSdp(pc) });
  }

  async onRemoteCandidate(candidate) {
    if (!this.pc || !candidate) return;
    // With max-bundle every candidate belongs to the first m-line's transport.
    const init = { candidate, sdpMLineIndex: 0 };
    try {
      await this.pc.addIceCandidate(init);
    } catch {
      /* a candidate for a description we no longer have */
    }
  }

  onConnectionState() {
    const pc = this.pc;
    if (!pc || this.done) return;
    const s = pc.connectionState;
    if (s === 'connected') {
      clearTimeout(this.iceTimer);
      clearTimeout(this.rejoinTimer);
      this.iceTimer = null;
      this.rejoinTimer = null;
      if (this.mediaLost) banner(null);
      this.mediaLost = false;
    } else if (s === 'disconnected' || s === 'failed') {
      this.mediaLost = true;
      banner('Media connection lost. Reconnecting…');
      if (!this.iceTimer) {
        this.iceTimer = setTimeout(() => this.restartIce(), s === 'failed' ? 0 : ICE_GRACE_MS);
      }
      if (!this.rejoinTimer) {
        // ICE could not recover: rejoin from scratch over a fresh signaling connection.
        this.rejoinTimer = setTimeout(() => {
          this.rejoinTimer = null;
          if (this.pc && this.pc.connectionState !== 'connected') this.sig.drop();
        }, REJOIN_AFTER_MS);
      }
    }
  }

  async restartIce() {
    this.iceTimer = null;
    const pc = this.pc;
    if (!pc || pc.connectionState === 'connected' || pc.signalingState !== 'stable') return;
    try {
      await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
      this.send({ type: 'media_offer', sdp: await localSdp(pc) });
    } catch {
      /* the rejoin timer takes over */
    }
  }

  teardownMedia() {
    if (this.pc) {
      this.pc.ontrack = null;
      this.pc.onconnectionstatechange = null;
      this.pc.close();
      this.pc = null;
    }
    this.clearTiles();
  }

  // ---------------------------------------------------------------- guests

  /** Doctor: a single-use invite link for this consultation. The token travels in the
   * URL fragment, which browsers never send to a server, and the guest's page drops it
   * from the address bar once redeemed. */
  async createInvite() {
    const btn = $('invite-create');
    $('invite-error').hidden = true;
    // The name the doctor will see in the waiting room, so a forwarded link does not
    // pass for the person invited.
    const label = $('invite-label').value.trim();
    if (!label) {
      $('invite-error').textContent = 'Enter the guest\'s name first.';
      $('invite-error').hidden = false;
      $('invite-label').focus();
      return;
    }
    btn.disabled = true;
    try {
      const res = await api.createInvite(this.appt.id, label);
      $('invite-link').value = `${location.origin}${location.pathname}#/invite/${res.invite_token}`;
      $('invite-expiry').textContent = `Valid until ${new Date(res.expires_at).toLocaleString()}.`;
      $('invite-result').hidden = false;
      $('invite-link').select();
    } catch (e) {
      $('invite-error').textContent = `The invite could not be created: ${e.message}`;
      $('invite-error').hidden = false;
    } finally {
      btn.disabled = false;
    }
  }

  // ---------------------------------------------------------------- chat

  async sendChat(text) {
    if (!text || !this.inCall) return;
    let sealed;
    try {
      sealed = await this.e2ee.call('sealChat', { text });
    } catch {
      this.systemChat('The message could not be encrypted yet: wait until everyone\'s key is set up and checked.');
      return;
    }
    this.send({ type: 'chat', ciphertext: sealed.ciphertext });
    this.echoes.push({ kind: 'chat', text });
  }

  async onChat(msg) {
    if (msg.from === this.you) {
      // The server's echo of our own group message (MLS does not open it again).
      const mine = this.echoes.shift();
      if (mine && mine.kind === 'chat') this.appendChat('You', mine.text, true);
      return;
    }
    let r;
    try {
      r = await this.e2ee.call('openChat', { ciphertext: msg.ciphertext });
    } catch {
      this.systemChat('A message could not be decrypted.');
      return;
    }
    const p = this.peers.get(msg.from);
    const who = p ? p.label : (r.sender ? this.labelFor(r.sender.principal) : 'Participant');
    if (r.kind === 'chat') {
      this.appendChat(who, r.text, false);
      this.noteIncoming(who);
    }
    if (r.kind === 'checkpoint' && r.splitView) {
      // A forked log: the server showed this member and us different histories.
      const k = `${r.sender.principal}/${r.sender.device}/split`;
      this.warnings.set(k, {
        kind: 'split_view', principal: r.sender.principal, device: r.sender.device,
        text: `The server showed you and ${who} different key histories. Do not trust this call's keys; tell the clinic.`,
      });
      this.renderWarnings();
      this.setMediaWarn(`the server showed you and ${who} different key histories`, true);
    }
  }

  appendChat(who, text, mine) {
    const log = $('chat-log');
    log.append(el('li', { class: mine ? 'mine' : 'theirs', 'data-from': mine ? 'me' : 'peer' },
      el('span', { class: 'from', text: who }),
      el('span', { class: 'text', text })));
    log.scrollTop = log.scrollHeight;
  }

  systemChat(text) {
    const log = $('chat-log');
    log.append(el('li', { class: 'system', text }));
    log.scrollTop = log.scrollHeight;
  }

  // ---------------------------------------------------------------- stats

  async pollStats() {
    if (!this.inCall || !this.e2ee) return;
    let s;
    try { s = await this.e2ee.call('stats'); } catch { return; }
    const prev = this.lastStats;
    this.lastStats = s;
    const ok = s.decrypted.audio + s.decrypted.video;
    const bad = s.failed.audio + s.failed.video;
    if (prev) {
      const newOk = ok - (prev.decrypted.audio + prev.decrypted.video);
      const newBad = bad - (prev.failed.audio + prev.failed.video);
      // Frames that arrive before the sender's key are expected for a moment after
      // joining: warn only when nothing decrypts for two polls in a row.
      this.badPolls = newBad > 0 && newOk === 0 ? (this.badPolls || 0) + 1 : 0;
      if (this.badPolls >= 2) {
        this.setMediaWarn(`cannot decrypt the other side's media (${bad} frames dropped)`);
      } else if (newOk > 0 && this.mediaWarn && !this.mediaWarnSticky) {
        this.setMediaWarn(null);
      }
    }
    // The red "not in the group" entries appear once the grace has passed.
    this.renderRoster();
    $('e2ee-indicator').title = `Frames decrypted: ${ok}; could not be decrypted: ${bad}; withheld: ${s.withheld}`;
  }

  // ---------------------------------------------------------------- controls

  bindUi() {
    this.handlers = {
      mic: () => this.toggle('audio', 'btn-mic', 'Mute microphone', 'Unmute microphone'),
      cam: () => {
        const off = this.toggle('video', 'btn-cam', 'Turn camera off', 'Turn camera on');
        document.querySelector('.stage').classList.toggle('cam-off', off);
      },
      leave: async () => {
        const doctor = this.role === 'doctor';
        const ok = await confirmDialog({
          title: 'Leave the consultation?',
          body: doctor
            ? 'The others stay in the call without you. You can come back while the appointment is open. To close it for everyone, use "End consultation for everyone" instead.'
            : 'You can come back while the appointment is open; the doctor will let you in again.',
          ok: 'Leave the consultation',
          cancel: 'Stay',
        });
        if (ok) this.leave();
      },
      end: async () => {
        const ok = await confirmDialog({
          title: 'End the consultation for everyone?',
          body: 'Everyone is disconnected and the consultation closes. It cannot be opened again.',
          ok: 'End for everyone',
          cancel: 'Cancel',
          danger: true,
        });
        if (ok) this.endForEveryone();
      },
      waitingLeave: () => this.leave(),
      chatToggle: () => this.setChatOpen(!this.chatOpen()),
      chatClose: () => this.setChatOpen(false),
      chatKey: (e) => {
        if (e.key === 'Escape' && this.isPhone() && this.chatOpen()) {
          e.preventDefault();
          this.setChatOpen(false);
        }
      },
      invite: () => this.createInvite().catch((err) => this.onHandlerError(err)),
      copyInvite: () => {
        const input = $('invite-link');
        input.select();
        if (navigator.clipboard) navigator.clipboard.writeText(input.value).catch(() => {});
      },
      chat: (e) => {
        e.preventDefault();
        const input = $('chat-input');
        const text = input.value.trim();
        input.value = '';
        this.sendChat(text).catch((err) => this.onHandlerError(err));
      },
    };
    $('btn-mic').addEventListener('click', this.handlers.mic);
    $('btn-cam').addEventListener('click', this.handlers.cam);
    $('btn-leave').addEventListener('click', this.handlers.leave);
    $('btn-end').addEventListener('click', this.handlers.end);
    $('waiting-leave').addEventListener('click', this.handlers.waitingLeave);
    $('chat-form').addEventListener('submit', this.handlers.chat);
    $('invite-create').addEventListener('click', this.handlers.invite);
    $('invite-copy').addEventListener('click', this.handlers.copyInvite);
    $('chat-toggle').addEventListener('click', this.handlers.chatToggle);
    $('chat-close').addEventListener('click', this.handlers.chatClose);
    $('chat-panel').addEventListener('keydown', this.handlers.chatKey);
    this.setChatOpen(false, { focus: false });
    $('chat-log').replaceChildren();
    $('safety-code').textContent = '—';
    $('safety-code').dataset.code = '';
    $('safety-code-sr').textContent = 'No safety code yet: nobody else is in the call.';
    $('roster').replaceChildren();
    $('key-warnings').replaceChildren();
    $('key-warnings').hidden = true;
    for (const [id, label] of [['btn-mic', 'Mute microphone'], ['btn-cam', 'Turn camera off']]) {
      $(id).setAttribute('aria-pressed', 'false');
      $(id).textContent = label;
    }
    document.querySelector('.stage').classList.remove('cam-off');
  }

  unbindUi() {
    $('btn-mic').removeEventListener('click', this.handlers.mic);
    $('btn-cam').removeEventListener('click', this.handlers.cam);
    $('btn-leave').removeEventListener('click', this.handlers.leave);
    $('btn-end').removeEventListener('click', this.handlers.end);
    $('waiting-leave').removeEventListener('click', this.handlers.waitingLeave);
    $('chat-form').removeEventListener('submit', this.handlers.chat);
    $('invite-create').removeEventListener('click', this.handlers.invite);
    $('invite-copy').removeEventListener('click', this.handlers.copyInvite);
    $('chat-toggle').removeEventListener('click', this.handlers.chatToggle);
    $('chat-close').removeEventListener('click', this.handlers.chatClose);
    $('chat-panel').removeEventListener('keydown', this.handlers.chatKey);
    this.setChatOpen(false, { focus: false });
  }

  // ---------------------------------------------------------------- the chat on phones

  /** Phone-sized screen: the chat is an overlay opened from the controls. */
  isPhone() {
    return window.matchMedia('(max-width: 760px)').matches;
  }

  chatOpen() {
    return $('view-call').classList.contains('chat-open');
  }

  /** Whether a new message would be seen where it lands. */
  chatVisible() {
    return !this.isPhone() || this.chatOpen();
  }

  /** Open or close the phone's chat overlay; opening clears the count of new messages
   * and puts the cursor in the message box, closing gives focus back to the Chat button. */
  setChatOpen(open, { focus = true } = {}) {
    $('view-call').classList.toggle('chat-open', open);
    const toggle = $('chat-toggle');
    toggle.setAttribute('aria-expanded', String(open));
    if (open) {
      this.unread = 0;
      this.renderUnread();
      const log = $('chat-log');
      log.scrollTop = log.scrollHeight;
      if (focus) $('chat-input').focus();
    } else if (focus && this.isPhone()) {
      toggle.focus();
    }
  }

  renderUnread() {
    const badge = $('chat-unread');
    const toggle = $('chat-toggle');
    badge.hidden = this.unread === 0;
    badge.textContent = this.unread === 0 ? '' : String(this.unread);
    toggle.classList.toggle('alert', this.unread > 0);
    toggle.setAttribute('aria-label', this.unread === 0 ? 'Chat' : `Chat, ${this.unread} new ${this.unread === 1 ? 'message' : 'messages'}`);
  }

  /** A message from someone else arrived: counted and announced when the chat is not
   * on screen (a phone with the chat closed). */
  noteIncoming(who) {
    if (this.chatVisible()) return;
    this.unread += 1;
    this.renderUnread();
    $('call-announce').textContent = `New message from ${who}.`;
  }

  /** Mute/unmute our track of `kind`; returns true when now off. Muted tracks still
   * send (silence / black frames), still encrypted. */
  toggle(kind, buttonId, onLabel, offLabel) {
    const tracks = kind === 'audio' ? this.media.getAudioTracks() : this.media.getVideoTracks();
    const off = tracks.some((t) => t.enabled);
    for (const t of tracks) t.enabled = !off;
    const b = $(buttonId);
    b.setAttribute('aria-pressed', String(off));
    b.textContent = off ? offLabel : onLabel;
    return off;
  }

  // ---------------------------------------------------------------- test hooks

  /** Only installed when the page was opened with ?test=1 (app.js). */
  testHooks() {
    return {
      state: () => ({
        mode: this.e2ee && this.e2ee.mode,
        inCall: this.inCall, you: this.you, peers: [...this.peers.keys()],
        safety: Object.fromEntries((this.keys.roster || []).filter((m) => !m.self && this.participantOf(m) !== null)
          .map((m) => [this.participantOf(m), m.code.replace(/\s+/g, '')])),
        done: this.done,
        keys: { group: this.keys.group, epoch: this.keys.epoch, groupId: this.keys.groupId, sharing: this.keys.sharing },
        roster: this.keys.roster,
        warnings: [...this.warnings.values()].map((x) => ({ kind: x.kind, principal: x.principal, device: x.device, text: x.text })),
        device: this.device,
      }),
      benchmark: () => this.e2ee.call('benchmark'),
      sendLogHead: async () => this.sendGroupMessages((await this.e2ee.call('logHead')).send),
      e2eeStats: () => this.e2ee.call('stats'),
      tiles: () => [...this.tiles.entries()].map(([id, t]) => ({
        participant: id,
        label: t.caption.textContent,
        kinds: t.stream.getTracks().filter((x) => x.readyState === 'live').map((x) => x.kind).sort(),
        frames: t.video.getVideoPlaybackQuality ? t.video.getVideoPlaybackQuality().totalVideoFrames : 0,
        width: t.video.videoWidth,
      })),
      dropSignaling: () => this.sig.drop(),
      samples: () => this.e2ee.call('testSamples'),
      inboundStats: async () => {
        if (!this.pc) return null;
        const out = {};
        (await this.pc.getStats()).forEach((r) => {
          if (r.type === 'inbound-rtp') out[r.kind] = { framesDecoded: r.framesDecoded, packetsReceived: r.packetsReceived, bytesReceived: r.bytesReceived };
        });
        return out;
      },
    };
  }
}

/** The local description once ICE gathering is complete (host candidates only, so this
 * takes milliseconds; capped so a stuck gatherer cannot hold the call). */
async function localSdp(pc) {
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      const done = () => { pc.removeEventListener('icegatheringstatechange', check); clearTimeout(t); resolve(); };
      const check = () => { if (pc.iceGatheringState === 'complete') done(); };
      const t = setTimeout(done, 3000);
      pc.addEventListener('icegatheringstatechange', check);
    });
  }
  return pc.localDescription.sdp;
}

function preferVp8(transceiver) {
  if (transceiver.receiver.track.kind !== 'video' || typeof transceiver.setCodecPreferences !== 'function') return;
  const caps = RTCRtpReceiver.getCapabilities && RTCRtpReceiver.getCapabilities('video');
  if (!caps) return;
  // VP8 first: the E2EE clear prefix is defined for VP8 (design.md); keep RTX etc.
  const vp8 = caps.codecs.filter((c) => c.mimeType.toLowerCase() === 'video/vp8');
  const rest = caps.codecs.filter((c) => !['video/vp8', 'video/vp9', 'video/h264', 'video/av1', 'video/h265'].includes(c.mimeType.toLowerCase()));
  if (vp8.length === 0) return;
  try { transceiver.setCodecPreferences([...vp8, ...rest]); } catch { /* keep defaults */ }
}
