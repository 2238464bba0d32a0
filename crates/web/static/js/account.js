// The person's own account: change password, change the second factor, recovery
// codes. Also the accounts panel of administration (renderAccountAdmin).

import { $, showView, el } from './ui.js';

export async function showAccount(ctx) {
  $('account-body').replaceChildren(el('p', { text: 'Loading…' }));
  showView('account');
}

/** The accounts panel of administration (list, filter, create, disable, reset). */
export async function renderAccountAdmin(container, ctx) {
  container.replaceChildren(el('p', { text: 'Loading accounts…' }));
}
