// Page side of end-to-end encryption: capability check, the worker that holds every
// key, attaching encoded-frame transforms to senders and receivers, and the REST calls
// the worker's key layer asks for (the session token stays on the page).
//
// A browser that can do neither RTCRtpScriptTransform nor createEncodedStreams cannot
// encrypt frames end to end; such a browser is refused (see `e2eeSupport`), never
// allowed into a call without it.

/** Which encoded-transform API this browser has: 'script', 'streams' or null. */
export function e2eeSupport() {
  if (typeof window === 'undefined' || !window.isSecureContext) return null;
  if (typeof WebAssembly !== 'object' || typeof Worker !== 'function') return null;
  if (!window.crypto || !window.crypto.subtle || typeof indexedDB === 'undefined') return null;
  if (typeof RTCPeerConnection !== 'function') return null;
  if (typeof window.RTCRtpScriptTransform === 'function') return 'script';
  if (typeof RTCRtpSender !== 'undefined' && RTCRtpSender.prototype &&
      typeof RTCRtpSender.prototype.createEncodedStreams === 'function') return 'streams';
  return null;
}

import { keyLayerRequest } from './api.js';

export class E2ee {
  constructor() {
    this.mode = e2eeSupport();
    if (!this.mode) throw new Error('this browser cannot encrypt media end to end');
    this.worker = new Worker(new URL('./e2ee-worker.js', import.meta.url), { type: 'module', name: 'confide-e2ee' });
    this.nextId = 1;
    this.pending = new Map();
    this.worker.onmessage = (e) => {
      if (e.data && e.data.rpc) {
        this.onRpc(e.data);
        return;
      }
      const { id, ok, result, error } = e.data || {};
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      if (ok) p.resolve(result); else p.reject(new Error(error));
    };
    this.worker.onerror = (e) => {
      const err = new Error(`E2EE worker failed: ${e.message || 'error'}`);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
  }

  async onRpc({ rpc, method, path, body, text }) {
    try {
      const result = await keyLayerRequest(method, path, body, text);
      this.worker.postMessage({ rpcReply: rpc, ok: true, result });
    } catch (e) {
      this.worker.postMessage({ rpcReply: rpc, ok: false, error: e.message, status: e.status || 0, code: e.code || '' });
    }
  }

  call(op, args) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, op, args });
    });
  }

  /** RTCPeerConnection options this mode needs. */
  pcConfig() {
    return this.mode === 'streams' ? { encodedInsertableStreams: true } : {};
  }

  /** Encrypt everything `sender` sends. Must be called before media flows. */
  attachSender(sender, kind) {
    this.attach(sender, 'send', kind);
  }

  /** Decrypt everything `receiver` receives. */
  attachReceiver(receiver, kind) {
    this.attach(receiver, 'recv', kind);
  }

  attach(senderOrReceiver, side, kind) {
    if (senderOrReceiver.__confideE2ee) return;
    senderOrReceiver.__confideE2ee = true;
    if (this.mode === 'script') {
      senderOrReceiver.transform = new RTCRtpScriptTransform(this.worker, { side, kind });
    } else {
      const { readable, writable } = senderOrReceiver.createEncodedStreams();
      this.worker.postMessage({ op: 'streams', side, kind, readable, writable }, [readable, writable]);
    }
  }

  terminate() {
    this.worker.terminate();
    for (const p of this.pending.values()) p.reject(new Error('E2EE worker stopped'));
    this.pending.clear();
  }
}
