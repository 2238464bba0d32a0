// The browser client's pure helpers (static/js/ui.js), in Node: the words the
// appointment list and the call show (durations, "Now" / "In 10 min", the safety code
// read out digit by digit).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDuration, timing, spokenDigits } from '../static/js/ui.js';

test('durations read as minutes and hours', () => {
  assert.equal(formatDuration(1800), '30 min');
  assert.equal(formatDuration(300), '5 min');
  assert.equal(formatDuration(3600), '1 h');
  assert.equal(formatDuration(5400), '1 h 30 min');
  assert.equal(formatDuration(0), '1 min');
});

test('an appointment is now, soon, later or past', () => {
  const start = 1_800_000_000;
  const half = 1800;
  assert.deepEqual(timing(start, half, start - 3 * 3600), { state: 'later', text: '' });
  assert.deepEqual(timing(start, half, start - 3600), { state: 'soon', text: 'In 60 min' });
  assert.deepEqual(timing(start, half, start - 599), { state: 'soon', text: 'In 10 min' });
  assert.deepEqual(timing(start, half, start - 1), { state: 'soon', text: 'In 1 min' });
  assert.deepEqual(timing(start, half, start), { state: 'now', text: 'Now' });
  assert.deepEqual(timing(start, half, start + half - 1), { state: 'now', text: 'Now' });
  assert.deepEqual(timing(start, half, start + half), { state: 'past', text: 'Ended' });
});

test('a safety code is read out one digit at a time, group by group', () => {
  assert.equal(spokenDigits('12345 67890'), '1 2 3 4 5, 6 7 8 9 0');
  assert.equal(spokenDigits(' 00123  45678 '), '0 0 1 2 3, 4 5 6 7 8');
});
