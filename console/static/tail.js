// The live tail: messages as they enter the outbox, from the observe
// stream (SSE over fetch, to send the token), optionally of one sink.

import {api, stream, enc} from './api.js';
import {h, fill, time, pretty} from './ui.js';

const KEEP = 200;

function summary(ev) {
  const m = ev.message || {};
  const md = m.metadata || {};
  const what = md.webhook ? 'webhook ' + md.webhook : [md.table_schema, md.table_name].filter(Boolean).join('.');
  return [m.action || '', what];
}

export function tailPage(main, query, onError) {
  const sink = query.get('sink') || '';
  const status = h('span', {class: 'conn', role: 'status'}, 'Connecting…');
  const pause = h('button', {type: 'button', class: 'secondary', 'aria-pressed': 'false'}, 'Pause');
  const clear = h('button', {type: 'button', class: 'secondary'}, 'Clear');
  const select = h('select', {id: 'tail-sink', name: 'sink'}, h('option', {value: ''}, 'All sinks'),
    sink ? h('option', {value: sink, selected: true}, sink) : null);
  const tbody = h('tbody');
  const empty = h('p', {class: 'muted'}, 'Waiting for messages… Make a change in a captured table, or post to a webhook source.');
  let paused = false;
  let count = 0;

  api('GET', '/api/sinks').then((r) => {
    fill(select, h('option', {value: ''}, 'All sinks'),
      r.data.map((s) => h('option', {value: s.name, selected: s.name === sink}, s.name)));
  }).catch(onError);
  select.addEventListener('change', () => { location.hash = '#/tail' + (select.value ? '?sink=' + enc(select.value) : ''); });
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
  });
  clear.addEventListener('click', () => { tbody.replaceChildren(); count = 0; empty.hidden = false; });

  const add = (ev) => {
    if (paused) return;
    const [action, what] = summary(ev);
    const at = new Date().toISOString();
    const tr = h('tr', {'data-message': ev.id, 'data-sink': ev.sink},
      h('td', {}, time(at)), h('td', {}, h('a', {href: `#/sinks/${enc(ev.sink)}/messages/${ev.id}`}, ev.sink)),
      h('td', {class: 'num'}, String(ev.id)), h('td', {}, action), h('td', {}, what),
      h('td', {class: 'ellipsis', title: ev.group}, ev.group),
      h('td', {class: 'record'}, h('details', {}, h('summary', {}, JSON.stringify((ev.message || {}).record ?? ev.message).slice(0, 120)),
        h('pre', {}, pretty(ev.message)))));
    tbody.prepend(tr);
    empty.hidden = true;
    if (++count > KEEP) { tbody.lastElementChild.remove(); count--; }
  };

  // Reconnect with a growing pause; a 401 signs out (api.js) and ends it.
  const ctl = new AbortController();
  (async () => {
    let wait = 500;
    while (!ctl.signal.aborted) {
      try {
        status.textContent = 'Connecting…';
        status.dataset.state = 'connecting';
        await stream('/api/observe' + (sink ? '?sink=' + enc(sink) : ''), (name, data) => {
          if (name === 'message') add(data);
          else if (name === 'error' || name === 'end') {
            status.textContent = 'Stream ended: ' + ((data.error && data.error.message) || data.reason || name);
          }
        }, ctl.signal, () => {
          status.textContent = 'Live' + (sink ? ' · ' + sink : ' · all sinks');
          status.dataset.state = 'live';
          wait = 500;
        });
      } catch (e) {
        if (ctl.signal.aborted || e.status === 401) return;
        status.dataset.state = 'down';
        status.textContent = 'Disconnected: ' + e.message + ' Reconnecting…';
        if (e.status === 404) return;
      }
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(wait * 2, 10000);
    }
  })();

  fill(main, h('h1', {}, 'Live tail'),
    h('div', {class: 'toolbar'}, h('label', {for: 'tail-sink'}, 'Sink'), select, status, h('span', {class: 'spacer'}), pause, clear),
    h('div', {class: 'scroll'}, h('table', {class: 'grid tail'},
      h('thead', {}, h('tr', {}, ['Seen', 'Sink', 'Id', 'Action', 'Source', 'Group', 'Record'].map((c) => h('th', {scope: 'col'}, c)))),
      tbody)), empty);
  return () => ctl.abort();
}
