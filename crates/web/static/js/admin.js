// Administration: accounts, sessions, the audit trail, break-glass and settings.

import { $, showView, el } from './ui.js';
import { renderAccountAdmin } from './account.js';

export async function showAdmin(ctx, tab) {
  $('admin-body').replaceChildren(el('p', { text: 'Loading…' }));
  showView('admin');
  if (!tab || tab === 'accounts') await renderAccountAdmin($('admin-body'), ctx);
}
