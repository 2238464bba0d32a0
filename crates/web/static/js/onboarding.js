// Account activation from a single-use link: set a password, enrol the second
// factor (QR code), save recovery codes.

import { $, showView, el } from './ui.js';

export async function showActivation(ctx, activationToken) {
  $('activate-body').replaceChildren(el('p', { text: 'Loading…' }));
  showView('activate');
}
