// One consultation: signaling, the waiting room, the media connection, E2EE keys,
// chat, and reconnection.
//
// Media: every client sends `media_offer` once admitted and answers any `media_offer`
// the server sends (the SFU renegotiates when tracks come and go; the peer-to-peer
// stand-in forwards the other side's offer). Every sender and receiver gets an
// encoded-frame transform before media flows (e2ee.js); there is no unencrypted path.
//
// Group consultations: the SFU sends each other participant's tracks under the stream id
// `confide-<participant id>`; each participant gets a tile of its own (video and sound),
// removed when they leave. The doctor can invite guests (interpreter, relative, second
// clinician) with a single-use link; they wait until admitted like the patient.
//
// Keys (design.md "E2EE model"): on entering the call we send our signed key offer to
// every admitted peer; a newcomer gets it on `participant_joined`. Whoever receives an
// offer derives the pairwise keys and answers with its sender key sealed under them.

import { api } from './api.js';
import { E2ee } from './e2ee.js';
import { Signaling } from './signaling.js';
import { $, showView, showMessage, banner, el, groupDigits } from './ui.js';

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
};

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
    this.peers = new Map();      // participant id -> {role, label}
    this.safety = new Map();     // participant id -> safety code text
    this.inCall = false;
    this.done = false;
    this.pendingChat = [];       // our own messages awaiting the server's echo
    this.tiles = new Map();      // participant id -> {fig, video, stream}
    this.timers = [];
    this.lastStats = null;
    this.iceTimer = null;
    this.rejoinTimer = null;
    this.wasInCall = false;
    this.queue = Promise.resolve();
    this.bindUi();
  }

  // ---------------------------------------------------------------- lifecycle

  async start() {
    try {
      this.e2ee = new E2ee();
      await this.e2ee.call('init', { account: this.meInfo.label + '#' + this.role });
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
    this.sig.send({ type: 'join', consultation: this.appt.id });
  }

  onDown() {
    if (this.done) return;
    banner('Connection lost. Reconnecting…');
    // The server drops us from the consultation when the socket closes, so the media
    // session is over too: tear it down and rejoin when signaling is back.
    this.wasInCall = this.wasInCall || this.inCall;
    this.inCall = false;
    this.teardownMedia();
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
    this.sig.send({ type: 'end' });
    // `ended` arrives and closes the view; fall back if the socket is gone.
    setTimeout(() => this.exit('ended', 'The consultation has ended', 'You ended the consultation for everyone.'), 3000);
  }

  exit(kind, title, body) {
    if (this.done) return;
    this.done = true;
    banner(null);
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.iceTimer);
    clearTimeout(this.rejoinTimer);
    this.teardownMedia();
    this.sig.close();
    if (this.e2ee) this.e2ee.terminate();
    for (const v of ['local-video', 'waiting-video']) $(v).srcObject = null;
    this.clearTiles();
    this.unbindUi();
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
        this.showWaiting();
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
      case 'e2ee':
        await this.onE2ee(msg.from, msg.blob);
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
        this.exit('ended', 'The consultation has ended',
          msg.reason === 'time_window_closed' ? 'The appointment time is over.' : 'The doctor ended the consultation. Thank you.');
        break;
      case 'error':
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
    if (msg.code === 'consultation_ended') {
      this.exit('ended', 'The consultation has ended', 'The consultation is over.');
      return;
    }
    banner(`The server refused a request: ${msg.message || msg.code}`);
  }

  send(msg) {
    if (!this.sig.send(msg)) throw new Error('not connected');
  }

  // ---------------------------------------------------------------- waiting room

  showWaiting() {
    banner(this.wasInCall ? 'Reconnected. The doctor will admit you again.' : null);
    $('waiting-video').srcObject = this.media;
    showView('waiting');
  }

  renderWaitingList(waiting) {
    if (this.role !== 'doctor') return;
    const list = $('waiting-list');
    list.replaceChildren();
    $('waiting-list-empty').hidden = waiting.length > 0;
    for (const p of waiting) {
      const admit = el('button', { type: 'button', class: 'primary', text: 'Admit', 'data-participant': String(p.id) });
      admit.setAttribute('aria-label', `Admit ${p.label}`);
      admit.addEventListener('click', () => this.sig.send({ type: 'admit', participant: p.id }));
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
    this.safety.clear();
    this.offeredTo = new Set();  // peers that have our key offer of this session
    for (const p of participants) if (p.id !== you) this.peers.set(p.id, p);
    banner(null);
    this.showCall();

    const { offer } = await this.e2ee.call('start', {
      consultation: this.appt.id, participant: you, samples: this.testMode,
    });
    // Our key offer to everyone already here (they answer with their sender keys).
    if (this.peers.size > 0) {
      this.send({ type: 'e2ee', blob: offer });
      for (const id of this.peers.keys()) this.offeredTo.add(id);
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
    this.renderSafety();
    this.setE2eeIndicator('ok');
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

  async onPeerJoined(p) {
    if (!p || p.id === this.you) return;
    this.peers.set(p.id, p);
    this.updatePeerLabel();
    this.systemChat(`${p.label} joined.`);
    const { send } = await this.e2ee.call('peerJoined', { participant: p.id });
    for (const m of send) this.sig.send({ type: 'e2ee', to: m.to, blob: m.blob });
    await this.sendOfferTo(p.id);
  }

  async sendOfferTo(id) {
    if (this.offeredTo.has(id)) return;
    const { offer } = await this.e2ee.call('offer');
    this.send({ type: 'e2ee', to: id, blob: offer });
    this.offeredTo.add(id);
  }

  async onPeerLeft(id) {
    const p = this.peers.get(id);
    this.peers.delete(id);
    if (this.offeredTo) this.offeredTo.delete(id);
    this.safety.delete(id);
    this.renderSafety();
    this.updatePeerLabel();
    if (p) this.systemChat(`${p.label} left.`);
    // Their picture and sound go at once, before the SFU's renegotiation arrives.
    this.removeTile(id);
    this.updatePeerLabel();
    const { send } = await this.e2ee.call('peerLeft', { participant: id });
    for (const m of send) this.sig.send({ type: 'e2ee', to: m.to, blob: m.blob });
  }

  async onE2ee(from, blob) {
    if (!this.inCall) return;
    let res;
    try {
      res = await this.e2ee.call('receive', { from, blob });
    } catch (e) {
      // A forged or garbled key message: drop it, keep the call.
      this.setE2eeIndicator('warn', `A key message could not be verified (${e.message}).`);
      return;
    }
    for (const m of res.send || []) this.sig.send({ type: 'e2ee', to: m.to, blob: m.blob });
    if (res.safety) {
      this.safety.set(res.safety.peer, res.safety.code);
      this.renderSafety();
      // Whoever sent us an offer needs ours too, whatever order the messages came in.
      await this.sendOfferTo(from);
    }
  }

  renderSafety() {
    const codes = [...this.safety.entries()];
    const box = $('safety-code');
    if (codes.length === 0) {
      box.textContent = '—';
      box.dataset.code = '';
    } else if (codes.length === 1) {
      box.textContent = groupDigits(codes[0][1]);
      box.dataset.code = String(codes[0][1]).replace(/\s+/g, '');
    } else {
      box.textContent = codes.map(([id, c]) => `${(this.peers.get(id) || {}).label || id}: ${groupDigits(c)}`).join('\n');
      box.dataset.code = codes.map(([, c]) => String(c).replace(/\s+/g, '')).join(',');
    }
    $('safety-help').textContent = codes.length > 1
      ? 'Compare each code aloud with that person. If it is the same on both screens, nobody is listening in. If one differs, end the call.'
      : 'Compare this code aloud with the other person. If it is the same on both screens, nobody is listening in. If it differs, end the call.';
  }

  setE2eeIndicator(state, detail) {
    const badge = $('e2ee-indicator');
    badge.classList.toggle('warn', state === 'warn');
    $('e2ee-text').textContent = state === 'warn'
      ? `End-to-end encrypted — ${detail || 'problem decrypting'}`
      : 'End-to-end encrypted';
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
    btn.disabled = true;
    $('invite-error').hidden = true;
    try {
      const res = await api.createInvite(this.appt.id);
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
      this.systemChat('The message could not be encrypted yet: wait until the other participant has joined.');
      return;
    }
    this.pendingChat.push(text);
    this.send({ type: 'chat', ciphertext: sealed.ciphertext });
  }

  async onChat(msg) {
    if (msg.from === this.you) {
      const text = this.pendingChat.shift();
      if (text !== undefined) this.appendChat('You', text, true);
      return;
    }
    try {
      const { text } = await this.e2ee.call('openChat', { from: msg.from, ciphertext: msg.ciphertext });
      const p = this.peers.get(msg.from);
      this.appendChat(p ? p.label : 'Participant', text, false);
    } catch {
      this.systemChat('A message could not be decrypted.');
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
        this.setE2eeIndicator('warn', `cannot decrypt the other side's media (${bad} frames dropped)`);
      } else if (newOk > 0) {
        this.setE2eeIndicator('ok');
      }
    }
    $('e2ee-indicator').title = `Frames decrypted: ${ok}; could not be decrypted: ${bad}`;
  }

  // ---------------------------------------------------------------- controls

  bindUi() {
    this.handlers = {
      mic: () => this.toggle('audio', 'btn-mic', 'Mute microphone', 'Unmute microphone'),
      cam: () => {
        const off = this.toggle('video', 'btn-cam', 'Turn camera off', 'Turn camera on');
        document.querySelector('.stage').classList.toggle('cam-off', off);
      },
      leave: () => this.leave(),
      end: () => {
        if (window.confirm('End the consultation for everyone?')) this.endForEveryone();
      },
      waitingLeave: () => this.leave(),
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
    $('chat-log').replaceChildren();
    $('safety-code').textContent = '—';
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
        safety: Object.fromEntries(this.safety), done: this.done,
      }),
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
