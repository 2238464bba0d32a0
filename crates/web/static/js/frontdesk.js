// Front desk: the clinic's day and week schedule, booking, moving and cancelling
// appointments, finding and creating patients, and who waits in which waiting room.

import { $, showView, el } from './ui.js';

export async function showFrontDesk(ctx) {
  $('frontdesk-body').replaceChildren(el('p', { text: 'Loading…' }));
  showView('frontdesk');
}
