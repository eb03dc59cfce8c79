// Throughput and latency over the last minutes, from GET /api/status.
// The server reports running totals; the rate between two polls is their
// difference over the time between them. Samples are kept in this module,
// so the chart keeps its history while the user looks at other pages.

import {api, poll} from './api.js';
import {h, fill} from './ui.js';

const WINDOW_MS = 5 * 60 * 1000;
const EVERY_MS = 2000;
const SVG = 'http://www.w3.org/2000/svg';

const samples = []; // {t, rate, latency}
let last = null;
let latest = null;
const listeners = new Set();
let stopPoll = null;

// startStatus polls the status while signed in; onStatus listeners get
// every answer.
export function startStatus() {
  if (stopPoll) return;
  stopPoll = poll(async () => {
    const s = await api('GET', '/api/status');
    const t = Date.parse(s.time) || Date.now();
    if (last && t > last.t) {
      const dt = (t - last.t) / 1000;
      const n = s.latency_count - last.count;
      samples.push({
        t,
        rate: Math.max(0, (s.delivered_total - last.delivered) / dt),
        latency: n > 0 ? ((s.latency_seconds_sum - last.sum) / n) * 1000 : null,
      });
      while (samples.length && samples[0].t < t - WINDOW_MS) samples.shift();
    }
    last = {t, delivered: s.delivered_total, count: s.latency_count, sum: s.latency_seconds_sum};
    latest = s;
    for (const f of listeners) f(s);
  }, EVERY_MS);
}

export function stopStatus() {
  if (stopPoll) stopPoll();
  stopPoll = null;
  samples.length = 0;
  last = latest = null;
}

// onStatus calls f with every status (now, if one is known); it returns
// the unsubscribe function.
export function onStatus(f) {
  listeners.add(f);
  if (latest) f(latest);
  return () => listeners.delete(f);
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// spark draws one series into a fixed-size SVG, so redraws never move
// the page.
function spark(values, label, unit, digits) {
  const W = 300, H = 60;
  const known = values.filter((v) => v.v !== null);
  const max = Math.max(1e-9, ...known.map((v) => v.v));
  // Until the window is full, the samples so far span the width.
  const now = values.length ? values[values.length - 1].t : Date.now();
  const span = values.length > 1 ? Math.min(WINDOW_MS, now - values[0].t) : WINDOW_MS;
  const x = (t) => W - ((now - t) / span) * W;
  const y = (v) => H - 2 - (v / max) * (H - 6);
  const el = svg('svg', {viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', class: 'spark', role: 'img'});
  // The latest interval's value: no deliveries in it means no latency.
  const cur = values.length ? values[values.length - 1].v : null;
  el.setAttribute('aria-label', `${label}: ${cur === null ? 'no data yet' : cur.toFixed(digits) + ' ' + unit}`);
  el.append(svg('line', {x1: 0, x2: W, y1: H - 1, y2: H - 1, class: 'axis'}));
  if (known.length > 1) {
    const pts = known.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
    el.append(svg('polygon', {points: `${x(known[0].t).toFixed(1)},${H - 1} ${pts.join(' ')} ${x(known[known.length - 1].t).toFixed(1)},${H - 1}`, class: 'area'}));
    el.append(svg('polyline', {points: pts.join(' '), class: 'line'}));
  }
  const value = cur === null ? '—' : cur.toFixed(digits);
  return h('figure', {class: 'chart'},
    h('figcaption', {}, h('span', {}, label), h('strong', {class: 'num'}, value, ' ', h('small', {}, unit)),
      h('small', {class: 'muted'}, 'max ' + (known.length ? max.toFixed(digits) : '—'))),
    el);
}

// chart is the overview's card; it redraws on every status.
export function chart() {
  const body = h('div', {class: 'charts'});
  const draw = () => fill(body,
    spark(samples.map((s) => ({t: s.t, v: s.rate})), 'Delivered', 'msg/s', 1),
    spark(samples.map((s) => ({t: s.t, v: s.latency})), 'Latency, commit to ack (mean)', 'ms', 0));
  draw();
  const off = onStatus(draw);
  return {el: h('section', {class: 'card span2', 'aria-labelledby': 'chart-h'},
    h('h2', {id: 'chart-h'}, 'Last 5 minutes ', h('small', {class: 'muted'}, '(this process)')), body), stop: off};
}
