// Smoke test of the wasm build of confide-mls + confide-e2ee, in Node.
//
//   node e2ee/wasm/tests/smoke.mjs [pkg dir]    (default: crates/web/static/pkg)
//
// Loads the `wasm-bindgen --target web` output the browser uses and runs the key layer
// of docs/keys.md end to end with three devices: device credentials and their saved
// state, KeyPackages, the doctor's group, Add and Welcome, frames both ways under the
// MLS exporter keys, chat and checkpoints as application messages, a late joiner, a
// Remove, pins and safety codes, and the refusals a malicious server runs into (a
// KeyPackage claiming someone else's key, a Welcome for another consultation or from
// another principal, a commit from a device outside the group).
// Prints "wasm smoke: N passed, M failed" and exits non-zero on any failure.
//
// The round-1 vectors (pairwise offers, sealed sender keys) no longer apply: that API
// is gone from the module. The frame layout they pinned (clear prefix, SFrame header)
// is checked here on group frames, and group frame keys are checked by the native
// tests of confide-e2ee (group_media) and confide-mls.

import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const pkg = resolve(process.argv[2] ?? join(root, "crates/web/static/pkg"));

// The web target is ES modules with .js names (the glue and its snippets); Node loads
// them as such from a copy with a package.json that says so.
const tmp = mkdtempSync(join(tmpdir(), "confide-wasm-smoke-"));
cpSync(pkg, tmp, { recursive: true });
writeFileSync(join(tmp, "package.json"), '{"type": "module"}');
const w = await import(pathToFileURL(join(tmp, "confide_e2ee_wasm.js")).href);
rmSync(tmp, { recursive: true, force: true });
w.initSync({ module: readFileSync(join(pkg, "confide_e2ee_wasm_bg.wasm")) });

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
const b64 = (b) => Buffer.from(b).toString("base64");
const unb64 = (s) => new Uint8Array(Buffer.from(s, "base64"));
const eq = (a, b, msg) => assert(hex(a) === hex(b), `${msg ?? "bytes differ"}: ${hex(a)} != ${hex(b)}`);
function throwsWith(prefix, fn, msg) {
  try {
    fn();
  } catch (e) {
    const text = String(e && e.message ? e.message : e);
    assert(text.startsWith(prefix), `${msg ?? "error"}: expected "${prefix}...", got "${text}"`);
    return text;
  }
  throw new Error(`${msg ?? "call"} did not throw`);
}
const indexOf = (hay, needle) => Buffer.from(hay).indexOf(Buffer.from(needle));

const CONSULTATION = "42";
const SUITE = w.suiteChaCha20Poly1305();
const vp8Key = Uint8Array.from([0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
const vp8Delta = Uint8Array.from([0x31, 0x05, 0x00, 9, 8, 7, 6, 5]);
const opus = Uint8Array.from([0x78, 0xaa, 0xbb, 0xcc]);

// What the key directory would hand out for `device`: one of its KeyPackages, parsed
// by the device that adds it.
const claim = (adder, joiner) => w.KeyPackage.parse(adder, unb64(joiner.keyPackages(1)[0]));

let doctor;
let patient;
let guest;
let dg; // the doctor's group
let pg; // the patient's group
let gg; // the guest's group

check("devices are made, saved and restored with the same credential", () => {
  doctor = w.Device.generate("account:1");
  const p0 = w.Device.generate("account:2");
  assert(/^[0-9a-f]{32}$/.test(p0.deviceId), `device id ${p0.deviceId}`);
  assert(p0.principal === "account:2" && p0.signatureKey.length === 32, "principal and key");
  // A KeyPackage published before a restart must open after it: its private key is
  // in the exported state.
  const published = p0.lastResortKeyPackage();
  const [secret, state, id] = [p0.secretKey(), p0.exportState(), p0.deviceId];
  assert(secret.length === 32 && state.length > 32, "secret and state");
  p0.free();
  patient = w.Device.restore("account:2", id, secret, state);
  assert(patient.deviceId === id, "same device id");
  const kp = w.KeyPackage.parse(doctor, unb64(published));
  eq(kp.signatureKey, patient.signatureKey, "restored key matches the published KeyPackage");
  assert(kp.principal === "account:2" && kp.deviceId === id, "KeyPackage names the device");
  dg = w.Group.create(doctor, CONSULTATION);
  const c = dg.add(doctor, [kp]);
  assert(c.welcome && c.welcome.length > 0, "a Welcome");
  assert(dg.confirmCommit(doctor) === 1, "epoch 1");
  pg = w.Group.join(patient, CONSULTATION, c.welcome, "account:1");
  assert(pg.epoch === 1 && pg.owner === dg.ownLeaf && !pg.isOwner && dg.isOwner, "joined");
  throwsWith("misuse:", () => w.Device.restore("account:2", id, secret, state.subarray(0, state.length - 1)), "truncated state");
});

check("the group id names the consultation; the roster is the MLS state", () => {
  const gid = Buffer.from(dg.groupId).toString();
  assert(gid.startsWith(w.groupIdPrefix(CONSULTATION)) && gid.startsWith("confide/c/42/"), gid);
  eq(pg.groupId, dg.groupId, "same group");
  const roster = JSON.parse(pg.roster());
  assert(roster.length === 2, "two members");
  assert(roster[0].principal === "account:1" && roster[1].principal === "account:2", "principals");
  assert(roster[1].device === patient.deviceId && roster[1].signatureKey === b64(patient.signatureKey), "member");
  const owner = JSON.parse(pg.ownerMember());
  assert(owner.device === doctor.deviceId && owner.leaf === dg.ownLeaf, "owner");
});

let dEnc;
let pEnc;
let dDec;
let pDec;

check("frames go both ways under the epoch's keys and keep their clear prefix", () => {
  dEnc = new w.GroupFrameEncryptor(SUITE, dg.epochSecret(doctor), dg.ownLeaf);
  pEnc = new w.GroupFrameEncryptor(SUITE, pg.epochSecret(patient), pg.ownLeaf);
  // KID = (leaf << 4) | (epoch & 15), RFC 9605 section 5.2 with E = 4.
  assert(dEnc.kid === ((dg.ownLeaf << 4) | 1) && pEnc.kid === ((pg.ownLeaf << 4) | 1), "KIDs");
  dDec = new w.GroupFrameDecryptor(SUITE);
  dDec.install(dg.epochSecret(doctor));
  pDec = new w.GroupFrameDecryptor(SUITE);
  pDec.install(pg.epochSecret(patient));
  for (const [codec, frame, prefix] of [["video/VP8", vp8Key, 10], ["VP8", vp8Delta, 3], ["opus", opus, 1], ["H264", opus, 0]]) {
    const ct = dEnc.encrypt(codec, frame);
    eq(ct.subarray(0, prefix), frame.subarray(0, prefix), `${codec} clear prefix`);
    assert(hex(ct.subarray(prefix)) !== hex(frame.subarray(prefix)), `${codec} encrypted`);
    eq(pDec.decrypt(codec, ct), frame, `${codec} doctor -> patient`);
    assert(pDec.lastSender === dg.ownLeaf && pDec.lastEpoch === 1, "sender and epoch");
    eq(dDec.decrypt(codec, pEnc.encrypt(codec, frame)), frame, `${codec} patient -> doctor`);
  }
  assert(dEnc.encrypt("opus", new Uint8Array(0)).length === 0, "empty frame passes");
  assert(pDec.decrypt("opus", new Uint8Array(0)).length === 0, "empty frame passes");
});

check("tampered and replayed frames are refused", () => {
  const ct = dEnc.encrypt("vp8", vp8Key);
  for (const i of [0, 5, 10, 11, ct.length - 1]) {
    const bad = ct.slice();
    bad[i] ^= 0x04;
    throwsWith("peer:", () => pDec.decrypt("vp8", bad), `flip at ${i}`);
  }
  eq(pDec.decrypt("vp8", ct), vp8Key, "original decrypts");
  throwsWith("peer:", () => pDec.decrypt("vp8", ct), "replay");
});

check("chat is an MLS application message; the server's echo is not processed", () => {
  const text = "How is the rash today?";
  const wire = dg.seal(doctor, w.chatPayload(text));
  assert(indexOf(wire, Buffer.from("rash")) < 0, "ciphertext only");
  const inc = pg.handleMessage(patient, wire);
  const info = JSON.parse(inc.info);
  assert(info.kind === "application" && info.sender.principal === "account:1", inc.info);
  const p = JSON.parse(w.parsePayload(inc.payload));
  assert(p.type === "chat" && p.text === text, JSON.stringify(p));
  throwsWith("peer:", () => pg.handleMessage(patient, wire), "delivered twice");
  throwsWith("peer:", () => dg.handleMessage(doctor, wire), "our own message");
  throwsWith("peer:", () => w.parsePayload(new TextEncoder().encode('{"type":"memo"}')), "unknown payload");
});

check("a checkpoint travels in the group", () => {
  const head = JSON.stringify({ size: 12, root: b64(new Uint8Array(32).fill(7)) });
  const inc = dg.handleMessage(doctor, pg.seal(patient, w.checkpointPayload(head)));
  const p = JSON.parse(w.parsePayload(inc.payload));
  assert(p.type === "checkpoint" && p.size === 12 && p.root === JSON.parse(head).root, JSON.stringify(p));
  throwsWith("misuse:", () => w.checkpointPayload('{"size":1}'), "bad head");
});

check("a guest joins later: new epoch for everyone, no earlier epoch for the guest", () => {
  guest = w.Device.generate("guest:9");
  const oldFrame = pEnc.encrypt("opus", opus);
  const c = dg.add(doctor, [claim(doctor, guest)]);
  assert(dg.confirmCommit(doctor) === 2, "epoch 2");
  const info = JSON.parse(pg.handleMessage(patient, c.commit).info);
  assert(info.kind === "new_epoch" && info.epoch === 2, JSON.stringify(info));
  assert(info.committer.leaf === dg.ownLeaf && info.added.length === 1 && info.added[0].principal === "guest:9", "added");
  gg = w.Group.join(guest, CONSULTATION, c.welcome, "account:1");
  assert(JSON.parse(gg.roster()).length === 3, "three members");
  for (const [g, d, enc, dec] of [[dg, doctor, dEnc, dDec], [pg, patient, pEnc, pDec]]) {
    enc.setEpoch(g.epochSecret(d), g.ownLeaf);
    dec.install(g.epochSecret(d));
  }
  const gDec = new w.GroupFrameDecryptor(SUITE);
  gDec.install(gg.epochSecret(guest));
  throwsWith("peer:", () => gDec.decrypt("opus", oldFrame), "a frame of epoch 1");
  eq(gDec.decrypt("opus", pEnc.encrypt("opus", opus)), opus, "patient -> guest");
  assert(gDec.lastFrameStartedNewKey, "first frame of a key: ask for a keyframe");
  eq(pDec.decrypt("opus", oldFrame), opus, "a frame of the previous epoch still opens for a member");
  assert(Array.from(pDec.epochs()).join() === "1,2", `epochs ${pDec.epochs()}`);
});

check("the guest is removed: it cannot open what follows", () => {
  const gDec = new w.GroupFrameDecryptor(SUITE);
  gDec.install(gg.epochSecret(guest));
  const c = dg.remove(doctor, [gg.ownLeaf]);
  assert(!c.welcome, "no Welcome for a Remove");
  dg.confirmCommit(doctor);
  const info = JSON.parse(pg.handleMessage(patient, c.commit).info);
  assert(info.kind === "new_epoch" && info.removed[0].principal === "guest:9", JSON.stringify(info));
  assert(JSON.parse(gg.handleMessage(guest, c.commit).info).kind === "removed", "the guest sees it was removed");
  dEnc.setEpoch(dg.epochSecret(doctor), dg.ownLeaf);
  pDec.install(pg.epochSecret(patient));
  const ct = dEnc.encrypt("opus", opus);
  eq(pDec.decrypt("opus", ct), opus, "the patient opens");
  throwsWith("peer:", () => gDec.decrypt("opus", ct), "the removed guest does not");
  assert(JSON.parse(dg.roster()).length === 2, "roster back to two");
});

check("only the doctor's device adds or removes", () => {
  const other = w.Device.generate("account:3");
  throwsWith("misuse:", () => pg.add(patient, [claim(patient, other)]), "a patient's add");
  throwsWith("misuse:", () => pg.remove(patient, [dg.ownLeaf]), "a patient's remove");
  throwsWith("misuse:", () => dg.remove(doctor, [dg.ownLeaf]), "removing ourselves");
});

check("a self-update moves the epoch; a refused commit is discarded", () => {
  const c = pg.selfUpdate(patient);
  const epoch = pg.confirmCommit(patient);
  const info = JSON.parse(dg.handleMessage(doctor, c.commit).info);
  assert(info.kind === "new_epoch" && info.epoch === epoch && info.added.length === 0, JSON.stringify(info));
  dg.selfUpdate(doctor);
  dg.discardCommit(doctor);
  throwsWith("misuse:", () => dg.confirmCommit(doctor), "nothing pending");
});

check("both ends show the same safety code; it changes with the key", () => {
  const a = doctor.safetyCode(patient.principal, patient.deviceId, patient.signatureKey);
  const b = patient.safetyCode(doctor.principal, doctor.deviceId, doctor.signatureKey);
  assert(a === b, `${a} != ${b}`);
  assert(/^\d{5}( \d{5}){5}$/.test(a), `format: ${a}`);
  assert(w.pairCode(doctor.principal, doctor.deviceId, doctor.signatureKey, patient.principal, patient.deviceId, patient.signatureKey) === a, "pairCode");
  const impostor = w.Device.restore("account:2", patient.deviceId, new Uint8Array(32).fill(5), new Uint8Array(0));
  assert(doctor.safetyCode(impostor.principal, impostor.deviceId, impostor.signatureKey) !== a, "another key, another code");
});

check("pins: first contact, pinned, verified, then a changed key and a new device", () => {
  let pins = new w.PinStore();
  const p = [patient.principal, patient.deviceId];
  assert(pins.check(...p, patient.signatureKey) === "first_contact", "first contact");
  pins.pin(...p, patient.signatureKey);
  assert(pins.check(...p, patient.signatureKey) === "pinned", "pinned");
  pins.markVerified(...p, patient.signatureKey);
  pins = w.PinStore.fromJson(pins.toJson());
  assert(pins.isVerified(...p, patient.signatureKey) && pins.check(...p, patient.signatureKey) === "verified", "verified survives saving");
  assert(pins.check(...p, new Uint8Array(32).fill(9)) === "changed", "changed key");
  const second = w.Device.generate("account:2");
  assert(pins.check(second.principal, second.deviceId, second.signatureKey) === "new_device", "new device");
  pins.pin(...p, new Uint8Array(32).fill(9));
  assert(!pins.isVerified(...p, new Uint8Array(32).fill(9)), "accepting a change clears verification");
  throwsWith("misuse:", () => w.PinStore.fromJson("{not json"), "corrupt store");
  throwsWith("misuse:", () => pins.check("account:2", "XYZ", patient.signatureKey), "bad device id");
});

check("a KeyPackage claiming the patient's key without the patient's secret is refused", () => {
  // What a server holding only public data can make: the patient's credential (name)
  // under a key of its own, with the patient's public key written in afterwards.
  const ghost = w.Device.restore("account:2", patient.deviceId, new Uint8Array(32).fill(3), new Uint8Array(0));
  const kp = Buffer.from(unb64(ghost.keyPackages(1)[0]));
  const at = kp.indexOf(Buffer.from(ghost.signatureKey));
  assert(at > 0, "the ghost's key is in its KeyPackage");
  Buffer.from(patient.signatureKey).copy(kp, at);
  throwsWith("peer:", () => w.KeyPackage.parse(doctor, kp), "forged KeyPackage");
  throwsWith("peer:", () => w.KeyPackage.parse(doctor, new Uint8Array([0, 1, 0, 5, 1, 2])), "garbage");
});

check("Welcomes for another consultation or from another principal are refused", () => {
  const late = w.Device.generate("account:4");
  const g = w.Group.create(doctor, "43");
  const c = g.add(doctor, [claim(doctor, late)]);
  throwsWith("peer:", () => w.Group.join(late, CONSULTATION, c.welcome, "account:1"), "another consultation");
  const impostor = w.Device.generate("account:66");
  const g2 = w.Group.create(impostor, CONSULTATION);
  const c2 = g2.add(impostor, [claim(impostor, late)]);
  throwsWith("peer:", () => w.Group.join(late, CONSULTATION, c2.welcome, "account:1"), "not the doctor");
  throwsWith("peer:", () => w.Group.join(late, CONSULTATION, new Uint8Array([0, 1, 0, 3]), "account:1"), "garbage");
});

check("a commit from a device outside the group changes nothing", () => {
  const ghost = w.Device.generate("account:66");
  const fake = w.Group.create(ghost, CONSULTATION);
  const c = fake.add(ghost, [claim(ghost, w.Device.generate("account:67"))]);
  const before = dg.epoch;
  throwsWith("peer:", () => dg.handleMessage(doctor, c.commit), "ghost commit");
  throwsWith("peer:", () => pg.handleMessage(patient, c.commit), "ghost commit");
  assert(dg.epoch === before, "epoch unchanged");
  // Frames keep flowing between the real members; the ghost's keys open none.
  const gDec = new w.GroupFrameDecryptor(SUITE);
  fake.confirmCommit(ghost);
  gDec.install(fake.epochSecret(ghost));
  throwsWith("peer:", () => gDec.decrypt("opus", dEnc.encrypt("opus", opus)), "the ghost opens nothing");
});

check("a log verifier key that does not parse is refused", () => {
  throwsWith("peer:", () => new w.LogView("not a key", undefined), "bad verifier key");
});

check("misuse is reported as misuse", () => {
  throwsWith("misuse:", () => w.Device.generate("doctor"), "bad principal");
  throwsWith("misuse:", () => w.Group.create(doctor, "a/b"), "bad consultation");
  throwsWith("misuse:", () => new w.GroupFrameEncryptor(0x1234, dg.epochSecret(doctor), 0), "unknown suite");
  throwsWith("misuse:", () => doctor.keyPackages(0), "zero KeyPackages");
});

console.log(`wasm smoke: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
