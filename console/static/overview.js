// The overview: replication status, the throughput chart, every sink
// with live counts, and the webhook sources with their ingest URLs.

import {api, poll, enc} from './api.js';
import {h, fill, num, bytes, lsn, badge, copyButton, changes} from './ui.js';
import {chart, onStatus} from './chart.js';

export const COUNTS = [
  ['pending', 'Pending'], ['in_flight', 'In flight'], ['backing_off', 'Backing off'],
  ['failed', 'Failed'], ['delivered', 'Delivered'],
];

// countCells are the live count cells of one sink; update only changes
// their text, so the table never reflows while counts move.
export function countCells(tag) {
  const cells = {};
  for (const [k, label] of COUNTS) cells[k] = h(tag, {class: 'num count c-' + k, 'data-count': k, 'data-label': label}, '—');
  return {
    cells: COUNTS.map(([k]) => cells[k]),
    update(counts) {
      for (const [k] of COUNTS) {
        const text = num(counts[k]);
        if (cells[k].textContent !== text) cells[k].textContent = text;
        cells[k].classList.toggle('nonzero', counts[k] > 0);
      }
    },
  };
}

function replication() {
  const dl = h('dl', {class: 'facts'});
  const render = (s) => fill(dl,
    h('div', {}, h('dt', {}, 'This process'), h('dd', {}, s.leading ? 'leader' : 'standby')),
    h('div', {}, h('dt', {}, 'Replication'), h('dd', {'data-replication': s.replication}, badge(s.replication))),
    h('div', {}, h('dt', {}, 'Lag'), h('dd', {class: 'num'}, s.lag_bytes === null ? 'known on the leader' : bytes(s.lag_bytes))),
    h('div', {}, h('dt', {}, 'Confirmed LSN'), h('dd', {class: 'num'}, lsn(s.confirmed_lsn))),
    h('div', {}, h('dt', {}, 'State database'), h('dd', {}, badge(s.state_db))));
  render({leading: false, replication: '…', lag_bytes: null, confirmed_lsn: null, state_db: '…'});
  const off = onStatus(render);
  return {el: h('section', {class: 'card', 'aria-labelledby': 'repl-h'}, h('h2', {id: 'repl-h'}, 'Replication'), dl), stop: off};
}

function target(s) {
  if (s.kind === 'pull') return h('span', {class: 'muted'}, 'pull (consumers receive)');
  return h('span', {}, s.endpoint, s.path ? h('span', {class: 'muted'}, ' ' + s.path) : null);
}

function sinksTable(onError) {
  const tbody = h('tbody');
  const rows = new Map(); // name -> {tr, update}
  const changed = changes();
  const table = h('table', {class: 'grid sinks'},
    h('caption', {class: 'offscreen'}, 'Sinks and their messages by state'),
    h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Sink'), h('th', {scope: 'col'}, 'State'),
      h('th', {scope: 'col'}, 'Endpoint'), h('th', {scope: 'col'}, 'Tables and sources'),
      COUNTS.map(([, label]) => h('th', {scope: 'col', class: 'num'}, label)))),
    tbody);
  const empty = h('p', {class: 'muted', hidden: true}, 'No sinks yet. Add one to the config file or with POST /api/sinks.');
  const stop = poll(async () => {
    const list = (await api('GET', '/api/sinks')).data;
    // Rebuild rows only when the sinks or their settings change.
    if (changed(list.map((s) => [s.name, s.status, s.endpoint, s.path, s.kind, s.tables, s.webhook_sources]))) {
      rows.clear();
      fill(tbody, list.map((s) => {
        const c = countCells('td');
        const tr = h('tr', {'data-sink': s.name},
          h('th', {scope: 'row'}, h('a', {href: '#/sinks/' + enc(s.name), 'data-key': 'sink:' + s.name}, s.name)),
          h('td', {'data-label': 'State'}, badge(s.status)), h('td', {'data-label': 'Endpoint'}, target(s)),
          h('td', {class: 'wrap', 'data-label': 'Tables and sources'}, [...s.tables, ...s.webhook_sources.map((w) => 'webhook:' + w)].join(', ') || '—'),
          c.cells);
        rows.set(s.name, c);
        return tr;
      }));
      empty.hidden = list.length > 0;
    }
    for (const s of list) rows.get(s.name).update(s.counts);
  }, 2000, onError);
  return {el: h('section', {class: 'card wide', 'aria-labelledby': 'sinks-h'}, h('h2', {id: 'sinks-h'}, 'Sinks'),
    h('div', {class: 'scroll'}, table), empty), stop};
}

// sourcesTable lists webhook sources with their ingest URL and a copy
// button; the endpoints page shows it too.
export function sourcesTable(onError) {
  const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const changed = changes();
  const stop = poll(async () => {
    const list = (await api('GET', '/api/webhook_sources')).data;
    if (!changed(list)) return;
    if (!list.length) {
      fill(body, h('p', {class: 'muted'}, 'No webhook sources. `walhook source webhook add NAME` makes one.'));
      return;
    }
    fill(body, h('div', {class: 'scroll'}, h('table', {class: 'grid'},
      h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Source'), h('th', {scope: 'col'}, 'Ingest URL'),
        h('th', {scope: 'col'}, 'Sinks'), h('th', {scope: 'col', class: 'num'}, 'Max body'))),
      h('tbody', {}, list.map((w) => h('tr', {'data-source': w.name},
        h('th', {scope: 'row'}, w.name),
        h('td', {class: 'url'}, h('code', {}, w.url), ' ', copyButton(w.url)),
        h('td', {}, w.sinks.length ? w.sinks.map((s, i) => [i ? ', ' : '', h('a', {href: '#/sinks/' + enc(s)}, s)]) : h('span', {class: 'muted'}, 'none')),
        h('td', {class: 'num'}, bytes(w.max_body_bytes))))))));
  }, 10000, onError);
  return {el: h('section', {class: 'card wide', 'aria-labelledby': 'src-h'}, h('h2', {id: 'src-h'}, 'Webhook sources'), body), stop};
}

export function overview(main, onError) {
  const parts = [replication(), chart(), sinksTable(onError), sourcesTable(onError)];
  fill(main, h('h1', {}, 'Overview'), h('div', {class: 'cards'}, parts.map((p) => p.el)));
  return () => parts.forEach((p) => p.stop());
}
