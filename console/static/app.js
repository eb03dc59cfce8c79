// Entry point: sign-in, the one-time login link, routing by URL hash, and
// the page-wide error displays (connection banner, 401, toasts).

import {api, token, setToken, clearToken, UNAUTHORIZED, REACHABLE} from './api.js';
import {h, fill, notify} from './ui.js';
import {startStatus, stopStatus} from './chart.js';
import {overview} from './overview.js';
import {sinkPage} from './sink.js';
import {messagePage} from './message.js';
import {tailPage} from './tail.js';
import {configPage} from './config.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const banner = document.getElementById('banner');
let stopView = () => {};

// A poll that fails shows why in the banner; unreachable is reported by
// api.js itself, anything else here.
function onError(e) {
  if (e.code !== 'unreachable') showBanner(e.message);
}

function showBanner(text) {
  banner.textContent = text;
  banner.hidden = !text;
}

window.addEventListener(REACHABLE, (ev) => {
  if (ev.detail.ok) {
    if (banner.dataset.kind === 'unreachable') { showBanner(''); delete banner.dataset.kind; }
  } else {
    banner.dataset.kind = 'unreachable';
    showBanner(ev.detail.message + ' Retrying…');
  }
});

window.addEventListener(UNAUTHORIZED, (ev) => signOut(ev.detail));

// signOut forgets the token; reason says why (an error unless the user
// asked for it).
function signOut(reason, asked = false) {
  clearToken();
  stopStatus();
  stopView();
  stopView = () => {};
  nav.hidden = true;
  signIn(reason, asked);
}

function signIn(reason, asked = false) {
  showBanner('');
  const input = h('input', {type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, spellcheck: 'false'});
  const error = h('p', {class: asked ? 'muted' : 'error-text', id: 'signin-error', role: 'alert'}, reason || '');
  const submit = h('button', {type: 'submit'}, 'Sign in');
  const form = h('form', {class: 'signin card', 'aria-labelledby': 'signin-h'},
    h('h1', {id: 'signin-h'}, 'Sign in to walhook'),
    h('p', {class: 'muted'}, 'Use one of the API tokens in server.api_tokens. It is kept in this browser tab only.'),
    h('div', {class: 'field'}, h('label', {for: 'token'}, 'API token'), input), error,
    h('div', {class: 'actions'}, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    error.textContent = '';
    error.className = 'error-text';
    setToken(input.value.trim());
    try {
      await api('GET', '/api/status');
      start();
    } catch (e) {
      clearToken();
      // A 401 re-renders the form through signOut with its reason.
      if (e.status !== 401) error.textContent = e.message;
      submit.disabled = false;
    }
  });
  fill(main, form);
  input.focus();
}

// exchangeCode trades a one-time code from a `walhook dev` link for the
// token, and takes the code out of the address bar at once.
async function exchangeCode(code) {
  history.replaceState(null, '', location.pathname + '#/');
  let res;
  try {
    res = await fetch('/console/login', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({code}), cache: 'no-store'});
  } catch {
    throw new Error('Cannot reach walhook at ' + location.host + ' to use the sign-in link. Is it running?');
  }
  const b = await res.json().catch(() => null);
  if (!res.ok || !b || !b.token) throw new Error((b && b.error && b.error.message) || 'sign-in link not accepted');
  setToken(b.token);
}

function route() {
  stopView();
  // A previous page's error is not this page's; unreachable stays until
  // the API answers again.
  if (banner.dataset.kind !== 'unreachable') showBanner('');
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = raw.split('?');
  const query = new URLSearchParams(qs || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const a of nav.querySelectorAll('a')) {
    const here = a.dataset.route === (parts[0] || 'overview');
    if (here) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (parts[0] === 'sinks' && parts[1] && parts[2] === 'messages' && parts[3]) {
    stopView = messagePage(main, parts[1], parts[3], onError);
    document.title = `Message ${parts[3]} · ${parts[1]} · walhook`;
  } else if (parts[0] === 'sinks' && parts[1]) {
    stopView = sinkPage(main, parts[1], parts[2], query, onError);
    document.title = `${parts[1]} · walhook`;
  } else if (parts[0] === 'tail') {
    stopView = tailPage(main, query, onError);
    document.title = 'Live tail · walhook';
  } else if (parts[0] === 'config') {
    stopView = configPage(main, onError);
    document.title = 'Endpoints and sources · walhook';
  } else {
    stopView = overview(main, onError);
    document.title = 'walhook';
  }
  main.focus({preventScroll: true});
}

function start() {
  nav.hidden = false;
  startStatus();
  route();
}

window.addEventListener('hashchange', () => { if (token()) route(); });
// The skip link focuses the content without touching the hash (routes).
document.querySelector('.skip').addEventListener('click', (ev) => { ev.preventDefault(); main.focus(); });
document.getElementById('signout').addEventListener('click', () => { signOut('Signed out.', true); });

(async () => {
  const m = location.hash.match(/^#login=([A-Za-z0-9]+)/);
  if (m) {
    try {
      await exchangeCode(m[1]);
    } catch (e) {
      signIn(e.message);
      return;
    }
    notify('Signed in with the walhook dev link.');
  }
  if (token()) start();
  else signIn();
})();
