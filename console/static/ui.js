// DOM helpers shared by the views. Everything is built with
// createElement and textContent, never innerHTML, so payloads and error
// texts from the API cannot inject markup.

// h builds an element: h('a', {href: '#/'}, 'text', child, [more]).
// Attributes starting with "on" become listeners; class, for and
// dataset-like "data-*" names are set as attributes.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// fill replaces el's content with children. Polled views redraw with
// it, so the element that had the focus gets it back when the new content
// has one with the same data-key: keyboard users keep their place.
export function fill(el, ...children) {
  const active = document.activeElement;
  const key = active && el.contains(active) ? active.dataset.key : undefined;
  el.replaceChildren();
  append(el, children);
  if (key !== undefined) {
    const again = [...el.querySelectorAll('[data-key]')].find((e) => e.dataset.key === key);
    if (again) again.focus({preventScroll: true});
  }
  return el;
}

// changes returns a check that is true when its argument differs from
// the previous one, so a poll redraws only when there is news.
export function changes() {
  let last;
  return (v) => {
    const s = JSON.stringify(v);
    if (s === last) return false;
    last = s;
    return true;
  };
}

const local = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'medium'});

// time shows an RFC 3339 value in local time; hovering shows it in UTC.
export function time(iso) {
  if (!iso) return h('span', {class: 'muted'}, '—');
  const d = new Date(iso);
  if (isNaN(d)) return h('span', {}, String(iso));
  return h('time', {datetime: d.toISOString(), title: d.toISOString().replace('T', ' ').replace('Z', ' UTC')}, local.format(d));
}

// num formats a count with grouping, in tabular digits (see CSS).
export function num(n) {
  return n === undefined || n === null ? '—' : Number(n).toLocaleString();
}

// bytes formats a byte count for humans.
export function bytes(n) {
  if (n === undefined || n === null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
}

// lsn shows a position the way Postgres does (X/Y in hex).
export function lsn(n) {
  if (n === undefined || n === null) return '—';
  const big = BigInt(n);
  return (big >> 32n).toString(16).toUpperCase() + '/' + (big & 0xffffffffn).toString(16).toUpperCase();
}

export function badge(state) {
  return h('span', {class: 'badge b-' + String(state).replace(/[^a-z_]/g, '')}, String(state).replace('_', ' '));
}

// notify shows a message in the toast area. Errors stay until dismissed,
// so a failed action is never missed; others go after a few seconds.
export function notify(text, kind = 'info') {
  const area = document.getElementById('toasts');
  const t = h('div', {class: 'toast t-' + kind, role: kind === 'error' ? 'alert' : 'status'},
    h('span', {}, text),
    h('button', {type: 'button', class: 'link', 'aria-label': 'Dismiss', onclick: () => t.remove()}, '×'));
  area.append(t);
  if (kind !== 'error') setTimeout(() => t.remove(), 5000);
  return t;
}

// copyButton copies text to the clipboard, with a fallback for pages not
// served from a secure context (the Clipboard API needs one).
export function copyButton(text, label = 'Copy') {
  const b = h('button', {type: 'button', class: 'small', 'aria-label': label + ' ' + text, 'data-key': 'copy:' + text}, label);
  b.addEventListener('click', async () => {
    try {
      if (navigator.clipboard && window.isSecureContext) await navigator.clipboard.writeText(text);
      else {
        const ta = h('textarea', {class: 'offscreen', readonly: true}, text);
        document.body.append(ta);
        ta.select();
        const ok = document.execCommand('copy');
        ta.remove();
        if (!ok) throw new Error('the browser refused');
      }
      b.textContent = 'Copied';
      setTimeout(() => { b.textContent = label; }, 1500);
    } catch (e) {
      notify('Could not copy: ' + e.message, 'error');
    }
  });
  return b;
}

// json pretty-prints a value for a <pre>.
export function pretty(v) {
  try { return JSON.stringify(v, null, 2); } catch { return String(v); }
}

// field is a labelled form control.
export function field(label, control, hint) {
  const id = control.id || ('f' + Math.random().toString(36).slice(2));
  control.id = id;
  return h('div', {class: 'field'}, h('label', {for: id}, label), control, hint ? h('small', {class: 'muted'}, hint) : null);
}

// busy disables a button while an action runs and reports its failure.
export async function busy(button, action) {
  button.disabled = true;
  try {
    return await action();
  } catch (e) {
    notify(e.message, 'error');
    return undefined;
  } finally {
    button.disabled = false;
  }
}
