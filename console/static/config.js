// HTTP endpoints, webhook sources and subscriptions. Encrypted header
// values are never shown: the API masks them, and the page shows only
// their names.

import {api, poll, enc} from './api.js';
import {h, fill, time, changes} from './ui.js';
import {sourcesTable} from './overview.js';

const MASK = '••••••••';

function headers(plain, secret) {
  const items = [
    ...Object.entries(plain || {}).map(([k, v]) => h('li', {}, h('code', {}, k + ': ' + v))),
    ...Object.keys(secret || {}).map((k) => h('li', {}, h('code', {}, k + ': '), h('span', {class: 'masked', title: 'encrypted; never shown'}, MASK))),
  ];
  return items.length ? h('ul', {class: 'plain'}, items) : h('span', {class: 'muted'}, 'none');
}

function endpoints(onError) {
  const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const changed = changes();
  const stop = poll(async () => {
    const list = (await api('GET', '/api/http_endpoints')).data;
    if (!changed(list)) return;
    fill(body, list.length ? h('div', {class: 'scroll'}, h('table', {class: 'grid'},
      h('thead', {}, h('tr', {}, ['Endpoint', 'URL', 'Headers', 'Updated'].map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, list.map((e) => h('tr', {'data-endpoint': e.name},
        h('th', {scope: 'row'}, e.name), h('td', {class: 'url'}, h('code', {}, e.url)),
        h('td', {}, headers(e.headers, e.encrypted_headers)), h('td', {}, time(e.updated_at)))))))
      : h('p', {class: 'muted'}, 'No HTTP endpoints.'));
  }, 10000, onError);
  return {el: h('section', {class: 'card wide', 'aria-labelledby': 'ep-h'}, h('h2', {id: 'ep-h'}, 'HTTP endpoints'), body), stop};
}

function subscriptions(onError) {
  const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const changed = changes();
  const stop = poll(async () => {
    const list = (await api('GET', '/api/subscriptions')).data;
    if (!changed(list)) return;
    fill(body, list.length ? h('div', {class: 'scroll'}, h('table', {class: 'grid'},
      h('thead', {}, h('tr', {}, ['Emitter', 'Listener sink', 'Since'].map((c) => h('th', {scope: 'col'}, c)))),
      h('tbody', {}, list.map((s) => h('tr', {'data-subscription': s.id},
        h('td', {}, h('code', {}, s.emitter)), h('td', {}, h('a', {href: '#/sinks/' + enc(s.listener)}, s.listener)),
        h('td', {}, time(s.created_at)))))))
      : h('p', {class: 'muted'}, 'No subscriptions.'));
  }, 10000, onError);
  return {el: h('section', {class: 'card wide', 'aria-labelledby': 'sub-h'}, h('h2', {id: 'sub-h'}, 'Subscriptions'), body), stop};
}

export function configPage(main, onError) {
  const parts = [endpoints(onError), sourcesTable(onError), subscriptions(onError)];
  fill(main, h('h1', {}, 'Endpoints and sources'), h('div', {class: 'cards'}, parts.map((p) => p.el)));
  return () => parts.forEach((p) => p.stop());
}
