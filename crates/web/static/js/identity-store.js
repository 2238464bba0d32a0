// The device identity key, kept in IndexedDB.
//
// The Ed25519 identity key is used by the wasm core, so its 32 secret bytes have to
// reach wasm memory when a consultation starts. At rest they are stored encrypted under
// a non-extractable AES-GCM CryptoKey that lives in the same IndexedDB record: script
// on the page can use that key but can never read it, and a copy of the database's
// files alone does not reveal the identity. One identity per account per browser
// profile; clearing site data makes a new one (and changes the safety code, as it should).

const DB_NAME = 'confide-e2ee';
const STORE = 'identity';

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

async function makeRecord() {
  const wrapKey = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
  const secret = new Uint8Array(32);
  crypto.getRandomValues(secret);
  const iv = new Uint8Array(12);
  crypto.getRandomValues(iv);
  const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, wrapKey, secret);
  return { record: { v: 1, wrapKey, iv, sealed }, secret };
}

async function openRecord(record) {
  const plain = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: record.iv }, record.wrapKey, record.sealed);
  return new Uint8Array(plain);
}

/**
 * Load (or create and store) the identity of `account` and return it as a wasm
 * `Identity`. `w` is the wasm module (see e2ee-wasm.js).
 */
export async function loadIdentity(w, account) {
  const key = String(account || 'default');
  let secret = null;
  let db = null;
  try {
    db = await openDb();
    const record = await tx(db, 'readonly', (s) => s.get(key));
    if (record && record.v === 1) {
      try { secret = await openRecord(record); } catch { secret = null; }
    }
    if (!secret) {
      const made = await makeRecord();
      await tx(db, 'readwrite', (s) => s.put(made.record, key));
      secret = made.secret;
    }
  } catch {
    // No IndexedDB (private mode in some browsers): an identity for this page only.
    secret = new Uint8Array(32);
    crypto.getRandomValues(secret);
  } finally {
    if (db) db.close();
  }
  try {
    return w.Identity.fromSecret(secret);
  } finally {
    secret.fill(0);
  }
}
