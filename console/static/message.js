// One message: its state and attempts, the payload pretty-printed, and a
// redeliver button. The page follows the message until it is delivered.

import {api, poll, enc} from './api.js';
import {h, fill, num, badge, time, notify, busy, pretty, changes} from './ui.js';
import {commitTime, nextAttempt} from './sink.js';

const REDELIVERABLE = new Set(['failed', 'backing_off']);

export function messagePage(main, sink, id, onError) {
  const facts = h('dl', {class: 'facts detail'});
  const payload = h('pre', {class: 'payload', tabindex: 0, 'aria-label': 'Payload'});
  const lastError = h('div', {class: 'last-error'});
  const redeliver = h('button', {type: 'button', id: 'redeliver', disabled: true}, 'Redeliver now');
  const why = h('small', {class: 'muted'});
  let seen = false;
  const changed = changes();

  const render = (m) => {
    seen = true;
    const can = REDELIVERABLE.has(m.state);
    redeliver.disabled = !can;
    why.textContent = can ? '' : m.state === 'delivered' ? 'Delivered already; a replay delivers it again.' : 'It is on its way already.';
    if (!changed(m)) return;
    const md = (m.message && m.message.metadata) || {};
    fill(facts,
      h('div', {}, h('dt', {}, 'State'), h('dd', {'data-field': 'state'}, badge(m.state))),
      h('div', {}, h('dt', {}, 'Group'), h('dd', {}, h('code', {}, m.group))),
      h('div', {}, h('dt', {}, 'Attempts'), h('dd', {class: 'num', 'data-field': 'deliver_count'}, num(m.deliver_count))),
      h('div', {}, h('dt', {}, 'First attempt'), h('dd', {}, time(m.first_attempt_at))),
      h('div', {}, h('dt', {}, 'Last attempt'), h('dd', {}, time(m.last_attempt_at))),
      h('div', {}, h('dt', {}, 'Last status'), h('dd', {class: 'num', 'data-field': 'last_status'}, m.last_status ?? '—')),
      h('div', {}, h('dt', {}, 'Next attempt'), h('dd', {}, nextAttempt(m))),
      h('div', {}, h('dt', {}, 'Commit time'), h('dd', {}, time(commitTime(m)))),
      h('div', {}, h('dt', {}, 'Commit LSN · index'), h('dd', {class: 'num'}, `${m.commit_lsn} · ${m.commit_idx ?? 0}`)),
      h('div', {}, h('dt', {}, 'Idempotency key'), h('dd', {}, h('code', {}, md.idempotency_key || '—'))),
      m.failed_at ? h('div', {}, h('dt', {}, 'Failed at'), h('dd', {}, time(m.failed_at))) : null,
      m.delivered_at ? h('div', {}, h('dt', {}, 'Delivered at'), h('dd', {}, time(m.delivered_at))) : null);
    fill(lastError, m.last_error
      ? [h('h2', {}, 'Last error'), h('pre', {class: 'error-text', 'data-field': 'last_error'}, m.last_error)]
      : null);
    fill(payload, pretty(m.message));
  };

  const load = async () => {
    try {
      render(await api('GET', `/api/sinks/${enc(sink)}/messages/${enc(id)}`));
    } catch (e) {
      // Right after delivery a message is briefly in neither the outbox
      // nor the history; keep the last view until it shows up.
      if (e.status === 404 && seen) return;
      if (e.status === 404) fill(facts, h('p', {class: 'error-text', role: 'alert'}, e.message));
      else throw e;
    }
  };
  const stop = poll(load, 1500, onError);
  redeliver.addEventListener('click', () => busy(redeliver, async () => {
    const m = await api('POST', `/api/sinks/${enc(sink)}/messages/${enc(id)}/redeliver`);
    notify(`Message ${id} will be delivered again now.`);
    render(m);
  }));

  fill(main,
    h('p', {class: 'crumbs'}, h('a', {href: '#/'}, 'Overview'), ' / ', h('a', {href: `#/sinks/${enc(sink)}`}, sink), ' / message ', id),
    h('div', {class: 'title'}, h('h1', {}, `Message ${id}`), redeliver, why),
    h('div', {class: 'detail-grid'},
      h('section', {class: 'card', 'aria-label': 'Delivery'}, facts, lastError),
      h('section', {class: 'card', 'aria-labelledby': 'payload-h'}, h('h2', {id: 'payload-h'}, 'Payload'), payload)));
  return stop;
}
