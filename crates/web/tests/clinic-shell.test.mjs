// The clinic pages' shell: each role lands on its own home page after logging in and
// sees only the links its role may use; the login page and each home pass the
// accessibility scan at desktop and phone size.

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, demoAccounts, loginAs, screenshots } from './lib.mjs';

const BASE = process.env.CONFIDE_BASE_URL;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

let browser;
let accounts;

async function freshPage() {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  return ctx.newPage();
}

async function navLinks(page) {
  return page.locator('#nav a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
}

describe('clinic shell: homes and navigation by role', { timeout: 180_000 }, () => {
  before(async () => {
    assert.ok(process.env.CONFIDE_DEMO_JSON, 'CONFIDE_DEMO_JSON must name the demo data file');
    accounts = demoAccounts(process.env.CONFIDE_DEMO_JSON);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  });

  after(async () => {
    if (browser) await browser.close();
  });

  test('the login page passes the accessibility scan', async () => {
    const page = await freshPage();
    await page.goto(`${BASE}/#/login`);
    await page.locator('#view-login').waitFor({ state: 'visible' });
    assert.equal(await page.getAttribute('html', 'lang'), 'en');
    await screenshots(page, 'login');
    await page.context().close();
  });

  const homes = [
    ['staff', 'frontdesk', ['#/frontdesk', '#/account']],
    ['admin', 'admin', ['#/frontdesk', '#/admin', '#/account']],
    ['patient', 'appointments', ['#/appointments', '#/account']],
    ['doctor', 'appointments', ['#/appointments', '#/account']],
  ];
  for (const [role, home, links] of homes) {
    test(`${role}: lands on ${home}, with exactly the ${role}'s links`, async () => {
      const account = accounts[role];
      assert.ok(account, `the demo data has a ${role}`);
      const page = await freshPage();
      await loginAs(page, BASE, account);
      await page.locator(`#view-${home}`).waitFor({ state: 'visible', timeout: 15000 });
      assert.deepEqual((await navLinks(page)).sort(), [...links].sort());
      // The page the role lands on is marked as the current one.
      const current = await page.locator('#nav a[aria-current="page"]').getAttribute('href');
      assert.equal(current, `#/${home}`);
      await page.context().close();
    });
  }
});
