// Drives the approvals inbox in Debian's Chromium (playwright-core), as an
// approver would. Run by tests/e2e/inbox.rs, which starts the server, holds
// the agent's calls and checks what ran; this script only uses the page.
//
//   node inbox.mjs decide   approve/reject in the page (alice, then bob)
//   node inbox.mjs history  the decided calls and their receipts, checked in
//                           the page; a tampered receipt must fail the check
//   node inbox.mjs oauth    sign in through the identity provider, approve
//   node inbox.mjs passkeys-register   alice and bob register passkeys on
//                           CDP virtual authenticators; their credentials are
//                           written to DT_PASSKEY_STATE for the next phase
//   node inbox.mjs passkeys-approve    the confirmed passkeys approve a held
//                           call in the page; a replayed assertion and a
//                           cloned authenticator are refused
//
// Everything comes from the environment (DT_BASE, DT_ALICE_TOKEN, ...).
// Exits non-zero with a message on the first failed expectation.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env('DT_BASE');
const shots = env('DT_SCREENSHOTS');
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.DT_CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});

// A fresh browser profile per approver; every page error, console error,
// dialog (an injected `alert`) or CSP violation fails the run.
async function openInbox(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  page.on('dialog', (d) => { problems.push(`a dialog opened: ${d.message()}`); d.dismiss(); });
  const response = await page.goto(`${base}/approvals/`);
  assert.equal(response.status(), 200);
  const csp = response.headers()['content-security-policy'] || '';
  assert.match(csp, /script-src 'self'/, 'the page carries a strict CSP');
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  return { name, context, page, problems };
}

async function signIn(inbox, token) {
  await inbox.page.fill('#token', token);
  await inbox.page.click('#signin-button');
}

async function signedIn(inbox) {
  await inbox.page.waitForSelector('#inbox:not([hidden])', { timeout: 10000 });
}

// Loads a key file into the signed-in page; returns what the page says.
async function loadKey(inbox, keyFile) {
  const before = await inbox.page.textContent('#key-state');
  await inbox.page.setInputFiles('#keyfile', keyFile);
  await inbox.page.waitForFunction((text) => document.getElementById('key-state').textContent !== text, before);
  return inbox.page.textContent('#key-state');
}

// Signs in with a token and, if given, loads the key file.
async function ready(inbox, token, keyFile) {
  await signIn(inbox, token);
  await signedIn(inbox);
  if (keyFile) assert.match(await loadKey(inbox, keyFile), /Key loaded/);
}

// A platform authenticator with user verification, in this page's browser
// context (Chrome DevTools Protocol WebAuthn domain); `credentials` are
// put back into it, as they were exported from an earlier phase.
async function virtualAuthenticator(inbox, credentials = []) {
  const cdp = await inbox.context.newCDPSession(inbox.page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true,
      hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  for (const credential of credentials) {
    await cdp.send('WebAuthn.addCredential', { authenticatorId, credential });
  }
  return { cdp, authenticatorId };
}

// Chromium logs every 403 answer as a console error; a refusal the test
// provoked is expected, once, and taken off the page's problems.
async function expectRefusalLogged(inbox) {
  const logged = (p) => p.includes('status of 403');
  for (let i = 0; i < 50 && !inbox.problems.some(logged); i += 1) await inbox.page.waitForTimeout(100);
  const at = inbox.problems.findIndex(logged);
  assert.notEqual(at, -1, 'the refusal reached the page');
  inbox.problems.splice(at, 1);
}

// What the page says on a held call once a decision on it came back.
async function outcomeOf(inbox, lease) {
  await inbox.page.waitForFunction((l) => {
    const node = document.querySelector(`#pending li[data-lease="${l}"] .outcome`);
    return node && node.textContent.trim() !== '';
  }, lease, { timeout: 15000 });
  return inbox.page.locator(`#pending li[data-lease="${lease}"] .outcome`).textContent();
}

async function passkeysRegister() {
  const state = {};
  for (const [name, token] of [['alice', env('DT_ALICE_TOKEN')], ['bob', env('DT_BOB_TOKEN')]]) {
    const inbox = await openInbox(name);
    const { cdp, authenticatorId } = await virtualAuthenticator(inbox);
    await ready(inbox, token);
    await inbox.page.click('#register-passkey');
    await inbox.page.waitForFunction(() => /registered|Not registered/.test(document.getElementById('passkey-state').textContent));
    const said = await inbox.page.textContent('#passkey-state');
    assert.match(said, /registered\. It counts once an operator confirms it/, said);
    assert.match(await inbox.page.textContent('#passkey-list'), /waiting for an operator/);
    // Not confirmed yet: the page offers no passkey approval.
    assert.equal(await inbox.page.locator('#pending li .approve-passkey:visible').count(), 0);
    const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    assert.equal(credentials.length, 1);
    state[name] = credentials;
    await inbox.page.screenshot({ path: `${shots}/passkey-registered-${name}.png`, fullPage: true });
    await done(inbox);
  }
  writeFileSync(env('DT_PASSKEY_STATE'), JSON.stringify(state));
}

async function passkeysApprove() {
  const state = JSON.parse(readFileSync(env('DT_PASSKEY_STATE'), 'utf8'));
  const lease = env('DT_DROP_LEASE');
  const other = env('DT_OTHER_LEASE');
  let bobsLater = null;
  for (const [name, token] of [['alice', env('DT_ALICE_TOKEN')], ['bob', env('DT_BOB_TOKEN')]]) {
    const inbox = await openInbox(name);
    const { cdp, authenticatorId } = await virtualAuthenticator(inbox, state[name]);
    await ready(inbox, token);
    await inbox.page.waitForFunction(() => /confirmed/.test(document.getElementById('passkey-list').textContent));
    const call = item(inbox, 'pending', lease);
    await call.waitFor();
    assert.match(await call.locator('.tally').textContent(), /2 must be passkeys/);
    const posted = inbox.page.waitForRequest((r) => r.url().endsWith('/approvals') && r.method() === 'POST');
    await call.locator('.approve-passkey').click();
    const body = (await posted).postDataJSON();
    assert.equal(body.signature, undefined, 'a passkey approval carries no key signature');
    assert.ok(body.passkey.authenticator_data && body.passkey.client_data_json);
    const outcome = await outcomeOf(inbox, lease);
    if (name === 'alice') {
      assert.match(outcome, /Approved: 1 of 2/, outcome);
      // The same assertion, replayed for another held call from the page.
      const replay = await inbox.page.evaluate(async ({ body, other, token }) => {
        const r = await fetch('/approvals', {
          method: 'POST',
          headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ ...body, lease_id: other }),
        });
        return { status: r.status, answer: await r.json() };
      }, { body, other, token });
      assert.equal(replay.status, 403);
      assert.equal(replay.answer.error, 'passkey_challenge_mismatch');
      await expectRefusalLogged(inbox);
    } else {
      assert.match(outcome, /Approved: 2 of 2\. The call may run once/, outcome);
      bobsLater = (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
    }
    await inbox.page.screenshot({ path: `${shots}/passkey-approved-${name}.png`, fullPage: true });
    await done(inbox);
  }
  // A clone of bob's authenticator as it was at registration: its counter
  // lags the original's, so the server takes it for a copy.
  assert.ok(bobsLater[0].signCount > state.bob[0].signCount, 'the authenticator counts its signatures');
  const clone = await openInbox('bob-clone');
  await virtualAuthenticator(clone, state.bob);
  await ready(clone, env('DT_BOB_TOKEN'));
  await clone.page.waitForFunction(() => /confirmed/.test(document.getElementById('passkey-list').textContent));
  const call = item(clone, 'pending', other);
  await call.waitFor();
  await call.locator('.approve-passkey').click();
  const refused = await outcomeOf(clone, other);
  assert.match(refused, /counter went backwards/, refused);
  await expectRefusalLogged(clone);
  await done(clone);
}

const item = (inbox, list, lease) => inbox.page.locator(`#${list} li[data-lease="${lease}"]`);

async function done(inbox) {
  assert.deepEqual(inbox.problems, [], `${inbox.name}'s page stayed clean`);
  await inbox.context.close();
}

async function decide() {
  const dropLease = env('DT_DROP_LEASE');
  const deleteLease = env('DT_DELETE_LEASE');
  const oddLease = env('DT_ODD_LEASE');

  // Bob with alice's key file: refused when loaded; without a key the
  // page reads but cannot sign.
  const wrong = await openInbox('bob with the wrong key');
  await ready(wrong, env('DT_BOB_TOKEN'), null);
  assert.match(await loadKey(wrong, env('DT_ALICE_KEY')), /not approver bob's registered key/);
  const unsigned = item(wrong, 'pending', dropLease);
  await unsigned.waitFor({ timeout: 10000 });
  await unsigned.locator('button.approve').click();
  await wrong.page.waitForFunction(
    (lease) => /load your approver key file/.test(document.querySelector(`#pending li[data-lease="${lease}"] .outcome`)?.textContent || ''),
    dropLease,
  );
  assert.match(await unsigned.innerText(), /0 of 2/);
  await done(wrong);

  // A token the server refuses: the page says so and stays signed out.
  const forged = await openInbox('a forged token');
  await signIn(forged, `${env('DT_BOB_TOKEN')}x`);
  await forged.page.waitForFunction(() => document.getElementById('signin-error').textContent.length > 0);
  assert.equal(await forged.page.isVisible('#inbox'), false);
  forged.problems = forged.problems.filter((p) => !/401/.test(p));
  await done(forged);

  const alice = await openInbox('alice');
  await ready(alice, env('DT_ALICE_TOKEN'), env('DT_ALICE_KEY'));
  const drop = item(alice, 'pending', dropLease);
  await drop.waitFor({ timeout: 10000 });
  const shown = await drop.innerText();
  assert.match(shown, /DROP TABLE orders/, 'the exact statement is shown');
  assert.match(shown, /relations: orders|orders/, 'the table it touches is shown');
  assert.match(shown, /agent \(token [0-9a-f]{32}\) from 127\.0\.0\.1/, 'who asked, with which token, from where');
  assert.match(shown, /0 of 2/);
  // A hostile argument is shown as text: no markup, no script ran.
  const odd = item(alice, 'pending', oddLease);
  await odd.waitFor();
  assert.match(await odd.innerText(), /<img src=x onerror=alert\(1\)>/);
  assert.equal(await odd.locator('img').count(), 0, 'no element was made from the arguments');
  await alice.page.screenshot({ path: `${shots}/inbox-pending.png`, fullPage: true });

  await drop.locator('button.approve').click();
  await alice.page.waitForFunction(
    (lease) => /1 of 2/.test(document.querySelector(`#pending li[data-lease="${lease}"] .tally`)?.textContent || ''),
    dropLease, { timeout: 10000 },
  );

  const del = item(alice, 'pending', deleteLease);
  // Reject without a reason: refused in the page, nothing sent.
  await del.locator('button.reject').click();
  await alice.page.waitForFunction(
    (lease) => /needs a reason/.test(document.querySelector(`#pending li[data-lease="${lease}"] .outcome`)?.textContent || ''),
    deleteLease,
  );
  await del.locator('input.reason').fill('not during the quarter close');
  await del.locator('button.reject').click();
  await item(alice, 'pending', deleteLease).waitFor({ state: 'detached', timeout: 10000 });
  await done(alice);

  const bob = await openInbox('bob');
  await ready(bob, env('DT_BOB_TOKEN'), env('DT_BOB_KEY'));
  const bobDrop = item(bob, 'pending', dropLease);
  await bobDrop.waitFor({ timeout: 10000 });
  assert.match(await bobDrop.innerText(), /1 of 2: alice/);
  assert.equal(await item(bob, 'pending', deleteLease).count(), 0, 'a rejected call no longer waits');
  await bobDrop.locator('button.approve').click();
  await bob.page.waitForFunction(
    (lease) => !document.querySelector(`#pending li[data-lease="${lease}"]`)
      || /may run once/.test(document.querySelector(`#pending li[data-lease="${lease}"] .outcome`)?.textContent || ''),
    dropLease, { timeout: 10000 },
  );
  await bob.page.screenshot({ path: `${shots}/inbox-approved.png`, fullPage: true });
  await done(bob);
}

async function history() {
  const dropLease = env('DT_DROP_LEASE');
  const deleteLease = env('DT_DELETE_LEASE');
  const alice = await openInbox('alice');
  await ready(alice, env('DT_ALICE_TOKEN'), null);
  const ran = item(alice, 'history', dropLease);
  await ran.waitFor({ timeout: 10000 });
  await alice.page.waitForFunction(
    (lease) => document.querySelectorAll(`#history li[data-lease="${lease}"] .receipts li`).length >= 4,
    dropLease, { timeout: 10000 },
  );
  const ranText = await ran.innerText();
  assert.match(ranText, /Ran once, approved by alice, bob/);
  assert.match(ranText, /approval_recorded/);
  assert.match(ranText, /allowed/);
  assert.doesNotMatch(ranText, /NOT VERIFIED/);
  assert.equal(await ran.locator('.receipts li.verified').count(), await ran.locator('.receipts li').count());
  const rejected = await item(alice, 'history', deleteLease).innerText();
  assert.match(rejected, /Rejected by alice: not during the quarter close/);
  assert.match(rejected, /rejection_recorded/);
  await alice.page.screenshot({ path: `${shots}/inbox-history.png`, fullPage: true });
  await done(alice);

  // The check runs in the page: a receipt altered on the way (here by the
  // test, as a lying server would) is shown as not verified.
  const tampered = await openInbox('alice, served a tampered receipt');
  await tampered.page.route('**/approvals/history', async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    const entry = body.decided.find((d) => d.lease_id === dropLease);
    const receipt = entry.receipts.find((r) => r.body.decision === 'allowed');
    receipt.body.subject = 'someone-else';
    await route.fulfill({ response, json: body });
  });
  await ready(tampered, env('DT_ALICE_TOKEN'), null);
  const forged = item(tampered, 'history', dropLease);
  await forged.waitFor({ timeout: 10000 });
  await tampered.page.waitForFunction(
    (lease) => /NOT VERIFIED/.test(document.querySelector(`#history li[data-lease="${lease}"]`)?.textContent || ''),
    dropLease, { timeout: 10000 },
  );
  assert.equal(await forged.locator('.receipts li.unverified').count(), 1);
  await done(tampered);
}

// Sign-in through the identity provider (the test's, on loopback): the
// page goes there, comes back with a code, redeems it with its PKCE
// verifier, and approves. A forged answer (a state this tab never sent) is
// refused before any code is redeemed.
async function oauth() {
  const lease = env('DT_DROP_LEASE');
  const forged = await openInbox('a forged sign-in answer');
  await forged.page.goto(`${base}/approvals/?code=stolen&state=not-mine`);
  await forged.page.waitForFunction(() => document.getElementById('signin-error').textContent.length > 0);
  assert.match(await forged.page.textContent('#signin-error'), /does not belong to a sign-in started here/);
  assert.equal(await forged.page.isVisible('#inbox'), false);
  assert.equal(forged.page.url(), `${base}/approvals/`, 'the code is gone from the address bar');
  await done(forged);

  const alice = await openInbox('alice via the identity provider');
  await alice.page.waitForSelector('#oauth-button:visible');
  await alice.page.click('#oauth-button');
  await signedIn(alice);
  assert.equal(alice.page.url(), `${base}/approvals/`, 'the code is gone from the address bar');
  assert.match(await alice.page.textContent('#who'), /approver alice/);
  assert.match(await loadKey(alice, env('DT_ALICE_KEY')), /Key loaded/);
  const held = item(alice, 'pending', lease);
  await held.waitFor({ timeout: 10000 });
  await held.locator('button.approve').click();
  await alice.page.waitForFunction(
    (id) => !document.querySelector(`#pending li[data-lease="${id}"]`)
      || /may run once/.test(document.querySelector(`#pending li[data-lease="${id}"] .outcome`)?.textContent || ''),
    lease, { timeout: 10000 },
  );
  await alice.page.screenshot({ path: `${shots}/inbox-oauth.png`, fullPage: true });
  await done(alice);
}

try {
  const phase = process.argv[2];
  if (phase === 'passkeys-register') await passkeysRegister();
  else if (phase === 'passkeys-approve') await passkeysApprove();
  else if (phase === 'decide') await decide();
  else if (phase === 'history') await history();
  else if (phase === 'oauth') await oauth();
  else throw new Error(`unknown phase ${phase}`);
} finally {
  await browser.close();
}
