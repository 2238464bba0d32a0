// Administration in the browser: the admin reads the audit trail for a patient, runs
// verify from the page (OK), reads the patient's access report and downloads the
// auditor's package, which `confide audit check` accepts; ends a person's session;
// requests break-glass access (reason and re-authentication) and sees its expiry and
// the grant in the review list; reads the settings. Every tab is scanned for
// accessibility and photographed at 1280x800 and 390x844 (target/browser/clinic-admin-*).

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, artifactsDir, demoAccounts, screenshots, waitFor } from './lib.mjs';
import { BASE, freshCode, leaveStep, loginPage, rest, restLogin } from './clinic-lib.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const OUT = artifactsDir();

let browser;
let accounts;
let patientId;
let page;
let staffToken;
const lines = [];

async function tab(name, heading) {
  await page.getByRole('navigation', { name: 'Administration sections' }).getByRole('link', { name }).click();
  await page.getByRole('heading', { level: 2, name: heading }).waitFor();
}

describe('administration: audit trail, sessions, break-glass, settings', { timeout: 300_000 }, () => {
  before(async () => {
    const file = process.env.CONFIDE_DEMO_JSON;
    assert.ok(file, 'CONFIDE_DEMO_JSON must name the demo data file');
    accounts = demoAccounts(file);
    patientId = JSON.parse(readFileSync(file, 'utf8')).accounts.find((a) => a.role === 'patient').id;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    page = await ctx.newPage();
    page.on('console', (m) => lines.push(`[${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => lines.push(`[pageerror] ${e.message}`));
  });

  after(async () => {
    writeFileSync(path.join(OUT, 'clinic-admin-console.log'), lines.join('\n'));
    if (browser) await browser.close();
    await leaveStep();
  });

  test('staff read the schedule (entries about the patient), then the admin logs in', async () => {
    await page.goto(`${BASE}/#/login`);
    staffToken = await restLogin(page, accounts.staff);
    const r = await rest(page, 'GET', '/api/appointments', undefined, staffToken);
    assert.equal(r.status, 200);
    await loginPage(page, accounts.admin);
    await page.locator('#view-admin').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#admin-panel').getAttribute('data-tab'), 'accounts');
    await screenshots(page, 'clinic-admin-accounts');
  });

  test('the audit trail for the patient, found by name', async () => {
    await tab('Audit trail', 'Audit trail');
    const form = page.locator('#admin-audit-form');
    await form.getByLabel('Patient', { exact: true }).fill('Demo Patient');
    await form.getByRole('button', { name: 'Show entries' }).click();
    const entries = page.locator('#admin-audit-entries table');
    await entries.waitFor();
    assert.equal(await form.getByLabel('Patient', { exact: true }).inputValue(), `account:${patientId}`);
    const text = await entries.innerText();
    assert.match(text, /appointments_listed/);
    assert.match(text, new RegExp(`account:${patientId}`));
    // Every row is about that patient.
    const patients = await entries.locator('tbody tr td:nth-child(7)').allInnerTexts();
    assert.ok(patients.length > 0 && patients.every((p) => p === `account:${patientId}`), patients.join(','));
    // Narrowed by action.
    await form.getByLabel('Action').fill('appointments_listed');
    await form.getByRole('button', { name: 'Show entries' }).click();
    await waitFor(async () => {
      const actions = await page.locator('#admin-audit-entries tbody tr td:nth-child(5)').allInnerTexts();
      return actions.length > 0 && actions.every((a) => a === 'appointments_listed');
    }, { what: 'only appointments_listed rows' });
  });

  test('verify from the page: OK', async () => {
    await page.getByRole('button', { name: 'Verify the audit log' }).click();
    const result = page.locator('#admin-verify-result');
    await waitFor(async () => (await result.getAttribute('data-result')) !== null, { timeout: 30000, what: 'the verify result' });
    assert.equal(await result.getAttribute('data-result'), 'ok', await result.innerText());
    assert.match(await result.innerText(), /^OK: all \d+ entries match/);
  });

  test('the per-patient access report lists the staff member', async () => {
    const form = page.locator('#admin-report-form');
    await form.getByLabel('Patient', { exact: true }).fill(`account:${patientId}`);
    await form.getByRole('button', { name: 'Show report' }).click();
    const out = page.locator('#admin-report-out table');
    await out.waitFor();
    const rows = await out.locator('tbody tr').allInnerTexts();
    assert.ok(rows.some((r) => /\bstaff\b/.test(r) && /appointments_listed/.test(r)), rows.join('\n'));
    await screenshots(page, 'clinic-admin-audit');
  });

  test('the auditor\'s package downloads and `confide audit check` accepts it', async () => {
    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 30000 }),
      page.getByRole('button', { name: 'Download package' }).click(),
    ]);
    assert.match(download.suggestedFilename(), /^confide-audit-\d+-\d+\.jsonl$/);
    const dir = mkdtempSync(path.join(tmpdir(), 'confide-package-'));
    try {
      const file = path.join(dir, download.suggestedFilename());
      await download.saveAs(file);
      await page.locator('#admin-package-result').filter({ hasText: 'Downloaded' }).waitFor();
      const bin = process.env.CONFIDE_BIN;
      assert.ok(bin, 'CONFIDE_BIN names the confide binary');
      const out = execFileSync(bin, ['audit', 'check', file], { encoding: 'utf8' });
      assert.match(out, /^OK: entries \d+\.\.\d+ of log .* are included in its checkpoint of size \d+/);
      writeFileSync(path.join(OUT, 'clinic-admin-audit-check.txt'), out);
      // A package changed by one byte is refused.
      const bytes = readFileSync(file);
      const at = bytes.indexOf('"actor"');
      bytes[at + 10] ^= 1;
      writeFileSync(file, bytes);
      assert.throws(() => execFileSync(bin, ['audit', 'check', file], { encoding: 'utf8', stdio: 'pipe' }));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the staff member\'s sessions: one is ended from the page', async () => {
    await tab('Sessions', 'Sessions');
    const person = page.getByLabel('Person');
    await waitFor(async () => (await person.locator('option').count()) > 0, { what: 'the accounts' });
    await person.selectOption({ label: `${accounts.staff.username} (staff)` });
    await page.getByRole('button', { name: 'Show sessions' }).click();
    const rows = page.locator('#admin-sessions-list tbody tr');
    await rows.first().waitFor();
    const before = await rows.count();
    assert.ok(before >= 1);
    await screenshots(page, 'clinic-admin-sessions');
    // End every session of the staff member: the token used above stops working.
    await page.getByRole('button', { name: /^End all sessions of/ }).click();
    await page.locator('#admin-sessions-list').getByText(/^Ended \d+ sessions?\.$/).waitFor();
    const me = await rest(page, 'GET', '/api/me', undefined, staffToken);
    assert.equal(me.status, 401);
  });

  test('break-glass: reason and re-authentication; the expiry shows and the grant is listed', async () => {
    await tab('Break-glass', 'Break-glass (emergency access)');
    const form = page.locator('#admin-bg-form');
    // Without a reason: refused in the page.
    await form.getByRole('button', { name: 'Request emergency access' }).click();
    await page.locator('#admin-bg-error').filter({ hasText: 'reason' }).waitFor();
    await form.getByLabel('Patient', { exact: true }).fill('Demo Patient');
    await form.getByLabel('Reason').fill('patient collapsed during the call; need contact details');
    await form.getByLabel('Your password').fill(accounts.admin.password);
    // A code of a later step than the login's: the server takes each once.
    await form.getByLabel('Authentication code').fill(await freshCode(accounts.admin.totp_secret));
    await form.getByRole('button', { name: 'Request emergency access' }).click();
    const grant = page.locator('#admin-bg-grant .grant');
    await grant.waitFor({ timeout: 15000 });
    assert.match(await grant.innerText(), new RegExp(`account:${patientId}'s appointments until .* — (60|59) minutes left`));
    const list = page.locator('#admin-bg-list tbody tr').first();
    await list.waitFor();
    assert.match(await list.innerText(), /Demo Patient/);
    assert.match(await list.innerText(), /patient collapsed during the call/);
    assert.match(await list.innerText(), /active/);
    await screenshots(page, 'clinic-admin-break-glass');
  });

  test('the front desk as an admin: the schedule and the register, no booking', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Front desk' }).click();
    await page.locator('#view-frontdesk').waitFor({ state: 'visible' });
    await page.locator('#fd-schedule-body li.fd-appt').first().waitFor();
    assert.equal(await page.getByRole('heading', { name: 'Book an appointment' }).count(), 0);
    assert.equal(await page.locator('#fd-schedule-body li.fd-appt button').count(), 0, 'no move or cancel');
    const search = page.locator('#fd-search-form');
    await search.getByLabel('Name', { exact: true }).fill('demo');
    await search.getByRole('button', { name: 'Search patients' }).click();
    await page.locator('#fd-search-summary').filter({ hasText: 'found' }).waitFor();
    assert.match(await page.locator('#fd-search-results').innerText(), /Demo Patient/);
    await screenshots(page, 'clinic-frontdesk-admin');
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Administration' }).click();
    await page.locator('#view-admin').waitFor({ state: 'visible' });
  });

  test('the settings', async () => {
    await tab('Settings', 'Settings');
    const dl = page.locator('dl.settings');
    await dl.waitFor();
    const text = await dl.innerText();
    assert.match(text, /Automatic logoff after inactivity\s+15 minutes/);
    assert.match(text, /Emergency access lasts\s+60 minutes/);
    assert.doesNotMatch(text.toLowerCase(), /master|pepper|secret/);
    await screenshots(page, 'clinic-admin-settings');
  });
});
