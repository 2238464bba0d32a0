// The account lifecycle in the browser: an admin creates a doctor and passes on the
// activation link; the doctor opens it, chooses a password, scans the QR code the page
// rendered (this test decodes that image and computes the code from it), saves the
// recovery codes, then logs in with the authenticator and later with a recovery code
// (which works once), changes the password (the other session ends), and follows an
// admin's password reset. Every page is scanned for accessibility and photographed at
// desktop and phone size (target/browser/clinic-*.png).

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';
import jsQR from 'jsqr';
import { PNG } from 'pngjs';
import { CHROMIUM_ARGS, demoAccounts, loginAs, screenshots, unusedTotp, waitFor } from './lib.mjs';

const BASE = process.env.CONFIDE_BASE_URL;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let browser;
let accounts;

async function freshPage() {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  return ctx.newPage();
}

const view = (page) => page.evaluate(() => document.body.dataset.view);

/**
 * Log in through the form. The demo admin is shared with the other clinic test files,
 * which run just before in another process: if its code of this 30 s step was used
 * there, the server refuses it as a replay, and the next step's code is tried.
 */
async function login(page, account) {
  for (let attempt = 0; ; attempt++) {
    try {
      await loginAs(page, BASE, account);
      return;
    } catch (e) {
      const err = await page.locator('#login-error').textContent().catch(() => '');
      if (attempt > 0 || !/not accepted/.test(err || '')) throw e;
    }
  }
}

async function logout(page) {
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.locator('#view-login').waitFor({ state: 'visible' });
}

/** Password, then "Use a recovery code instead" and the code. */
async function loginWithRecoveryCode(page, username, password, code, { shoot = null } = {}) {
  // A fresh login page (the same hash again would not reload it).
  await page.goto('about:blank');
  await page.goto(`${BASE}/#/login`);
  const form = page.locator('#login-form');
  await form.getByLabel('Username').fill(username);
  await form.getByLabel('Password', { exact: true }).fill(password);
  await form.getByRole('button', { name: 'Log in' }).click();
  await form.getByLabel('Authentication code').waitFor({ state: 'visible' });
  await form.getByRole('button', { name: 'Use a recovery code instead' }).click();
  await form.getByLabel('Recovery code').fill(code);
  if (shoot) await screenshots(page, shoot);
  await form.getByRole('button', { name: 'Log in' }).click();
}

/** Decode the QR code as the page drew it: a screenshot of the image element. */
async function decodeQr(locator) {
  await locator.evaluate((img) => (img.complete ? null : new Promise((r) => { img.onload = r; })));
  const png = PNG.sync.read(await locator.screenshot());
  const found = jsQR(new Uint8ClampedArray(png.data), png.width, png.height);
  assert.ok(found, 'the QR code in the page decodes');
  return found.data;
}

describe('clinic accounts: create, activate, log in, change password, reset', { timeout: 420_000 }, () => {
  before(async () => {
    assert.ok(process.env.CONFIDE_DEMO_JSON, 'CONFIDE_DEMO_JSON must name the demo data file');
    accounts = demoAccounts(process.env.CONFIDE_DEMO_JSON);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  });

  after(async () => {
    if (browser) await browser.close();
  });

  test('an admin creates a doctor, who activates, logs in two ways and changes the password', async () => {
    const suffix = Date.now().toString(36);
    const username = `dr.${suffix}`;
    const password = 'quiet harbour lantern';
    const newPassword = 'slow river, bright stones';

    // ---- the admin creates the account and gets the link to pass on
    const admin = await freshPage();
    await login(admin, accounts.admin);
    await admin.goto(`${BASE}/#/admin/accounts`);
    const form = admin.locator('#create-account-form');
    await form.waitFor({ state: 'visible' });
    await screenshots(admin, 'clinic-admin-accounts');
    await form.getByLabel('Role').selectOption('doctor');
    await form.getByLabel('Username').fill(username);
    await form.getByLabel('Full name').fill('Dr. Browser Test');
    await form.getByLabel('Contact (optional)').fill('browser@clinic.example');
    await form.getByRole('button', { name: 'Create account' }).click();
    const linkInput = admin.locator('#activation-result').getByLabel('Activation link');
    await linkInput.waitFor({ state: 'visible' });
    const link = await linkInput.inputValue();
    const token = link.split('#/activate/')[1];
    assert.ok(link.startsWith(`${BASE}/#/activate/`) && token.length >= 40, link);
    const row = admin.locator(`tr[data-username="${username}"]`);
    await waitFor(async () => (await row.textContent()).includes('Waiting for activation'), { what: 'the pending row' });
    await screenshots(admin, 'clinic-admin-account-created');

    // ---- the doctor opens the link: the token leaves the address bar at once
    const doc = await freshPage();
    await doc.goto(link);
    await doc.locator('#activate-form').waitFor({ state: 'visible' });
    assert.ok(!doc.url().includes(token), `token still in ${doc.url()}`);
    const act = doc.locator('#view-activate');
    assert.equal(await act.getByLabel('Username').inputValue(), username);
    // The rules are shown and checked as the doctor types.
    const pw = act.getByLabel('New password');
    await pw.fill('short');
    assert.equal(await act.locator('.rule').first().getAttribute('data-ok'), 'false');
    await pw.fill('password1');
    await act.getByLabel('Type it again').fill('password1');
    await screenshots(doc, 'clinic-activate-password');
    // A common password passes the rules the page can check, and the server refuses it.
    await doc.getByRole('button', { name: 'Set password' }).click();
    await waitFor(async () => /too common/.test(await doc.locator('#activate-form [role=alert]').textContent()),
      { what: 'the common-password refusal' });
    await pw.fill(password);
    await act.getByLabel('Type it again').fill(password);
    assert.equal(await act.locator('.rule[data-ok="false"]').count(), 0, 'every rule met');
    await act.getByRole('button', { name: 'Set password' }).click();

    // ---- the QR code: decoded from the image the page shows, the code computed from it
    const qr = doc.locator('#enrol-qr');
    await qr.waitFor({ state: 'visible' });
    await screenshots(doc, 'clinic-activate-qr');
    const url = new URL(await decodeQr(qr));
    assert.equal(url.protocol, 'otpauth:');
    assert.ok(decodeURIComponent(url.pathname).endsWith(`:${username}`), url.href);
    const secret = url.searchParams.get('secret');
    assert.equal(await doc.locator('#enrol-key').getAttribute('data-secret'), secret, 'the typed-key alternative matches');
    assert.equal((await doc.locator('#enrol-key').textContent()).replace(/\s+/g, ''), secret);
    await act.getByLabel('6-digit code from the app').fill(await unusedTotp(secret));
    await act.getByRole('button', { name: 'Confirm' }).click();

    // ---- recovery codes: shown once, downloadable, "I saved them" before going on
    const codeList = doc.locator('.recovery-codes code');
    await codeList.first().waitFor({ state: 'visible' });
    const codes = await codeList.allTextContents();
    assert.equal(codes.length, 10);
    await screenshots(doc, 'clinic-activate-recovery');
    const [download] = await Promise.all([
      doc.waitForEvent('download'),
      doc.getByRole('button', { name: 'Download as a text file' }).click(),
    ]);
    const saved = readFileSync(await download.path(), 'utf8');
    for (const c of codes) assert.ok(saved.includes(c), `${c} in the download`);
    const go = doc.getByRole('button', { name: 'Continue to Confide' });
    assert.equal(await go.isDisabled(), true, 'not before "I saved them"');
    await doc.getByLabel('I saved my recovery codes somewhere safe').check();
    await go.click();
    await doc.locator('#view-appointments').waitFor({ state: 'visible' });

    // ---- later: password and authenticator code
    await logout(doc);
    await loginAs(doc, BASE, { username, password, totp_secret: secret });
    assert.equal(await view(doc), 'appointments');

    // ---- later still: a recovery code instead of the phone, once
    await logout(doc);
    await loginWithRecoveryCode(doc, username, password, codes[0], { shoot: 'clinic-login-recovery' });
    await doc.locator('#view-appointments').waitFor({ state: 'visible' });
    assert.match(await doc.locator('#banner').textContent(), /9 codes are left/);
    await logout(doc);
    await loginWithRecoveryCode(doc, username, password, codes[0]);
    await waitFor(async () => /recovery code was not accepted/.test(await doc.locator('#login-error').textContent()),
      { what: 'the used code refused' });
    assert.equal(await view(doc), 'login');

    // ---- two sessions; changing the password on one ends the other
    const other = await freshPage();
    await loginWithRecoveryCode(other, username, password, codes[1]);
    await other.locator('#view-appointments').waitFor({ state: 'visible' });
    await loginWithRecoveryCode(doc, username, password, codes[2]);
    await doc.locator('#view-appointments').waitFor({ state: 'visible' });
    await doc.getByRole('link', { name: 'Your account' }).click();
    await doc.locator('#password-form').waitFor({ state: 'visible' });
    assert.equal(await doc.locator('#account-codes-left').textContent(), '7');
    await screenshots(doc, 'clinic-account');
    const pf = doc.locator('#password-form');
    await pf.getByLabel('Current password').fill(password);
    await pf.getByLabel('New password').fill(newPassword);
    await pf.getByLabel('Type it again').fill(newPassword);
    await pf.getByRole('button', { name: 'Change password' }).click();
    await waitFor(async () => /1 other session was logged out/.test(await doc.locator('#password-changed').textContent()),
      { what: 'the change confirmed' });
    await screenshots(doc, 'clinic-account-password-changed');
    await other.goto(`${BASE}/#/account`);
    await other.locator('#view-login').waitFor({ state: 'visible', timeout: 15000 });
    assert.equal(await view(doc), 'account', 'this session goes on');

    // Changing the authenticator asks for the password again, then shows a new QR code.
    await doc.getByRole('button', { name: 'Change authenticator app' }).click();
    await doc.locator('#second-factor-form').getByLabel('Your password').fill(newPassword);
    await screenshots(doc, 'clinic-account-second-factor');
    await doc.locator('#second-factor-form').getByRole('button', { name: 'Continue' }).click();
    const newQr = doc.locator('#enrol-qr');
    await newQr.waitFor({ state: 'visible' });
    const changed = new URL(await decodeQr(newQr)).searchParams.get('secret');
    assert.notEqual(changed, secret, 'a new secret');
    await screenshots(doc, 'clinic-account-new-qr');
    await doc.getByRole('button', { name: 'Cancel' }).click();

    // The old password is gone, the new one works.
    await logout(doc);
    await doc.locator('#login-form').getByLabel('Username').fill(username);
    await doc.locator('#login-form').getByLabel('Password', { exact: true }).fill(password);
    await doc.locator('#login-form').getByRole('button', { name: 'Log in' }).click();
    await waitFor(async () => /not correct/.test(await doc.locator('#login-error').textContent()),
      { what: 'the old password refused' });
    await loginWithRecoveryCode(doc, username, newPassword, codes[3]);
    await doc.locator('#view-appointments').waitFor({ state: 'visible' });

    // ---- the admin resets the password; the doctor follows the new link
    // The list as it is now (the page is still on the accounts panel: reload it).
    await admin.reload();
    await admin.locator(`tr[data-username="${username}"]`).waitFor();
    assert.match(await admin.locator(`tr[data-username="${username}"]`).textContent(), /Active/);
    await admin.getByRole('button', { name: `Reset password: ${username}` }).click();
    await admin.locator('.confirm').getByRole('button', { name: 'Reset password' }).click();
    const resetLink = await admin.locator('#activation-result').getByLabel('Activation link').inputValue();
    await screenshots(admin, 'clinic-admin-reset');
    await doc.goto(`${BASE}/#/account`);
    await doc.locator('#view-login').waitFor({ state: 'visible', timeout: 15000 });
    await doc.goto(resetLink);
    await doc.locator('#activate-form').waitFor({ state: 'visible' });
    const reset = doc.locator('#activate-form');
    await reset.getByLabel('New password').fill('birch leaves in autumn');
    await reset.getByLabel('Type it again').fill('birch leaves in autumn');
    await reset.getByRole('button', { name: 'Use a recovery code instead' }).click();
    await reset.getByLabel('Recovery code').fill(codes[4]);
    await screenshots(doc, 'clinic-activate-reset');
    await reset.getByRole('button', { name: 'Set new password' }).click();
    await doc.locator('#view-appointments').waitFor({ state: 'visible', timeout: 15000 });

    for (const p of [admin, doc, other]) await p.context().close();
  });

  test('a used or unknown activation link says so', async () => {
    const page = await freshPage();
    await page.goto(`${BASE}/#/activate/${'A'.repeat(43)}`);
    await waitFor(async () => /invalid, already used or expired/.test(await page.locator('#activate-body').textContent()),
      { what: 'the refusal' });
    await screenshots(page, 'clinic-activate-invalid');
    await page.context().close();
  });
});
