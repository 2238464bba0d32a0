// The end-to-end test's own helpers, checked against published vectors: if TOTP or the
// SFrame/VP8 parsing were wrong, the browser test could pass or fail for the wrong reason.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { base32Decode, totp, parseSframeHeader, vp8Descriptor, checkPayload } from './lib.mjs';

test('TOTP matches RFC 6238 appendix B (SHA-1, last 6 digits)', () => {
  // Secret "12345678901234567890" in base32.
  const secret = 'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ';
  assert.equal(base32Decode(secret).toString(), '12345678901234567890');
  assert.equal(totp(secret, 59), '287082');
  assert.equal(totp(secret, 1111111109), '081804');
  assert.equal(totp(secret, 1234567890), '005924');
  assert.equal(totp(secret, 2000000000), '279037');
});

test('SFrame header parsing follows RFC 9605 section 4.3', () => {
  // KID 0, CTR 0: one byte 0x00.
  const h0 = parseSframeHeader(Buffer.concat([Buffer.from([0x00]), Buffer.alloc(16)]), 0);
  assert.deepEqual(h0, { kid: 0n, ctr: 0n, len: 1 });
  // KID 0x1234 (X=1, K=1: 2 bytes), CTR 0x05 (Y=0, C=5) -> config 0b1001_0101.
  const h1 = parseSframeHeader(Buffer.concat([Buffer.from([0x95, 0x12, 0x34]), Buffer.alloc(16)]), 0);
  assert.deepEqual(h1, { kid: 0x1234n, ctr: 5n, len: 3 });
  // KID 3 (X=0), CTR 0x0102 (Y=1, C=1: 2 bytes) -> 0b0011_1001.
  const h2 = parseSframeHeader(Buffer.concat([Buffer.from([0x39, 0x01, 0x02]), Buffer.alloc(16)]), 0);
  assert.deepEqual(h2, { kid: 3n, ctr: 0x102n, len: 3 });
  // Too short for the announced fields or for a tag: not a header.
  assert.equal(parseSframeHeader(Buffer.from([0xff, 1, 2]), 0), null);
  assert.equal(parseSframeHeader(Buffer.from([0x00, 1, 2, 3]), 0), null);
});

test('VP8 payload descriptor: frame start and offset (RFC 7741)', () => {
  // X=1, S=1, PID=0; I=1 with a 15-bit picture id (M=1): 1 + 1 + 2 bytes.
  assert.deepEqual(vp8Descriptor(Buffer.from([0x90, 0x80, 0x81, 0x23, 0xaa])), { start: true, offset: 4 });
  // Continuation packet (S=0).
  assert.deepEqual(vp8Descriptor(Buffer.from([0x80, 0x80, 0x05, 0xaa])), { start: false, offset: 3 });
  // No extension: one byte.
  assert.deepEqual(vp8Descriptor(Buffer.from([0x10, 0xaa])), { start: true, offset: 1 });
});

test('checkPayload finds the SFrame header after the clear prefix', () => {
  const tag = Buffer.alloc(16, 0xee);
  // Opus: TOC byte, header (KID 1, CTR 2: 0b0001_0010), ciphertext, tag.
  assert.equal(checkPayload('audio', Buffer.concat([Buffer.from([0x78, 0x12, 9, 9]), tag])).ok, true);
  assert.equal(checkPayload('audio', Buffer.from([0x78, 0xff])).ok, false);
  // VP8 keyframe (P bit 0): descriptor 0x10, 10 clear bytes, header, tag.
  const key = Buffer.concat([Buffer.from([0x10]), Buffer.from([0x50, 0x02, 0, 0x9d, 1, 0x2a, 0x80, 2, 0xe0, 1]), Buffer.from([0x12]), tag]);
  const k = checkPayload('video', key);
  assert.equal(k.ok, true);
  assert.equal(k.keyframe, true);
  assert.equal(k.kid, 1n);
  // VP8 delta frame (P bit 1): 3 clear bytes.
  const delta = Buffer.concat([Buffer.from([0x10]), Buffer.from([0x51, 0x02, 0]), Buffer.from([0x12]), tag]);
  assert.equal(checkPayload('video', delta).ok, true);
  // A plaintext VP8 keyframe has no valid header where the prefix ends... or an
  // implausible one: a 10-byte prefix followed by 0xff announces 8+8 header bytes.
  const plain = Buffer.concat([Buffer.from([0x10]), Buffer.from([0x50, 0x02, 0, 0x9d, 1, 0x2a, 0x80, 2, 0xe0, 1]), Buffer.from([0xff, 1, 2])]);
  assert.equal(checkPayload('video', plain).ok, false);
});
