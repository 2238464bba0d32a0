// Smoke test of the wasm build of confide-e2ee, in Node.
//
//   node e2ee/wasm/tests/smoke.mjs [pkg dir]    (default: crates/web/static/pkg)
//
// Loads the `wasm-bindgen --target web` output the browser uses, runs a full two-party
// exchange, and checks the fixed vectors in e2ee/tests/data/confide-frame-vectors.json,
// which the native tests check too: browser and native produce the same bytes.
// Prints "wasm smoke: N passed, M failed" and exits non-zero on any failure.

import { copyFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { webcrypto } from "node:crypto";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const pkg = resolve(process.argv[2] ?? join(root, "crates/web/static/pkg"));

// The web target is an ES module with a .js name; Node needs .mjs to load it as one.
const tmp = mkdtempSync(join(tmpdir(), "confide-wasm-smoke-"));
copyFileSync(join(pkg, "confide_e2ee_wasm.js"), join(tmp, "confide_e2ee_wasm.mjs"));
const w = await import(pathToFileURL(join(tmp, "confide_e2ee_wasm.mjs")).href);
rmSync(tmp, { recursive: true, force: true });
w.initSync({ module: readFileSync(join(pkg, "confide_e2ee_wasm_bg.wasm")) });

const vectors = JSON.parse(
  readFileSync(join(root, "e2ee/tests/data/confide-frame-vectors.json"), "utf8"),
);

let passed = 0;
let failed = 0;
function check(name, fn) {
  try {
    fn();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg ?? "assertion failed");
}
const hex = (b) => Buffer.from(b).toString("hex");
const unhex = (s) => new Uint8Array(Buffer.from(s, "hex"));
const eq = (a, b, msg) => assert(hex(a) === hex(b), `${msg ?? "bytes differ"}: ${hex(a)} != ${hex(b)}`);
const seed = () => webcrypto.getRandomValues(new Uint8Array(32));
function throwsWith(prefix, fn, msg) {
  try {
    fn();
  } catch (e) {
    const text = String(e && e.message ? e.message : e);
    assert(text.startsWith(prefix), `${msg ?? "error"}: expected "${prefix}...", got "${text}"`);
    return;
  }
  throw new Error(`${msg ?? "call"} did not throw`);
}

const vp8Key = Uint8Array.from([0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
const vp8Delta = Uint8Array.from([0x31, 0x05, 0x00, 9, 8, 7, 6, 5]);
const opus = Uint8Array.from([0x78, 0xaa, 0xbb, 0xcc]);

// --- A full two-party exchange -------------------------------------------------------
const doctorId = w.Identity.generate(seed());
const patientId = w.Identity.generate(seed());
const doctor = new w.Session(doctorId, "consultation-42", 1n, seed());
const patient = new w.Session(patientId, "consultation-42", 2n, seed());
let d2p;
let p2d;

check("offers are exchanged and accepted", () => {
  const info = w.OfferInfo.parse(doctor.offer());
  eq(info.identityKey, doctorId.publicKey(), "identity in offer");
  assert(info.participantId === 1n, "participant id");
  assert(Buffer.from(info.consultationId).toString() === "consultation-42", "consultation id");
  d2p = doctor.accept(patient.offer());
  p2d = patient.accept(doctor.offer());
  eq(d2p.peerIdentity, patientId.publicKey(), "peer identity");
  assert(p2d.peerParticipantId === 1n, "peer participant id");
});

check("both sides compute the same safety code", () => {
  const a = d2p.safetyCode();
  const b = p2d.safetyCode();
  assert(a === b, `${a} != ${b}`);
  assert(/^\d{5} \d{5} \d{5} \d{5}$/.test(a), `format: ${a}`);
  assert(w.safetyCode(doctorId.publicKey(), patientId.publicKey(), d2p.transcriptHash) === a, "free function");
});

check("a relay swapping the ephemeral key is caught by the signature", () => {
  const forged = patient.offer();
  forged[40] ^= 1; // inside the ephemeral public key
  throwsWith("peer:", () => doctor.accept(forged), "forged offer");
});

check("a relay with its own identity changes the safety code", () => {
  const relayId = w.Identity.generate(seed());
  const relayAsPatient = new w.Session(relayId, "consultation-42", 2n, seed());
  const relayAsDoctor = new w.Session(relayId, "consultation-42", 1n, seed());
  const doctorSide = doctor.accept(relayAsPatient.offer());
  const patientSide = patient.accept(relayAsDoctor.offer());
  assert(doctorSide.safetyCode() !== patientSide.safetyCode(), "codes must differ");
});

const video = new w.FrameEncryptor(w.suiteChaCha20Poly1305(), seed());
const audio = new w.FrameEncryptor(4, seed()); // AES-128-GCM, the RFC interop suite
const fromDoctorVideo = new w.FrameDecryptor();
const fromDoctorAudio = new w.FrameDecryptor();

check("sender keys are sealed to the peer and opened", () => {
  const k1 = p2d.openSenderKey(d2p.sealSenderKey(video, seed()));
  const k2 = p2d.openSenderKey(d2p.sealSenderKey(audio, seed()));
  assert(k1.kid === video.kid && k2.kid === audio.kid, "kid");
  fromDoctorVideo.install(k1);
  fromDoctorAudio.install(k2);
  // Not openable by the sender itself (direction-bound).
  throwsWith("peer:", () => d2p.openSenderKey(d2p.sealSenderKey(video, seed())), "reflected key");
});

check("frames round-trip and keep their clear prefix", () => {
  for (const [codec, frame, prefix, enc, dec] of [
    ["video/VP8", vp8Key, 10, video, fromDoctorVideo],
    ["VP8", vp8Delta, 3, video, fromDoctorVideo],
    ["opus", opus, 1, audio, fromDoctorAudio],
    ["H264", opus, 0, video, fromDoctorVideo],
  ]) {
    const ct = enc.encrypt(codec, frame);
    eq(ct.subarray(0, prefix), frame.subarray(0, prefix), `${codec} clear prefix`);
    assert(hex(ct.subarray(prefix)) !== hex(frame.subarray(prefix)), `${codec} encrypted`);
    eq(dec.decrypt(codec, ct), frame, `${codec} round trip`);
  }
  assert(video.encrypt("opus", new Uint8Array(0)).length === 0, "empty frame passes");
  assert(fromDoctorAudio.decrypt("opus", new Uint8Array(0)).length === 0, "empty frame passes");
});

check("tampered frames (prefix, header, ciphertext, tag) are rejected", () => {
  const ct = video.encrypt("vp8", vp8Key);
  for (const i of [0, 5, 10, 11, 14, ct.length - 1]) {
    const bad = ct.slice();
    bad[i] ^= 0x04;
    throwsWith("peer:", () => fromDoctorVideo.decrypt("vp8", bad), `flip at ${i}`);
  }
  eq(fromDoctorVideo.decrypt("vp8", ct), vp8Key, "original still decrypts");
});

check("a replayed frame is rejected", () => {
  const ct = audio.encrypt("opus", opus);
  fromDoctorAudio.decrypt("opus", ct);
  throwsWith("peer:", () => fromDoctorAudio.decrypt("opus", ct), "replay");
});

check("join ratchet is followed; leave rotation shuts out the old key", () => {
  video.ratchet();
  const ct = video.encrypt("vp8", vp8Key);
  eq(fromDoctorVideo.decrypt("vp8", ct), vp8Key, "receiver follows the ratchet");
  assert(fromDoctorVideo.lastFrameStartedNewKey, "new key signalled (request a keyframe)");
  const oldKeyFrame = video.encrypt("vp8", vp8Key);
  video.rotate(seed());
  fromDoctorVideo.install(p2d.openSenderKey(d2p.sealSenderKey(video, seed())));
  eq(fromDoctorVideo.decrypt("vp8", video.encrypt("vp8", vp8Key)), vp8Key, "new generation");
  throwsWith("peer:", () => fromDoctorVideo.decrypt("vp8", oldKeyFrame), "old generation");
});

check("messages and documents are sealed and opened", () => {
  const text = new TextEncoder().encode("How are you feeling today?");
  const sealed = d2p.sealMessage("chat", text, seed());
  const opened = p2d.openMessage(sealed);
  assert(opened.kind === "chat", "kind");
  eq(opened.plaintext, text, "pairwise chat");
  const bad = sealed.slice();
  bad[bad.length - 3] ^= 1;
  throwsWith("peer:", () => p2d.openMessage(bad), "tampered message");
  const group = video.sealMessage("document", text, seed());
  const key = p2d.openSenderKey(d2p.sealSenderKey(video, seed()));
  eq(key.openMessage(group).plaintext, text, "group message");
  video.ratchet(); // someone joined; existing receivers keep their key
  eq(key.openMessage(video.sealMessage("chat", text, seed())).plaintext, text, "group message after ratchet");
  assert(d2p.sealMessage("chat", new Uint8Array(3), seed()).length === d2p.sealMessage("chat", new Uint8Array(40), seed()).length, "padding");
});

check("misuse is reported as misuse", () => {
  throwsWith("misuse:", () => w.Identity.generate(new Uint8Array(31)), "short seed");
  throwsWith("misuse:", () => w.Identity.generate(new Uint8Array(32)), "zero seed");
  throwsWith("misuse:", () => d2p.sealMessage("memo", new Uint8Array(1), seed()), "bad kind");
  throwsWith("misuse:", () => new w.FrameEncryptor(0x1234, seed()), "unknown suite");
});

// --- Fixed vectors shared with the native tests --------------------------------------
const ex = vectors.exchange;
const a = new w.Session(w.Identity.fromSecret(unhex(ex.a.identity_secret)), ex.consultation, BigInt(ex.a.participant), unhex(ex.a.session_seed));
const bIdentity = w.Identity.fromSecret(unhex(ex.b.identity_secret));
const b = new w.Session(bIdentity, ex.consultation, BigInt(ex.b.participant), unhex(ex.b.session_seed));
let ab;
let ba;

check("vectors: identities, offers, transcript and safety code match native", () => {
  eq(bIdentity.publicKey(), unhex(ex.b.identity_public), "identity public key");
  eq(a.offer(), unhex(ex.a.offer), "offer a");
  eq(b.offer(), unhex(ex.b.offer), "offer b");
  ab = a.accept(b.offer());
  ba = b.accept(a.offer());
  eq(ab.transcriptHash, unhex(ex.transcript_hash), "transcript hash");
  assert(ab.safetyCode() === ex.safety_code && ba.safetyCode() === ex.safety_code, "safety code");
});

check("vectors: sealed chat message matches native", () => {
  const v = vectors.pairwise_chat_a_to_b;
  eq(ab.sealMessage("chat", unhex(v.plaintext), unhex(v.seed)), unhex(v.sealed), "sealed bytes");
  eq(ba.openMessage(unhex(v.sealed)).plaintext, unhex(v.plaintext), "opened");
});

for (const v of vectors.frames) {
  check(`vectors: frame "${v.name}" matches native`, () => {
    const enc = new w.FrameEncryptor(v.suite, unhex(v.sender_seed));
    for (let i = 0; i < v.ratchets; i++) enc.ratchet();
    for (let i = 0; i < v.skip; i++) enc.encrypt(v.codec, unhex(v.filler));
    assert(enc.kid === BigInt(v.kid), `kid ${enc.kid} != ${v.kid}`);
    eq(ab.sealSenderKey(enc, unhex(v.seal_seed)), unhex(v.sealed_sender_key_a_to_b), "sealed sender key");
    eq(enc.encrypt(v.codec, unhex(v.plaintext)), unhex(v.ciphertext), "ciphertext");
    const dec = new w.FrameDecryptor();
    dec.install(ba.openSenderKey(unhex(v.sealed_sender_key_a_to_b)));
    eq(dec.decrypt(v.codec, unhex(v.ciphertext)), unhex(v.plaintext), "decrypted");
  });
}

console.log(`wasm smoke: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
