// The API client: bearer auth from sessionStorage, JSON in and out, and
// errors turned into readable messages. The token lives in sessionStorage
// (this tab only, gone when it closes) and never in a URL.

const KEY = 'walhook.token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = () => sessionStorage.getItem(KEY) || '';
export const setToken = (t) => sessionStorage.setItem(KEY, t);
export const clearToken = () => sessionStorage.removeItem(KEY);

// A 401 anywhere signs the page out; app.js listens for this.
export const UNAUTHORIZED = 'walhook:unauthorized';
// Reachability changes show or hide the connection banner.
export const REACHABLE = 'walhook:reachable';

function reachable(ok, message) {
  window.dispatchEvent(new CustomEvent(REACHABLE, {detail: {ok, message}}));
}

// describe turns an API error body into one readable sentence.
function describe(status, body) {
  const e = body && body.error;
  if (!e) return `HTTP ${status}`;
  let msg = e.message || e.code || `HTTP ${status}`;
  if (Array.isArray(e.errors) && e.errors.length) {
    msg = e.errors.map((x) => (x.field ? x.field + ': ' : '') + x.message).join('; ');
  }
  return msg;
}

async function send(method, path, body, signal) {
  const headers = {Authorization: 'Bearer ' + token()};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store', signal});
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    const msg = 'Cannot reach the walhook API at ' + location.host + '. Is walhook running?';
    reachable(false, msg);
    throw new ApiError(0, 'unreachable', msg);
  }
  reachable(true);
  if (res.status === 401) {
    const b = await res.json().catch(() => null);
    const err = new ApiError(401, 'unauthorized', 'The API token was not accepted (401): ' + describe(401, b));
    window.dispatchEvent(new CustomEvent(UNAUTHORIZED, {detail: err.message}));
    throw err;
  }
  return res;
}

// api calls the management API and returns the decoded answer.
export async function api(method, path, body) {
  const res = await send(method, path, body);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const code = (data && data.error && data.error.code) || 'http_' + res.status;
    throw new ApiError(res.status, code, describe(res.status, data));
  }
  return data;
}

export const enc = encodeURIComponent;

// stream reads a Server-Sent Events response with fetch, because
// EventSource cannot send the Authorization header. onEvent gets the
// event name and its parsed data; it resolves when the server ends the
// stream and rejects on errors (an abort through signal included).
export async function stream(path, onEvent, signal, onOpen) {
  const res = await send('GET', path, undefined, signal);
  if (!res.ok) {
    const b = await res.json().catch(() => null);
    throw new ApiError(res.status, (b && b.error && b.error.code) || 'http_' + res.status, describe(res.status, b));
  }
  if (onOpen) onOpen();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (name === 'event') event = val;
        else if (name === 'data') data.push(val);
      }
      if (data.length) {
        let parsed;
        try { parsed = JSON.parse(data.join('\n')); } catch { parsed = data.join('\n'); }
        onEvent(event, parsed);
      }
    }
  }
}

// poll runs fn now and then every ms until stopped; a failed run is
// reported (onError) and retried on the next tick. It returns stop.
export function poll(fn, ms, onError) {
  let stopped = false;
  let timer;
  const tick = async () => {
    try {
      await fn();
    } catch (e) {
      if (!stopped && onError && e.status !== 401) onError(e);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
