// The approvers' inbox. Everything an approver signs comes from the server's
// own record of the held call (GET /approvals); the signature is made here
// with WebCrypto Ed25519 from the approver's key file, which is never sent,
// or by one of the approver's passkeys (WebAuthn), whose challenge this page
// derives itself from the statement shown: SHA-256 of its bytes.
// Text from the server is only ever placed with textContent, never parsed
// as HTML.
'use strict';

const REFRESH_MS = 5000;
// DER of a PKCS#8 Ed25519 private key up to its 32-byte seed (RFC 8410).
const PKCS8_ED25519_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

const session = { token: null, key: null, approver: null, publicKey: null, timer: null, keyset: null, passkeys: [], rpId: null };
// The last outcome shown on each held call, kept across refreshes.
const notes = new Map();
// What the page keeps across the provider's redirect (this tab only): the
// PKCE verifier and the state it sent, removed as soon as it is back.
const PENDING_SIGNIN = 'dualtrust.inbox.signin';

const byId = (id) => document.getElementById(id);

function base64url(bytes) {
  let text = '';
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64url(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
}

function when(unixSeconds) {
  return new Date(unixSeconds * 1000).toISOString().replace('.000Z', 'Z');
}

class ServerError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, body) {
  const headers = { Authorization: `Bearer ${session.token}` };
  const options = { headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    options.method = 'POST';
    headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let answer = null;
  try {
    answer = await response.json();
  } catch (_) {
    answer = null;
  }
  if (!response.ok) {
    const code = answer && answer.error ? answer.error : `http_${response.status}`;
    const text = answer && answer.error_description ? answer.error_description : `the server answered ${response.status}`;
    throw new ServerError(response.status, code, text);
  }
  return answer;
}

// The key file `dualtrust approver-keygen` writes: the 32-byte Ed25519 seed
// in hex. Returns the signing key and the public key (base64url).
async function importKeyFile(text) {
  const seedHex = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(seedHex)) {
    throw new Error('this is not an approver key file (expected 64 hex digits)');
  }
  const der = new Uint8Array(48);
  der.set(PKCS8_ED25519_PREFIX);
  for (let i = 0; i < 32; i += 1) der[16 + i] = parseInt(seedHex.slice(2 * i, 2 * i + 2), 16);
  // Imported once extractable, only to learn the public key, then again
  // not extractable for signing; the first handle is dropped.
  const probe = await crypto.subtle.importKey('pkcs8', der, { name: 'Ed25519' }, true, ['sign']);
  const jwk = await crypto.subtle.exportKey('jwk', probe);
  const key = await crypto.subtle.importKey('pkcs8', der, { name: 'Ed25519' }, false, ['sign']);
  der.fill(0);
  return { key, publicKey: jwk.x };
}

async function sign(statement) {
  if (!session.key) throw new Error('load your approver key file first');
  const signature = await crypto.subtle.sign({ name: 'Ed25519' }, session.key, new TextEncoder().encode(statement));
  return base64url(signature);
}

// RFC 8785 canonical JSON: ECMAScript number and string serialization, and
// object members sorted by UTF-16 code units, which is what JavaScript's
// default sort compares.
function canonical(value) {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  const members = Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`);
  return `{${members.join(',')}}`;
}

async function serverKeys() {
  if (!session.keyset) {
    const response = await fetch('/.well-known/jwks.json', { cache: 'no-store', credentials: 'omit' });
    if (!response.ok) throw new Error('the server key set could not be fetched');
    session.keyset = await response.json();
  }
  return session.keyset.keys || [];
}

// Checks one receipt here, without trusting the server's word: the body's
// canonical form hashes to `hash`, and `sig` verifies under the JWKS key
// named by the body's `kid`. Returns the failure, or null.
async function receiptProblem(receipt) {
  const bytes = new TextEncoder().encode(canonical(receipt.body));
  const digest = hex(await crypto.subtle.digest('SHA-256', bytes));
  if (digest !== receipt.hash) return 'the body does not hash to the receipt hash';
  const jwk = (await serverKeys()).find((k) => k.kid === receipt.body.kid && k.crv === 'Ed25519');
  if (!jwk) return 'no key of this server has this kid';
  const key = await crypto.subtle.importKey('jwk', { kty: 'OKP', crv: 'Ed25519', x: jwk.x }, { name: 'Ed25519' }, false, ['verify']);
  const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, fromBase64url(receipt.sig), bytes);
  return ok ? null : 'the signature does not verify';
}

// The approver's passkeys and the relying party, from the server.
async function loadPasskeys() {
  const listing = await api('/approvals/passkeys');
  session.rpId = listing.relying_party.id;
  session.passkeys = listing.passkeys;
  const items = listing.passkeys.map((p) => {
    const line = document.createElement('li');
    let state = 'waiting for an operator to confirm it';
    if (p.revoked_at) state = 'revoked';
    else if (p.source === 'config') state = 'pinned by configuration';
    else if (p.confirmed) state = 'confirmed';
    line.textContent = `${p.credential_id} (${p.alg === -7 ? 'ES256' : 'EdDSA'}): ${state}`;
    line.dataset.credential = p.credential_id;
    return line;
  });
  byId('passkey-list').replaceChildren(...items);
}

// The WebAuthn registration ceremony with the server's options (binary
// members arrive base64url); the result waits for an operator.
async function registerPasskey() {
  const state = byId('passkey-state');
  state.classList.remove('error');
  try {
    const { public_key: options } = await api('/approvals/passkeys/challenge', {});
    const credential = await navigator.credentials.create({
      publicKey: {
        ...options,
        challenge: fromBase64url(options.challenge),
        user: { ...options.user, id: fromBase64url(options.user.id) },
        excludeCredentials: options.excludeCredentials.map((c) => ({ type: c.type, id: fromBase64url(c.id) })),
      },
    });
    if (!credential) throw new Error('no passkey was created');
    const registered = await api('/approvals/passkeys', {
      challenge: options.challenge,
      client_data_json: base64url(credential.response.clientDataJSON),
      attestation_object: base64url(credential.response.attestationObject),
    });
    await loadPasskeys();
    state.textContent = `Passkey ${registered.credential_id} registered. It counts once an operator confirms it: dualtrust passkeys confirm --credential ${registered.credential_id}`;
  } catch (failure) {
    state.textContent = `Not registered: ${failure.message}`;
    state.classList.add('error');
  }
}

// A WebAuthn assertion over `statement`: the challenge is its SHA-256,
// computed here, and must equal what the server offered, so the server can
// never have a passkey sign anything but the statement shown.
async function passkeySign(statement, offered) {
  const usable = session.passkeys.filter((p) => p.confirmed);
  if (!usable.length) throw new Error('you have no confirmed passkey');
  const challenge = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(statement));
  if (offered !== undefined && base64url(challenge) !== offered) {
    throw new Error('the server asked for a signature over something other than the statement shown; not signing');
  }
  const credential = await navigator.credentials.get({
    publicKey: {
      challenge,
      rpId: session.rpId,
      allowCredentials: usable.map((p) => ({ type: 'public-key', id: fromBase64url(p.credential_id) })),
      userVerification: 'required',
      timeout: 120000,
    },
  });
  if (!credential) throw new Error('the passkey did not sign');
  return {
    credential_id: base64url(credential.rawId),
    authenticator_data: base64url(credential.response.authenticatorData),
    client_data_json: base64url(credential.response.clientDataJSON),
    signature: base64url(credential.response.signature),
  };
}

function fill(node, selector, text) {
  node.querySelector(selector).textContent = text;
}

function requester(view) {
  const token = view.requested_by_token ? ` (token ${view.requested_by_token})` : '';
  const from = view.requested_from ? ` from ${view.requested_from}` : ' over stdio';
  return `${view.requested_by}${token}${from}`;
}

function renderPending(view) {
  const item = byId('pending-template').content.firstElementChild.cloneNode(true);
  item.dataset.lease = view.lease_id;
  fill(item, '.summary', view.summary);
  fill(item, '.tool', view.tool);
  fill(item, '.requester', requester(view));
  fill(item, '.issued', when(view.issued_at));
  const left = Math.max(0, view.expires_at - Math.floor(Date.now() / 1000));
  fill(item, '.expires', `${when(view.expires_at)} (in ${left} s)`);
  const by = view.approved_by.length ? `: ${view.approved_by.join(', ')}` : '';
  const against = view.rejected_by.length
    ? `; rejected by ${view.rejected_by.join(', ')} (${view.rejections_needed} end it)`
    : '';
  const passkeys = view.passkeys_needed ? `; ${view.passkeys_needed} must be passkeys` : '';
  fill(item, '.tally', `${view.approvals} of ${view.k}${by}${passkeys}${against}`);
  fill(item, '.eligible', view.approvers.join(', '));
  fill(item, '.lease', view.lease_id);
  fill(item, '.digest', view.args_digest);
  fill(item, '.arguments', JSON.stringify(view.arguments, null, 2));
  fill(item, '.statement', view.sign);
  const approve = item.querySelector('.approve');
  const reject = item.querySelector('.reject');
  const approvePasskey = item.querySelector('.approve-passkey');
  const rejectPasskey = item.querySelector('.reject-passkey');
  const withPasskey = session.passkeys.some((p) => p.confirmed);
  approvePasskey.hidden = !withPasskey;
  rejectPasskey.hidden = !withPasskey;
  if (view.approved_by.includes(session.approver)) {
    approve.disabled = true;
    approvePasskey.disabled = true;
    fill(item, '.outcome', 'You approved this call; it waits for the others.');
  }
  const note = notes.get(view.lease_id);
  if (note) {
    fill(item, '.outcome', note.text);
    item.querySelector('.outcome').classList.toggle('error', note.error);
  }
  approve.addEventListener('click', () => act(item, view, 'approve', false));
  reject.addEventListener('click', () => act(item, view, 'reject', false));
  approvePasskey.addEventListener('click', () => act(item, view, 'approve', true));
  rejectPasskey.addEventListener('click', () => act(item, view, 'reject', true));
  return item;
}

// The signature member of a submission: a key file's or a passkey's.
async function evidence(statement, passkey, offered) {
  return passkey ? { passkey: await passkeySign(statement, offered) } : { signature: await sign(statement) };
}

async function act(item, view, what, passkey) {
  const outcome = item.querySelector('.outcome');
  const buttons = item.querySelectorAll('button');
  buttons.forEach((b) => { b.disabled = true; });
  outcome.classList.remove('error');
  const say = (text, error) => {
    notes.set(view.lease_id, { text, error });
    outcome.textContent = text;
    outcome.classList.toggle('error', error);
  };
  try {
    let status;
    if (what === 'approve') {
      const signed = await evidence(view.sign, passkey, view.passkey_challenge);
      status = await api('/approvals', { lease_id: view.lease_id, approver_id: session.approver, ...signed });
      say(status.complete
        ? `Approved: ${status.approvals} of ${status.k}. The call may run once.`
        : `Approved: ${status.approvals} of ${status.k} so far.`, false);
    } else {
      const reason = item.querySelector('.reason').value.trim();
      if (!reason) throw new Error('a rejection needs a reason');
      // A replacer function: a string replacement would expand `$&` and
      // the like in the reason, and sign something other than what is sent.
      const statement = view.sign_to_reject.replace(/reason=<your reason>\n$/, () => `reason=${reason}\n`);
      const signed = await evidence(statement, passkey);
      status = await api('/rejections', { lease_id: view.lease_id, approver_id: session.approver, ...signed, reason });
      say(status.ended
        ? `Rejected by ${status.rejected_by}: the call will not run.`
        : `Rejection recorded: ${status.rejections} of ${status.needed} needed to end this call.`, false);
    }
    await refresh();
  } catch (error) {
    say(error.message, true);
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function result(view) {
  if (view.state === 'consumed') return 'Ran once, approved by ' + (view.approved_by.join(', ') || 'nobody') + '.';
  if (view.state === 'revoked' && view.rejections.length) {
    return `Rejected by ${view.rejections.map((r) => `${r.by}: ${r.reason}`).join('; ')}`;
  }
  if (view.state === 'expired') return `Expired with ${view.approvals} of ${view.k} approvals.`;
  return `State: ${view.state}`;
}

async function renderDecided(view) {
  const item = byId('history-template').content.firstElementChild.cloneNode(true);
  item.dataset.lease = view.lease_id;
  fill(item, '.summary', view.summary);
  fill(item, '.result', result(view));
  fill(item, '.meta', `${view.tool} asked by ${requester(view)} at ${when(view.issued_at)}; lease ${view.lease_id}`);
  const list = item.querySelector('.receipts');
  if (view.receipts_truncated) {
    fill(item, '.meta', `${item.querySelector('.meta').textContent}; the first ${view.receipts.length} receipts shown`);
  }
  for (const receipt of view.receipts) {
    const line = document.createElement('li');
    const body = receipt.body;
    const what = `#${body.seq} ${body.decision}${body.reason ? ` (${body.reason})` : ''} by ${body.subject || 'the server'} via ${body.transport}`;
    let problem;
    try {
      problem = await receiptProblem(receipt);
    } catch (error) {
      problem = `could not be checked: ${error.message}`;
    }
    line.textContent = problem ? `${what}: NOT VERIFIED, ${problem}` : `${what}: verified`;
    line.className = problem ? 'unverified' : 'verified';
    list.appendChild(line);
  }
  return item;
}

async function refresh() {
  const status = byId('status');
  try {
    const [pending, history] = await Promise.all([api('/approvals'), api('/approvals/history')]);
    const open = pending.pending.map(renderPending);
    // An approver mid-way through typing a reason keeps their item.
    const typing = Array.from(byId('pending').children).filter((li) => li.querySelector('.reason').value);
    const kept = new Map(typing.map((li) => [li.dataset.lease, li]));
    byId('pending').replaceChildren(...open.map((li) => kept.get(li.dataset.lease) || li));
    byId('none-pending').hidden = open.length > 0;
    byId('history').replaceChildren(...(await Promise.all(history.decided.map(renderDecided))));
    status.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
    status.classList.remove('error');
  } catch (error) {
    status.textContent = `Could not refresh: ${error.message}`;
    status.classList.add('error');
    if (error.status === 401) signOut('Your token was refused; sign in again.');
  }
}

function signOut(message) {
  clearInterval(session.timer);
  Object.assign(session, { token: null, key: null, approver: null, publicKey: null, timer: null, passkeys: [], rpId: null });
  notes.clear();
  byId('inbox').hidden = true;
  byId('who').hidden = true;
  byId('signin').hidden = false;
  byId('signin-error').textContent = message || '';
}

function showWho() {
  const who = byId('who');
  who.textContent = `Signed in as approver ${session.approver}`;
  who.hidden = false;
}

// Signs in with `token`: the server must know its subject as an approver.
async function signInWith(token) {
  session.token = token;
  try {
    const listing = await api('/approvals');
    if (!listing.approver) throw new Error("this token's subject is not a registered approver");
    session.approver = listing.approver;
    session.publicKey = listing.approver_public_key;
  } catch (failure) {
    session.token = null;
    byId('signin-error').textContent = failure.message;
    return;
  }
  byId('signin-error').textContent = '';
  byId('signin').hidden = true;
  byId('inbox').hidden = false;
  // An approver who signs only with passkeys has no key file to load.
  byId('key').hidden = !session.publicKey;
  showWho();
  try {
    await loadPasskeys();
  } catch (failure) {
    byId('passkey-state').textContent = `Your passkeys could not be listed: ${failure.message}`;
  }
  await refresh();
  session.timer = setInterval(refresh, REFRESH_MS);
}

async function signInWithToken(event) {
  event.preventDefault();
  const token = byId('token').value.trim();
  byId('token').value = '';
  await signInWith(token);
}

async function loadKey() {
  const input = byId('keyfile');
  const state = byId('key-state');
  const file = input.files[0];
  input.value = '';
  session.key = null;
  state.classList.remove('error');
  if (!file) return;
  try {
    const imported = await importKeyFile(await file.text());
    if (session.publicKey && imported.publicKey !== session.publicKey) {
      throw new Error(`this key file is not approver ${session.approver}'s registered key`);
    }
    session.key = imported.key;
    state.textContent = `Key loaded: you sign as approver ${session.approver}.`;
  } catch (failure) {
    state.textContent = `${failure.message}. No key loaded.`;
    state.classList.add('error');
  }
}

function randomText(bytes) {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

// OAuth 2.1 authorization code with PKCE (S256): off to the provider,
// which sends the approver back here with a code.
async function startOAuth(oauth) {
  const verifier = randomText(32);
  const state = randomText(16);
  const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PENDING_SIGNIN, JSON.stringify({ verifier, state }));
  const url = new URL(oauth.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: oauth.client_id,
    redirect_uri: redirectUri(),
    scope: oauth.scope,
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();
  window.location.assign(url.toString());
}

function redirectUri() {
  return `${window.location.origin}/approvals/`;
}

// Back from the provider: the state must be the one this tab sent, then
// the code is redeemed with the verifier only this tab holds.
async function finishOAuth(oauth, params) {
  const pending = JSON.parse(sessionStorage.getItem(PENDING_SIGNIN) || 'null');
  sessionStorage.removeItem(PENDING_SIGNIN);
  window.history.replaceState(null, '', redirectUri());
  if (params.get('error')) {
    throw new Error(`the identity provider refused: ${params.get('error')}`);
  }
  if (!pending || !params.get('state') || params.get('state') !== pending.state) {
    throw new Error('this sign-in answer does not belong to a sign-in started here; start again');
  }
  const response = await fetch(oauth.token_endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    credentials: 'omit',
    cache: 'no-store',
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: params.get('code') || '',
      redirect_uri: redirectUri(),
      client_id: oauth.client_id,
      code_verifier: pending.verifier,
    }).toString(),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok || !answer || typeof answer.access_token !== 'string') {
    const why = answer && answer.error ? answer.error : `status ${response.status}`;
    throw new Error(`the identity provider did not issue a token (${why})`);
  }
  return answer.access_token;
}

async function start() {
  byId('signin-form').addEventListener('submit', signInWithToken);
  byId('keyfile').addEventListener('change', loadKey);
  byId('register-passkey').addEventListener('click', registerPasskey);
  let signin = { oauth: null };
  try {
    const response = await fetch('/approvals/signin', { cache: 'no-store', credentials: 'omit' });
    if (response.ok) signin = await response.json();
  } catch (_) {
    signin = { oauth: null };
  }
  const oauth = signin.oauth;
  if (!oauth) return;
  byId('oauth-signin').hidden = false;
  byId('oauth-button').addEventListener('click', () => startOAuth(oauth));
  const params = new URLSearchParams(window.location.search);
  if (params.has('code') || params.has('error')) {
    try {
      await signInWith(await finishOAuth(oauth, params));
    } catch (failure) {
      byId('signin-error').textContent = failure.message;
    }
  }
}

document.addEventListener('DOMContentLoaded', start);
