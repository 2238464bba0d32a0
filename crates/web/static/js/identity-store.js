// This device's key-layer record, kept in IndexedDB, one per principal.
//
// A record holds the MLS device credential (the 32-byte Ed25519 secret and the device
// id), the MLS state blob the core exports (KeyPackage private keys: without them a
// Welcome made for a KeyPackage published earlier cannot be opened), the pins of peer
// keys with the verified pairs, and the key-transparency log key and newest head this
// device accepted. Everything but the principal and the device id is stored encrypted
// under a non-extractable AES-GCM CryptoKey that lives in the same record: script can
// use that key but never read it, and a copy of the database's files alone reveals no
// secret. Clearing site data makes a new device (a new key: peers see a key change, as
// they should).
//
// Used by the E2EE worker only; the page never sees what is inside.

const DB_NAME = 'confide-e2ee';
const STORE = 'identity';
const VERSION = 2;

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error || new Error('IndexedDB unavailable'));
  });
}

function tx(db, mode, fn) {
  return new Promise((resolve, reject) => {
    const t = db.transaction(STORE, mode);
    const store = t.objectStore(STORE);
    let result;
    const req = fn(store);
    if (req) req.onsuccess = () => { result = req.result; };
    t.oncomplete = () => resolve(result);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error || new Error('IndexedDB transaction aborted'));
  });
}

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

/**
 * The stored device of one principal. `open(principal)` loads it (or `null` fields for a
 * new one); `save(contents)` seals and writes it. `contents`: {device, secret
 * (Uint8Array), state (Uint8Array), pins (JSON text), logKey, logHead}.
 */
export class DeviceStore {
  constructor(principal) {
    this.principal = principal;
    this.wrapKey = null;
    this.persistent = true;
  }

  /** Loads the record; resolves to its contents or null. Records of the round-1
   * pairwise scheme (v1) are deleted: nothing reads them any more. */
  async load() {
    let db = null;
    try {
      db = await openDb();
      const record = await tx(db, 'readonly', (s) => s.get(this.principal));
      const keys = await tx(db, 'readonly', (s) => s.getAllKeys());
      const stale = [];
      for (const k of keys) {
        if (k === this.principal) continue;
        const r = await tx(db, 'readonly', (s) => s.get(k));
        if (!r || r.v !== VERSION) stale.push(k);
      }
      if (stale.length) await tx(db, 'readwrite', (s) => { for (const k of stale) s.delete(k); });
      if (!record || record.v !== VERSION) return null;
      this.wrapKey = record.wrapKey;
      const plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: record.iv }, record.wrapKey, record.sealed);
      const bytes = new Uint8Array(plain);
      const c = JSON.parse(new TextDecoder().decode(bytes));
      bytes.fill(0);
      return {
        device: record.device,
        secret: B64.dec(c.secret),
        state: B64.dec(c.state || ''),
        pins: c.pins || '',
        logKey: c.logKey || '',
        logHead: c.logHead || '',
      };
    } catch {
      // No IndexedDB (private mode in some browsers) or an unreadable record: a device
      // for this page only. Its registration is logged like any other.
      this.persistent = !!db;
      return null;
    } finally {
      if (db) db.close();
    }
  }

  async save(c) {
    if (!this.persistent) return;
    let db = null;
    try {
      if (!this.wrapKey) {
        this.wrapKey = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
      }
      const iv = new Uint8Array(12);
      crypto.getRandomValues(iv);
      const plain = new TextEncoder().encode(JSON.stringify({
        secret: B64.enc(c.secret),
        state: B64.enc(c.state),
        pins: c.pins,
        logKey: c.logKey,
        logHead: c.logHead,
      }));
      const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, this.wrapKey, plain);
      plain.fill(0);
      db = await openDb();
      const record = { v: VERSION, principal: this.principal, device: c.device, wrapKey: this.wrapKey, iv, sealed };
      await tx(db, 'readwrite', (s) => s.put(record, this.principal));
    } finally {
      if (db) db.close();
    }
  }
}
