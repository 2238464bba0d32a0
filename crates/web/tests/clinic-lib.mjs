// Helpers shared by the front desk and administration browser tests: logging in
// through the page or the API with a TOTP code the server has not seen yet, REST calls
// made from inside a page (the server's certificate is self-signed), and leaving the
// current TOTP step unused for the next test file.

import { rest, unusedTotp, waitFor } from './lib.mjs';

export { rest };

export const BASE = process.env.CONFIDE_BASE_URL;

const STEP_MS = 30_000;
let lastStep = -1;

/** A TOTP code from a step this process has not used yet (remembered for `leaveStep`). */
export async function freshCode(secret) {
  return code(secret);
}

async function code(secret) {
  const c = await unusedTotp(secret);
  lastStep = Math.max(lastStep, Math.floor(Date.now() / STEP_MS));
  return c;
}

/**
 * Wait until the step of the last code this process used is over: the next test file
 * runs in another process, shares the demo staff and admin, and the server takes each
 * step's code once.
 */
export async function leaveStep() {
  if (lastStep < 0) return;
  const wait = (lastStep + 1) * STEP_MS - Date.now() + 500;
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}

/**
 * Log in through the page's form. A code refused because another test file used its
 * step a moment ago is retried with the next step's code.
 */
export async function loginPage(page, account, { query = '' } = {}) {
  await page.goto(`${BASE}/${query}#/login`);
  await page.getByLabel('Username').fill(account.username);
  await page.getByLabel('Password', { exact: true }).fill(account.password);
  await page.getByRole('button', { name: 'Log in' }).click();
  for (let attempt = 0; ; attempt++) {
    if (account.totp_secret) {
      const field = page.getByLabel('Authentication code');
      await field.waitFor({ state: 'visible', timeout: 15000 });
      await field.fill(await code(account.totp_secret));
      await page.getByRole('button', { name: 'Log in' }).click();
    }
    const outcome = await waitFor(async () => {
      const v = await page.evaluate(() => document.body.dataset.view);
      if (!['login', 'loading'].includes(v)) return 'in';
      if (await page.locator('#login-error').isVisible()) return 'refused';
      return null;
    }, { timeout: 15000, what: `${account.username} logged in` });
    if (outcome === 'in') return;
    if (!account.totp_secret || attempt >= 2) {
      throw new Error(`login of ${account.username} refused: ${await page.locator('#login-error').innerText()}`);
    }
  }
}

/** A session token for `account`, logged in through the API from `page`. */
export async function restLogin(page, account) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const body = { username: account.username, password: account.password };
    if (account.totp_secret) body.totp = await code(account.totp_secret);
    const r = await rest(page, 'POST', '/api/login', body, null);
    if (r.status === 200 && r.json.token) return r.json.token;
    if (!account.totp_secret || r.status !== 401) throw new Error(`login ${account.username}: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  }
  throw new Error(`login ${account.username}: every code refused`);
}

/**
 * Finish an account's activation through the API (the link's token): set the password
 * and, for clinicians, enrol an authenticator. Returns {username, password, totp_secret}.
 */
export async function activate(page, tokenFromLink, username, password) {
  const r = await rest(page, 'POST', '/api/activation/complete', { token: tokenFromLink, new_password: password }, null);
  if (r.status !== 200) throw new Error(`activation of ${username}: HTTP ${r.status} ${JSON.stringify(r.json)}`);
  if (!r.json.mfa_enrollment_required) return { username, password, totp_secret: null };
  const enrol = r.json.enrollment_token;
  const e = await rest(page, 'POST', '/api/totp/enroll', {}, enrol);
  if (e.status !== 200) throw new Error(`TOTP enrolment of ${username}: HTTP ${e.status} ${JSON.stringify(e.json)}`);
  const secret = e.json.secret;
  const c = await rest(page, 'POST', '/api/totp/confirm', { code: await code(secret) }, enrol);
  if (c.status !== 200) throw new Error(`TOTP confirmation of ${username}: HTTP ${c.status} ${JSON.stringify(c.json)}`);
  return { username, password, totp_secret: secret };
}
