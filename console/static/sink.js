// A sink's page: header with live counts and pause/resume, and the tabs
// Messages, Backfills, Replays and Settings.

import {api, poll, enc} from './api.js';
import {h, fill, num, badge, time, notify, busy, field, pretty, changes} from './ui.js';
import {COUNTS, countCells} from './overview.js';

const PAGE = 50;
const STATES = [['', 'Waiting (all)'], ['pending', 'Pending'], ['in_flight', 'In flight'],
  ['backing_off', 'Backing off'], ['failed', 'Failed'], ['delivered', 'Delivered']];
const TABS = [['messages', 'Messages'], ['backfills', 'Backfills'], ['replays', 'Replays'], ['settings', 'Settings']];

// commitTime is when the message's change committed (or its webhook
// arrived), from the message itself.
export function commitTime(m) {
  const md = (m.message && m.message.metadata) || {};
  return md.commit_timestamp || md.received_at || m.created_at;
}

function header(name, onError) {
  const counts = countCells('dd');
  const state = h('span', {}, '…');
  const toggle = h('button', {type: 'button', class: 'secondary', disabled: true}, 'Pause');
  let paused = false;
  toggle.addEventListener('click', () => busy(toggle, async () => {
    const s = await api('POST', `/api/sinks/${enc(name)}/${paused ? 'resume' : 'pause'}`);
    render(s);
    notify(`Sink ${name} is ${s.status}.`);
  }));
  const listeners = new Set();
  const render = (s) => {
    for (const f of listeners) f(s);
    paused = s.status === 'paused';
    fill(state, badge(s.status));
    toggle.textContent = paused ? 'Resume' : 'Pause';
    toggle.disabled = false;
    counts.update(s.counts);
  };
  const stop = poll(async () => render(await api('GET', `/api/sinks/${enc(name)}`)), 2000, onError);
  const el = h('header', {class: 'sink-head'},
    h('div', {class: 'title'}, h('h1', {}, name), state, toggle),
    h('dl', {class: 'counts', 'data-sink': name}, COUNTS.map(([k, label], i) => h('div', {}, h('dt', {}, label), counts.cells[i]))));
  return {el, stop, onSink: (f) => listeners.add(f)};
}

// messages is the Messages tab: a state filter, a table and paging. The
// cursor stack remembers where each earlier page began.
function messages(name, query, onError) {
  const state = query.get('state') || '';
  const cursors = [];
  let after = '';
  const tbody = h('tbody');
  const older = h('button', {type: 'button', class: 'secondary', disabled: true}, 'Next page');
  const newer = h('button', {type: 'button', class: 'secondary', disabled: true}, 'Previous page');
  const info = h('span', {class: 'muted'});
  const changed = changes();
  let last = [];
  const load = async () => {
    const q = new URLSearchParams({limit: PAGE});
    if (state) q.set('state', state);
    if (after) q.set('after', after);
    last = (await api('GET', `/api/sinks/${enc(name)}/messages?${q}`)).data;
    older.disabled = last.length < PAGE;
    newer.disabled = cursors.length === 0;
    info.textContent = `Page ${cursors.length + 1} · ${last.length} message${last.length === 1 ? '' : 's'}`;
    if (!changed([after, last])) return;
    fill(tbody, last.length ? last.map((m) => row(name, m)) :
      h('tr', {}, h('td', {colspan: 9, class: 'muted empty'}, 'No messages' + (state ? ' in this state' : ' waiting') + '.')));
  };
  let stop = poll(load, 3000, onError);
  const restart = () => { stop(); stop = poll(load, 3000, onError); };
  older.addEventListener('click', () => { cursors.push(after); after = String(last[last.length - 1].id); restart(); });
  newer.addEventListener('click', () => { after = cursors.pop() || ''; restart(); });

  const redeliverAll = h('button', {type: 'button'}, 'Redeliver all failed');
  redeliverAll.addEventListener('click', () => busy(redeliverAll, async () => {
    const r = await api('POST', `/api/sinks/${enc(name)}/redeliver`);
    notify(`${num(r.redelivered)} message${r.redelivered === 1 ? '' : 's'} will be delivered again now.`);
    restart();
  }));
  const filter = h('div', {class: 'segmented', role: 'group', 'aria-label': 'Filter by state'},
    STATES.map(([v, label]) => h('a', {href: `#/sinks/${enc(name)}/messages${v ? '?state=' + v : ''}`,
      class: 'seg', 'aria-current': v === state ? 'true' : null}, label)));
  const el = h('section', {'aria-label': 'Messages'},
    h('div', {class: 'toolbar'}, filter, h('span', {class: 'spacer'}), redeliverAll),
    h('div', {class: 'scroll'}, h('table', {class: 'grid messages'},
      h('thead', {}, h('tr', {}, ['Id', 'Group', 'State', 'Attempts', 'Last status', 'Last error', 'Next attempt', 'Commit time', '']
        .map((c, i) => h('th', {scope: 'col', class: [0, 3, 4].includes(i) ? 'num' : null}, c)))),
      tbody)),
    h('div', {class: 'pager'}, newer, info, older));
  return {el, stop: () => stop()};
}

// nextAttempt is when the message goes again; failed and delivered
// messages do not go again by themselves.
export function nextAttempt(m) {
  if (m.state === 'failed') return h('span', {class: 'muted'}, 'not until redelivered');
  if (m.state === 'delivered' || m.state === 'in_flight') return h('span', {class: 'muted'}, '—');
  return time(m.not_before);
}

function row(sink, m) {
  const href = `#/sinks/${enc(sink)}/messages/${m.id}`;
  return h('tr', {'data-message': m.id, 'data-state': m.state, 'data-group': m.group},
    h('td', {class: 'num'}, h('a', {href, 'data-key': 'id:' + m.id}, String(m.id))),
    h('td', {class: 'ellipsis', title: m.group}, m.group),
    h('td', {}, badge(m.state)),
    h('td', {class: 'num'}, num(m.deliver_count)),
    h('td', {class: 'num'}, m.last_status ?? '—'),
    h('td', {class: 'ellipsis error-text', title: m.last_error || ''}, m.last_error || '—'),
    h('td', {}, nextAttempt(m)),
    h('td', {}, time(commitTime(m))),
    h('td', {}, h('a', {href, class: 'small', 'aria-label': `Open message ${m.id}`, 'data-key': 'open:' + m.id}, 'Open')));
}

// progress is a bar of rows processed of the estimated total.
export function progress(b) {
  const done = b.state === 'done';
  const pct = done ? 100 : b.rows_total > 0 ? Math.min(100, Math.floor((100 * b.rows_processed) / b.rows_total)) : 0;
  const rows = b.rows_total > 0 ? `${num(b.rows_processed)} of ~${num(b.rows_total)} rows` : `${num(b.rows_processed)} rows`;
  const label = done ? `done · ${num(b.rows_processed)} rows` : b.state === 'running' ? rows : `stopped at ${rows}`;
  // Set through the CSSOM: the page's CSP forbids style attributes.
  const bar = h('div', {class: 'fill'});
  bar.style.width = pct + '%';
  return h('div', {class: 'progress' + (done ? ' done' : ''), role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100,
    'aria-valuenow': pct, 'aria-valuetext': label}, bar, h('span', {}, label));
}

function backfills(name, onError) {
  const list = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const changed = changes();
  const load = async () => {
    const items = (await api('GET', `/api/sinks/${enc(name)}/backfills`)).data || [];
    if (!changed(items)) return;
    if (!items.length) { fill(list, h('p', {class: 'muted'}, 'No backfills yet.')); return; }
    fill(list, h('div', {class: 'scroll'}, h('table', {class: 'grid backfills'},
      h('thead', {}, h('tr', {}, ['Id', 'State', 'Tables', 'Progress', 'Started', ''].map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, items.map((b) => {
        const cancel = b.state === 'running' ? h('button', {type: 'button', class: 'secondary small', 'data-key': 'cancel:' + b.id, 'aria-label': `Cancel backfill ${b.id}`}, 'Cancel') : null;
        if (cancel) cancel.addEventListener('click', () => busy(cancel, async () => {
          await api('DELETE', `/api/sinks/${enc(name)}/backfills/${b.id}`);
          notify(`Backfill ${b.id} cancelled.`);
          await load();
        }));
        return h('tr', {'data-backfill': b.id, 'data-state': b.state},
          h('td', {class: 'num'}, String(b.id)),
          h('td', {}, badge(b.state), b.error ? h('div', {class: 'error-text'}, b.error) : null),
          h('td', {class: 'wrap'}, (b.tables || []).join(', ') || 'all of the sink\'s tables', b.column ? h('div', {class: 'muted'}, `${b.column} ≥ ${b.from}`) : null),
          h('td', {class: 'progress-cell'}, progress(b)),
          h('td', {}, time(b.created_at)),
          h('td', {}, cancel));
      })))));
  };
  const stop = poll(load, 1000, onError);
  const tables = h('input', {type: 'text', name: 'tables', placeholder: 'public.orders, public.items', autocomplete: 'off'});
  const column = h('input', {type: 'text', name: 'column', placeholder: 'updated_at', autocomplete: 'off'});
  const from = h('input', {type: 'text', name: 'from', placeholder: '2024-01-01', autocomplete: 'off'});
  const submit = h('button', {type: 'submit'}, 'Start backfill');
  const form = h('form', {class: 'inline-form', 'aria-label': 'Start a backfill'},
    field('Tables', tables, 'comma-separated; empty: all of the sink\'s tables'),
    field('Column', column, 'optional: copy only rows where column ≥ from'),
    field('From', from), h('div', {class: 'actions'}, submit));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = {};
    const t = tables.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (t.length) body.tables = t;
    if (column.value.trim()) body.column = column.value.trim();
    if (from.value.trim()) body.from = from.value.trim();
    busy(submit, async () => {
      const b = await api('POST', `/api/sinks/${enc(name)}/backfills`, body);
      notify(`Backfill ${b.id} started.`);
      form.reset();
      await load();
    });
  });
  return {el: h('section', {'aria-label': 'Backfills'}, h('h2', {}, 'Start a backfill'), form, h('h2', {}, 'Backfills'), list), stop};
}

// replays starts a replay of a time window. The answer is either a job
// ({id, state, ...}) or a count of what was enqueued; both are shown.
function replays(name, onError) {
  const from = h('input', {type: 'datetime-local', name: 'from', step: 1, required: true});
  const to = h('input', {type: 'datetime-local', name: 'to', step: 1});
  const submit = h('button', {type: 'submit'}, 'Replay');
  const result = h('div', {'aria-live': 'polite'});
  const jobs = h('div');
  const form = h('form', {class: 'inline-form', 'aria-label': 'Replay a time window'},
    field('From (local time)', from), field('To (local time)', to, 'empty: up to now'), h('div', {class: 'actions'}, submit));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = {from: new Date(from.value).toISOString()};
    if (to.value) body.to = new Date(to.value).toISOString();
    busy(submit, async () => {
      const r = await api('POST', `/api/sinks/${enc(name)}/replays`, body);
      if (r && r.id !== undefined) {
        fill(result, h('p', {class: 'ok'}, `Replay ${r.id} is ${r.state}.`));
        await loadJobs();
      } else {
        fill(result, h('p', {class: 'ok'}, `Enqueued ${num(r.messages)} message${r.messages === 1 ? '' : 's'} (of ${num(r.changes)} retained change${r.changes === 1 ? '' : 's'} in the window).`));
      }
    });
  });
  // Replays as jobs have a list; an API without one answers 404 or 405,
  // and the list is left out.
  let listed = true;
  const changed = changes();
  const loadJobs = async () => {
    if (!listed) return;
    let items;
    try {
      items = ((await api('GET', `/api/sinks/${enc(name)}/replays`)) || {}).data;
    } catch (e) {
      if (e.status === 404 || e.status === 405) { listed = false; return; }
      throw e;
    }
    if (!changed(items)) return;
    if (!Array.isArray(items) || !items.length) { fill(jobs); return; }
    fill(jobs, h('h2', {}, 'Replays'), h('div', {class: 'scroll'}, h('table', {class: 'grid'},
      h('thead', {}, h('tr', {}, ['Id', 'State', 'Window', 'Progress', 'Started'].map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, items.map((r) => h('tr', {'data-replay': r.id},
        h('td', {class: 'num'}, String(r.id)), h('td', {}, badge(r.state)),
        h('td', {}, time(r.from), ' – ', r.to ? time(r.to) : 'now'),
        h('td', {class: 'progress-cell'}, r.rows_total !== undefined ? progress(r) : num(r.messages)),
        h('td', {}, time(r.created_at))))))));
  };
  const stop = poll(loadJobs, 2000, onError);
  return {el: h('section', {'aria-label': 'Replays'}, h('h2', {}, 'Replay a time window'),
    h('p', {class: 'muted'}, 'Re-delivers retained changes (see retention in the config) committed in the window, in their original order and with their original idempotency keys.'),
    form, result, jobs), stop};
}

// setting shows one value: lists of names inline, empty ones as
// "(none)", anything structured as JSON.
function setting(v) {
  const none = h('span', {class: 'muted'}, '(none)');
  if (v === '' || v === null || v === undefined) return none;
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v.length ? v.join(', ') : none;
  if (typeof v === 'object') return Object.keys(v).length ? h('pre', {class: 'inline'}, pretty(v)) : none;
  return String(v);
}

function settings(head) {
  const dl = h('dl', {class: 'settings'}, h('p', {class: 'muted'}, 'Loading…'));
  const skip = new Set(['counts', 'status', 'name']);
  const changed = changes();
  head.onSink((s) => {
    if (!changed({...s, counts: undefined})) return;
    fill(dl, Object.entries(s).filter(([k]) => !skip.has(k)).map(([k, v]) => h('div', {},
      h('dt', {}, k.replaceAll('_', ' ')),
      h('dd', {}, k.endsWith('_at') ? time(v) : setting(v)))));
  });
  return {el: h('section', {'aria-label': 'Settings'}, h('p', {class: 'muted'}, 'Read-only here; change a sink in the config file, or with PATCH /api/sinks/{name}. Secrets are masked.'), dl),
    stop: () => {}};
}

export function sinkPage(main, name, tab, query, onError) {
  const head = header(name, onError);
  tab = TABS.some(([k]) => k === tab) ? tab : 'messages';
  const body = tab === 'messages' ? messages(name, query, onError)
    : tab === 'backfills' ? backfills(name, onError)
      : tab === 'replays' ? replays(name, onError) : settings(head);
  fill(main, h('p', {class: 'crumbs'}, h('a', {href: '#/'}, 'Overview'), ' / ', name), head.el,
    h('nav', {class: 'tabs', 'aria-label': 'Sink sections'}, TABS.map(([k, label]) =>
      h('a', {href: `#/sinks/${enc(name)}/${k}`, 'aria-current': k === tab ? 'page' : null}, label))),
    body.el);
  return () => { head.stop(); body.stop(); };
}
