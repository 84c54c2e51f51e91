// stockline console: a small script over the server's own REST API (/api/v1), served by
// the binary. No framework: pages are built with DOM calls (never innerHTML from data),
// polled once a second where they are live, and every error shows the API's message.
'use strict';

const TOKEN = 'stockline.token';
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const notice = document.getElementById('notice');

// Who is signed in: {user, shops} (shops null: an operator or admin, everything).
let session = null;
// The current page's poller; stopped when the page changes.
let poller = null;

// ---- DOM ----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function page(title, ...children) {
  main.replaceChildren(el('h1', {}, title), ...children);
  return main;
}

function table(columns, rows, empty) {
  if (!rows.length) return el('p', { class: 'muted' }, empty || 'Nothing here.');
  return el('div', { class: 'scroll' }, el('table', {},
    el('thead', {}, el('tr', {}, columns.map(c => el('th', { class: c.num ? 'num' : null, scope: 'col' }, c.title)))),
    el('tbody', {}, rows.map(row => el('tr', row.attrs || {},
      columns.map(c => el('td', { class: c.num ? 'num' : null }, c.cell(row))))))));
}

function sparkline(values, label) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 120 24');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const top = Math.max(1, ...values);
  const step = values.length > 1 ? 120 / (values.length - 1) : 0;
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('class', 'spark');
  line.setAttribute('points', values.map((v, i) => `${(i * step).toFixed(1)},${(23 - (v / top) * 22).toFixed(1)}`).join(' '));
  svg.append(line);
  return svg;
}

function card(label, value, sub, extra) {
  return el('div', { class: 'card' },
    el('div', { class: 'label' }, label),
    el('div', { class: 'value', 'data-card': label }, value),
    sub ? el('div', { class: 'sub' }, sub) : null,
    extra || null);
}

function say(message, bad) {
  notice.textContent = message;
  notice.className = bad ? 'notice bad' : 'notice';
  notice.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { notice.hidden = true; }, 6000);
}

// ---- formatting ---------------------------------------------------------------------

const num = n => (n === null || n === undefined) ? '–' : Number(n).toLocaleString('en');
const fixed = (n, digits) => (n === null || n === undefined) ? '–' : Number(n).toFixed(digits);
const money = cents => (cents / 100).toFixed(2);
const when = at => at ? new Date(at).toLocaleString('en-GB', { hour12: false }) : '–';
const short = id => String(id).slice(-8);

function inSeconds(at) {
  const s = Math.round((new Date(at) - Date.now()) / 1000);
  return s >= 0 ? `in ${s} s` : `${-s} s ago`;
}

// ---- the API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(response.status, error.code || 'error',
      error.message || `${response.status} ${response.statusText}`, error.details);
    if (response.status === 401 && session) signedOut(failure.message);
    throw failure;
  }
  return data;
}

// A form whose submit calls `action(values)`; the API's message shows in the form.
function form(attrs, fields, submit, action) {
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  const button = el('button', { type: 'submit' }, submit);
  const node = el('form', Object.assign({ class: 'inline' }, attrs), fields, button, error);
  node.addEventListener('submit', async event => {
    event.preventDefault();
    error.hidden = true;
    button.disabled = true;
    try {
      await action(Object.fromEntries(new FormData(node).entries()), node);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  return node;
}

function field(label, name, attrs) {
  return el('label', {}, label, el('input', Object.assign({ name }, attrs || {})));
}

function choice(label, name, options, selected) {
  return el('label', {}, label, el('select', { name },
    options.map(([value, text]) => el('option', { value, selected: String(value) === String(selected) }, text))));
}

const int = value => value === '' || value === undefined ? undefined : Number(value);

// ---- polling ------------------------------------------------------------------------

// Runs `tick` now and then every `ms` (never two at once) until the page changes. The
// `live` element shows whether the last tick succeeded.
function every(ms, tick, live) {
  const mine = { stopped: false };
  poller = mine;
  const run = async () => {
    if (mine.stopped) return;
    try {
      await tick();
      if (live) { live.textContent = '● live'; live.className = 'live'; }
    } catch (e) {
      if (live) { live.textContent = `● ${e.message}`; live.className = 'live stale'; }
    }
    if (!mine.stopped) mine.timer = setTimeout(run, ms);
  };
  run();
}

function stopPolling() {
  if (poller) { poller.stopped = true; clearTimeout(poller.timer); poller = null; }
}

// ---- sign-in ------------------------------------------------------------------------

function signIn(message) {
  nav.hidden = true;
  who.replaceChildren();
  const error = el('p', { class: 'error', role: 'alert', hidden: !message }, message || '');
  const totp = el('label', { hidden: true }, 'Authenticator code',
    el('input', { name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]*' }));
  const node = el('form', { class: 'signin', id: 'signin' },
    el('h1', {}, 'Sign in to stockline'),
    el('p', { class: 'muted' }, 'For operators, admins and shop members.'),
    field('Email or phone', 'login', { autocomplete: 'username', required: true, autofocus: true }),
    field('Password', 'password', { type: 'password', autocomplete: 'current-password', required: true }),
    totp,
    el('button', { type: 'submit' }, 'Sign in'),
    error);
  node.addEventListener('submit', async event => {
    event.preventDefault();
    error.hidden = true;
    const values = Object.fromEntries(new FormData(node).entries());
    const body = { login: values.login, password: values.password };
    if (values.totp) body.totp = values.totp;
    try {
      const answer = await api('POST', '/auth/login', body);
      sessionStorage.setItem(TOKEN, answer.token);
      await start();
    } catch (e) {
      if (e.code === 'totp_required') {
        totp.hidden = false;
        totp.querySelector('input').focus();
      }
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  main.replaceChildren(node);
  node.querySelector('input').focus();
}

async function start() {
  let user, overview;
  try {
    user = await api('GET', '/auth/me');
    overview = await api('GET', '/admin/overview');
  } catch (e) {
    if (e.status === 403) {
      await signOut('This console is for operators, admins and shop members; this account may not use it.');
    } else {
      sessionStorage.removeItem(TOKEN);
      signIn(e.message);
    }
    return;
  }
  session = { user, shops: overview.shops };
  showNav();
  if (!location.hash || location.hash === '#' || location.hash === '#/signin') location.hash = firstPage();
  else route();
}

async function signOut(message) {
  stopPolling();
  try { if (sessionStorage.getItem(TOKEN)) await api('POST', '/auth/logout'); } catch (e) { /* gone anyway */ }
  sessionStorage.removeItem(TOKEN);
  session = null;
  signIn(message);
}

function signedOut(message) {
  stopPolling();
  sessionStorage.removeItem(TOKEN);
  session = null;
  signIn(`Signed out: ${message}`);
}

// ---- navigation ---------------------------------------------------------------------

const PAGES = [
  { path: 'overview', title: 'Overview', key: 'o', render: overviewPage, operator: true },
  { path: 'lines', title: 'Hot lines', key: 'h', render: linesPage },
  { path: 'inventory', title: 'Inventory', key: 'i', render: inventoryPage },
  { path: 'orders', title: 'Orders', key: 'r', render: ordersPage, operator: true },
  { path: 'products', title: 'Products', key: 'p', render: productsPage, operator: true },
  { path: 'warehouses', title: 'Warehouses', key: 'w', render: warehousesPage },
  { path: 'alerts', title: 'Alerts', key: 'a', render: alertsPage },
  { path: 'cluster', title: 'Cluster', key: 'c', render: clusterPage, operator: true },
];

const allowed = p => !p.operator || (session && session.shops === null);
const firstPage = () => `#/${PAGES.find(allowed).path}`;

function showNav() {
  nav.replaceChildren(...PAGES.filter(allowed).map(p =>
    el('a', { href: `#/${p.path}`, 'data-page': p.path }, p.title)));
  nav.hidden = false;
  const shops = session.shops ? ` · shop ${session.shops.join(', ')}` : '';
  who.replaceChildren(
    el('span', {}, `${session.user.email} (${session.user.role}${shops})`),
    el('button', { class: 'secondary', type: 'button', onclick: () => signOut('Signed out.') }, 'Sign out'));
}

// `#/name/arg?x=1` -> {name, arg, query}
function location_() {
  const [path, search] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, arg] = path.split('/');
  return { name, arg: arg ? decodeURIComponent(arg) : undefined, query: new URLSearchParams(search || '') };
}

async function route() {
  stopPolling();
  if (!session) return;
  const here = location_();
  const target = PAGES.find(p => p.path === here.name && allowed(p));
  if (!target) { location.hash = firstPage(); return; }
  for (const link of nav.querySelectorAll('a')) {
    if (link.dataset.page === target.path) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${target.title} · stockline`;
  try {
    await target.render(here);
  } catch (e) {
    page(target.title, el('p', { class: 'error', role: 'alert' }, e.message));
  }
  main.focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);

// g + letter goes to a page; / focuses the page's search; ? shows the keys.
let pendingG = false;
document.addEventListener('keydown', event => {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName);
  const keys = document.getElementById('keys');
  if (event.key === 'Escape') { keys.hidden = true; return; }
  if (typing || event.ctrlKey || event.metaKey || event.altKey || !session) return;
  if (pendingG) {
    pendingG = false;
    const target = PAGES.find(p => p.key === event.key && allowed(p));
    if (target) { location.hash = `#/${target.path}`; event.preventDefault(); }
    return;
  }
  if (event.key === 'g') { pendingG = true; setTimeout(() => { pendingG = false; }, 1500); }
  else if (event.key === '/') {
    const search = main.querySelector('input[type=search]');
    if (search) { search.focus(); event.preventDefault(); }
  } else if (event.key === '?') { keys.hidden = !keys.hidden; }
});

// ---- overview -----------------------------------------------------------------------

async function overviewPage() {
  const live = el('span', { class: 'live' });
  const cards = el('div', { class: 'cards', id: 'overview' });
  main.replaceChildren(el('h1', {}, 'Overview', live), cards);
  let before = null;
  every(1000, async () => {
    const o = await api('GET', '/admin/overview');
    const t = o.traffic;
    const r = o.reservations;
    const seconds = before ? (new Date(o.at) - new Date(before.at)) / 1000 : 0;
    const rate = name => (before && seconds > 0) ? `${fixed((r[name] - before.reservations[name]) / seconds, 1)}/s` : '';
    const b = o.backlog;
    cards.replaceChildren(
      t ? card('Requests/s', fixed(t.requests_per_second, 1), 'last 10 s', sparkline(t.series, 'requests per second, last minute'))
        : card('Requests/s', '–', 'per-request metrics are off'),
      t ? card('Latency p50 / p99', `${fixed(t.p50_ms, 1)} / ${fixed(t.p99_ms, 1)} ms`, 'last 10 s') : null,
      t ? card('Server errors/s', fixed(t.server_errors_per_second, 1), '5xx answers, last 10 s') : null,
      card('Readiness', o.ready ? 'ready' : 'not ready', `durability ${o.durability}`),
      card('Store', o.store_healthy ? 'writing' : 'failing', b ? `backlog ${num(b.pending_records)} records` : ''),
      b ? card('Flush lag', `${num(b.flush_lag_ms)} ms`, `last flush ${when(b.last_flush_at)}`) : null,
      o.flushes ? card('Flushes', num(o.flushes.batches), `${num(o.flushes.records)} records · ${num(o.flushes.failures)} failed`) : null,
      card('Lines', num(o.lines_in_memory), `${num(o.lines_active)} with a running actor`),
      r ? card('Reservations pending', num(r.pending), '') : null,
      ...(r ? ['created', 'refused', 'committed', 'released', 'expired'].map(name =>
        card(`Reservations ${name}`, num(r[name]), rate(name))) : []));
    // For measuring the time to first render (benches/console.rs).
    if (!before) performance.mark('stockline:overview');
    before = o;
  }, live);
}

// ---- hot lines ----------------------------------------------------------------------

async function linesPage() {
  const live = el('span', { class: 'live' });
  const counts = el('p', { class: 'muted' });
  const body = el('div', {});
  main.replaceChildren(el('h1', {}, 'Hot lines', live), counts, body);
  const seen = new Map(); // "w:p" -> {rate, rates}: messages/s, the last minute's
  every(1000, async () => {
    const a = await api('GET', '/admin/actors?sort=messages_per_second&limit=25');
    for (const line of a.items) {
      const key = `${line.warehouse_id}:${line.product_id}`;
      const last = seen.get(key);
      const rate = line.messages_per_second;
      const rates = last ? [...last.rates, rate].slice(-60) : [rate];
      seen.set(key, { rates, rate });
    }
    // Lines that left the list start afresh if they come back.
    const shown = new Set(a.items.map(l => `${l.warehouse_id}:${l.product_id}`));
    for (const key of seen.keys()) if (!shown.has(key)) seen.delete(key);
    const lines = n => `${num(n)} line${n === 1 ? '' : 's'}`;
    counts.textContent = `${lines(a.lines_in_memory)} in memory, ${num(a.lines_active)} with an actor, ${lines(a.lines_stored)} stored. The busiest now (messages in the last whole second):`;
    body.replaceChildren(table([
      { title: 'Warehouse', cell: l => l.warehouse_id },
      { title: 'Product', cell: l => el('a', { href: `#/inventory/${l.product_id}` }, l.product_id) },
      { title: 'Messages/s', num: true, cell: l => num(l.messages_per_second) },
      { title: 'Last minute', cell: l => sparkline(seen.get(`${l.warehouse_id}:${l.product_id}`).rates, 'messages per second') },
      { title: 'Mailbox', num: true, cell: l => num(l.mailbox_len) },
      { title: 'Handled', num: true, cell: l => el('span', { 'data-handled': `${l.warehouse_id}:${l.product_id}` }, num(l.messages_handled)) },
      { title: 'Refusals', num: true, cell: l => num(l.refusals) },
      { title: 'Restarts', num: true, cell: l => num(l.restarts) },
      { title: 'Passivations', num: true, cell: l => num(l.passivations) },
      { title: 'On hand', num: true, cell: l => num(l.on_hand) },
      { title: 'Reserved', num: true, cell: l => num(l.reserved) },
      { title: 'Actor', cell: l => el('span', { class: `badge ${l.active ? 'active' : 'inactive'}` }, l.active ? 'running' : 'passive') },
    ], a.items, 'No line is in memory yet.'));
  }, live);
}

// ---- inventory ----------------------------------------------------------------------

async function warehouseNames() {
  const list = await api('GET', '/warehouses?limit=500');
  return new Map(list.items.map(w => [w.id, w]));
}

function searchForm(hash, query, placeholder) {
  return form({ role: 'search' },
    [el('label', {}, 'Search', el('input', { type: 'search', name: 'q', value: query.get('q') || '', placeholder }))],
    'Search', values => { location.hash = `${hash}?q=${encodeURIComponent(values.q)}`; });
}

async function inventoryPage(here) {
  if (here.arg) return productStock(Number(here.arg));
  const found = await api('GET', `/products?limit=50&q=${encodeURIComponent(here.query.get('q') || '')}`);
  page('Inventory',
    searchForm('#/inventory', here.query, 'name or sku'),
    el('p', { class: 'muted' }, `${num(found.total)} products${found.total > found.items.length ? `, the first ${found.items.length} shown` : ''}.`),
    table([
      { title: 'Product', cell: p => el('a', { href: `#/inventory/${p.id}` }, `${p.name}`) },
      { title: 'SKU', cell: p => p.sku },
      { title: 'Id', num: true, cell: p => p.id },
      { title: 'Price', num: true, cell: p => money(p.price_cents) },
    ], found.items, 'No product matches.'));
}

async function productStock(id) {
  const [product, stock, warehouses] = await Promise.all([
    api('GET', `/products/${id}`), api('GET', `/products/${id}/availability`), warehouseNames()]);
  const movements = await api('GET', `/stock/movements?product_id=${id}&limit=20`);
  const name = w => (warehouses.get(w) ? `${warehouses.get(w).code} (${w})` : `#${w}`);
  // A shop member acts on its own shop's warehouses only.
  const options = [...warehouses.values()]
    .filter(w => session.shops === null || session.shops.includes(w.shop_id))
    .map(w => [w.id, `${w.code} (${w.id})`]);
  const lines = new Map(stock.warehouses.map(l => [l.warehouse_id, l]));
  const mine = stock.warehouses.find(l => options.some(([v]) => v === l.warehouse_id));
  const first = mine ? mine.warehouse_id : (options[0] || [''])[0];
  const done = message => { say(message); route(); };
  const version = el('input', { name: 'expected_version', type: 'number', min: 0,
    value: lines.has(Number(first)) ? lines.get(Number(first)).version : '' });
  const levelForm = form({ 'aria-label': 'Set level' }, [
    el('label', {}, 'Warehouse', el('select', {
      name: 'warehouse_id',
      onchange: e => { const l = lines.get(Number(e.target.value)); version.value = l ? l.version : ''; },
    }, options.map(([v, t]) => el('option', { value: v, selected: String(v) === String(first) }, t)))),
    field('On hand', 'on_hand', { type: 'number', min: 0, required: true }),
    el('label', {}, 'Expected version', version),
    field('Reference', 'reference', { maxlength: 255 }),
  ], 'Set level', async v => {
    const line = await api('PUT', '/stock/levels', {
      warehouse_id: int(v.warehouse_id), product_id: id, on_hand: int(v.on_hand),
      expected_version: int(v.expected_version), reason: 'count', reference: v.reference || undefined,
    });
    done(`${name(line.warehouse_id)}: on hand ${line.on_hand}, version ${line.version}.`);
  });
  page(`${product.name}`,
    el('p', { class: 'muted' }, `SKU ${product.sku} · id ${product.id} · on hand ${num(stock.on_hand)} · reserved ${num(stock.reserved)} · available ${num(stock.available)} (active warehouses)`),
    table([
      { title: 'Warehouse', cell: l => name(l.warehouse_id) },
      { title: 'Status', cell: l => el('span', { class: `badge ${l.status}` }, l.status) },
      { title: 'On hand', num: true, cell: l => el('span', { 'data-on-hand': l.warehouse_id }, num(l.on_hand)) },
      { title: 'Reserved', num: true, cell: l => num(l.reserved) },
      { title: 'Safety', num: true, cell: l => num(l.safety_stock) },
      { title: 'Available', num: true, cell: l => num(l.available) },
      { title: 'Version', num: true, cell: l => num(l.version) },
    ], stock.warehouses, 'No stock line yet: adjust or set a level to make one.'),
    el('fieldset', {}, el('legend', {}, 'Adjust'), form({ 'aria-label': 'Adjust' }, [
      choice('Warehouse', 'warehouse_id', options, first),
      field('Change (+/−)', 'delta', { type: 'number', required: true }),
      choice('Reason', 'reason', ['receipt', 'correction', 'damage', 'count', 'return'].map(r => [r, r]), 'receipt'),
      field('Reference', 'reference', { maxlength: 255 }),
    ], 'Adjust', async v => {
      const line = await api('POST', '/stock/adjustments', {
        warehouse_id: int(v.warehouse_id), product_id: id, delta: int(v.delta), reason: v.reason,
        reference: v.reference || undefined,
      });
      done(`${name(line.warehouse_id)}: on hand ${line.on_hand}, available ${line.available}.`);
    })),
    el('fieldset', {}, el('legend', {}, 'Set level (compare-and-swap on the version)'), levelForm),
    el('fieldset', {}, el('legend', {}, 'Transfer'), form({ 'aria-label': 'Transfer' }, [
      choice('From', 'from_warehouse_id', options, first),
      choice('To', 'to_warehouse_id', options, (options.find(([v]) => String(v) !== String(first)) || [''])[0]),
      field('Quantity', 'quantity', { type: 'number', min: 1, required: true }),
    ], 'Transfer', async v => {
      await api('POST', '/transfers', {
        from_warehouse_id: int(v.from_warehouse_id), to_warehouse_id: int(v.to_warehouse_id),
        product_id: id, quantity: int(v.quantity),
      });
      done(`Moved ${v.quantity} from ${name(int(v.from_warehouse_id))} to ${name(int(v.to_warehouse_id))}.`);
    })),
    el('h2', {}, 'Recent movements'),
    table([
      { title: 'At', cell: m => when(m.at) },
      { title: 'Warehouse', cell: m => name(m.warehouse_id) },
      { title: 'Kind', cell: m => m.kind },
      { title: 'Quantity', num: true, cell: m => num(m.quantity) },
      { title: 'On hand after', num: true, cell: m => num(m.on_hand_after) },
      { title: 'Reserved after', num: true, cell: m => num(m.reserved_after) },
      { title: 'Reason', cell: m => m.reason || '' },
      { title: 'Reference', cell: m => m.reference || '' },
    ], movements.items, 'No movement yet.'));
}

// ---- orders -------------------------------------------------------------------------

const ORDER_STATUSES = ['pending_payment', 'paid', 'shipped', 'delivered', 'cancelled', 'expired'];

async function ordersPage(here) {
  if (here.arg) return orderPage(here.arg);
  const status = here.query.get('status') || '';
  const offset = Number(here.query.get('offset') || 0);
  const list = await api('GET', `/orders?limit=50&offset=${offset}${status ? `&status=${status}` : ''}`);
  const at = o => `#/orders?status=${status}&offset=${o}`;
  page('Orders',
    form({ 'aria-label': 'Filter' }, [choice('Status', 'status', [['', 'any'], ...ORDER_STATUSES.map(s => [s, s])], status)],
      'Filter', v => { location.hash = `#/orders?status=${v.status}`; }),
    table([
      { title: 'Order', cell: o => el('a', { href: `#/orders/${o.id}` }, short(o.id)) },
      { title: 'Status', cell: o => el('span', { class: `badge ${o.status}` }, o.status) },
      { title: 'Total', num: true, cell: o => money(o.total_cents) },
      { title: 'Items', num: true, cell: o => o.items.reduce((n, i) => n + i.quantity, 0) },
      { title: 'Customer', num: true, cell: o => o.user_id },
      { title: 'Placed', cell: o => when(o.created_at) },
    ], list.items, 'No order.'),
    el('div', { class: 'pager' },
      offset > 0 ? el('a', { href: at(Math.max(0, offset - 50)) }, '← Newer') : null,
      el('span', { class: 'muted' }, `${offset + 1}–${offset + list.items.length} of ${num(list.total)}`),
      offset + list.items.length < list.total ? el('a', { href: at(offset + 50) }, 'Older →') : null));
}

async function orderPage(id) {
  const [order, payments] = await Promise.all([api('GET', `/orders/${id}`), api('GET', `/orders/${id}/payments`)]);
  const done = message => { say(message); route(); };
  const actions = [];
  if (order.status === 'paid') {
    actions.push(form({ 'aria-label': 'Ship' }, [field('Tracking number', 'tracking_number', { maxlength: 255 })], 'Ship',
      async v => {
        await api('PATCH', `/orders/${id}/status`, { status: 'shipped', tracking_number: v.tracking_number || undefined });
        done('Shipped.');
      }));
  }
  if (order.status === 'shipped') {
    actions.push(form({ 'aria-label': 'Deliver' }, [], 'Mark delivered', async () => {
      await api('PATCH', `/orders/${id}/status`, { status: 'delivered' });
      done('Delivered.');
    }));
  }
  if (order.status === 'pending_payment' || order.status === 'paid') {
    actions.push(form({ 'aria-label': 'Cancel' }, [], order.status === 'paid' ? 'Cancel and return the stock' : 'Cancel and release the stock',
      async () => { await api('POST', `/orders/${id}/cancel`); done('Cancelled.'); }));
  }
  page(`Order ${short(order.id)}`,
    el('dl', { class: 'facts' },
      el('dt', {}, 'Status'), el('dd', {}, el('span', { class: `badge ${order.status}`, id: 'order-status' }, order.status)),
      el('dt', {}, 'Id'), el('dd', {}, order.id),
      el('dt', {}, 'Customer'), el('dd', {}, order.user_id),
      el('dt', {}, 'Total'), el('dd', {}, money(order.total_cents)),
      el('dt', {}, 'Tracking'), el('dd', {}, order.tracking_number || '–'),
      el('dt', {}, 'Reservation'), el('dd', {}, order.reservation_id),
      el('dt', {}, 'Pays by'), el('dd', {}, when(order.expires_at)),
      el('dt', {}, 'Placed'), el('dd', {}, when(order.created_at)),
      el('dt', {}, 'Updated'), el('dd', {}, when(order.updated_at))),
    el('div', { class: 'row' }, actions),
    el('h2', {}, 'Items'),
    table([
      { title: 'Product', cell: i => el('a', { href: `#/inventory/${i.product_id}` }, i.product_id) },
      { title: 'Warehouse', num: true, cell: i => i.warehouse_id },
      { title: 'Quantity', num: true, cell: i => num(i.quantity) },
      { title: 'Unit price', num: true, cell: i => money(i.unit_price_cents) },
    ], order.items),
    el('h2', {}, 'Payment'),
    table([
      { title: 'Payment', cell: p => short(p.id) },
      { title: 'Method', cell: p => p.method },
      { title: 'Amount', num: true, cell: p => money(p.amount_cents) },
      { title: 'Status', cell: p => p.status },
      { title: 'At', cell: p => when(p.created_at) },
    ], payments.items, 'Not paid.'));
}

// ---- products -----------------------------------------------------------------------

function productFields(p) {
  p = p || {};
  return [
    field('SKU', 'sku', { required: !p.id, value: p.sku || '', maxlength: 64 }),
    field('Name', 'name', { required: !p.id, value: p.name || '' }),
    field('Description', 'description', { value: p.description || '' }),
    field('Price (cents)', 'price_cents', { type: 'number', min: 0, required: !p.id, value: p.price_cents ?? '' }),
    field('Low-stock threshold', 'low_stock_threshold', { type: 'number', min: 0, value: p.low_stock_threshold ?? '' }),
    field('Backorder limit', 'backorder_limit', { type: 'number', min: 0, value: p.backorder_limit ?? '' }),
  ];
}

function productBody(v) {
  const body = {};
  for (const name of ['sku', 'name', 'description']) if (v[name] !== '') body[name] = v[name];
  for (const name of ['price_cents', 'low_stock_threshold', 'backorder_limit']) if (v[name] !== '') body[name] = int(v[name]);
  return body;
}

async function productsPage(here) {
  if (here.arg) return productEdit(Number(here.arg));
  const offset = Number(here.query.get('offset') || 0);
  const q = here.query.get('q') || '';
  const list = await api('GET', `/products?limit=50&offset=${offset}&q=${encodeURIComponent(q)}`);
  const at = o => `#/products?q=${encodeURIComponent(q)}&offset=${o}`;
  page('Products',
    searchForm('#/products', here.query, 'name or sku'),
    table([
      { title: 'Product', cell: p => el('a', { href: `#/products/${p.id}` }, p.name) },
      { title: 'SKU', cell: p => p.sku },
      { title: 'Price', num: true, cell: p => money(p.price_cents) },
      { title: 'Low at', num: true, cell: p => p.low_stock_threshold ?? '–' },
      { title: 'Stock', cell: p => el('a', { href: `#/inventory/${p.id}` }, 'stock') },
    ], list.items, 'No product.'),
    el('div', { class: 'pager' },
      offset > 0 ? el('a', { href: at(Math.max(0, offset - 50)) }, '← Back') : null,
      el('span', { class: 'muted' }, `${list.items.length ? offset + 1 : 0}–${offset + list.items.length} of ${num(list.total)}`),
      offset + list.items.length < list.total ? el('a', { href: at(offset + 50) }, 'More →') : null),
    el('fieldset', {}, el('legend', {}, 'Add a product'), form({ 'aria-label': 'Add a product' }, productFields(), 'Add',
      async v => {
        const p = await api('POST', '/products', productBody(v));
        say(`Added ${p.name} (id ${p.id}).`);
        location.hash = `#/products/${p.id}`;
      })));
}

async function productEdit(id) {
  const product = await api('GET', `/products/${id}`);
  const remove = el('button', { type: 'button', class: 'danger' }, 'Remove');
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  remove.addEventListener('click', async () => {
    if (remove.dataset.armed !== 'yes') {
      remove.dataset.armed = 'yes';
      remove.textContent = `Confirm: remove ${product.sku}`;
      return;
    }
    try {
      await api('DELETE', `/products/${id}`);
      say(`Removed ${product.sku}.`);
      location.hash = '#/products';
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    }
  });
  page(`Product ${product.name}`,
    el('p', {}, el('a', { href: `#/inventory/${id}` }, 'Stock of this product')),
    el('fieldset', {}, el('legend', {}, 'Edit'), form({ 'aria-label': 'Edit' }, productFields(product), 'Save', async v => {
      const p = await api('PATCH', `/products/${id}`, productBody(v));
      say(`Saved ${p.name}.`);
      route();
    })),
    el('fieldset', {}, el('legend', {}, 'Remove'),
      el('p', { class: 'muted' }, 'Refused while the product has stock or pending reservations.'), remove, error));
}

// ---- warehouses ---------------------------------------------------------------------

async function warehousesPage() {
  const list = await api('GET', '/warehouses?limit=500');
  const toggle = w => {
    const next = w.status === 'active' ? 'inactive' : 'active';
    const error = el('span', { class: 'error', role: 'alert' });
    return el('span', {}, el('button', {
      type: 'button', class: next === 'inactive' ? 'secondary' : null,
      onclick: async () => {
        try {
          await api('PUT', `/warehouses/${w.id}/status`, { status: next });
          say(`${w.code} is ${next}.`);
          route();
        } catch (e) { error.textContent = ` ${e.message}`; }
      },
    }, next === 'inactive' ? 'Deactivate' : 'Activate'), error);
  };
  page('Warehouses', table([
    { title: 'Code', cell: w => w.code },
    { title: 'Name', cell: w => w.name },
    { title: 'Id', num: true, cell: w => w.id },
    { title: 'Shop', cell: w => w.shop_id ?? 'platform' },
    { title: 'Priority', num: true, cell: w => w.priority },
    { title: 'Status', cell: w => el('span', { class: `badge ${w.status}` }, w.status) },
    { title: '', cell: toggle },
  ], list.items, 'No warehouse.'));
}

// ---- alerts -------------------------------------------------------------------------

async function alertsPage() {
  const live = el('span', { class: 'live' });
  const low = el('div', {});
  const expiring = el('div', {});
  main.replaceChildren(el('h1', {}, 'Alerts', live),
    el('h2', {}, 'Low stock'), low,
    el('h2', {}, 'Reservations that expire soonest'), expiring);
  every(2000, async () => {
    const [alerts, pending] = await Promise.all([api('GET', '/alerts/low-stock'), api('GET', '/reservations?limit=20')]);
    low.replaceChildren(table([
      { title: 'Product', cell: a => el('a', { href: `#/inventory/${a.product_id}` }, a.product_id) },
      { title: 'Warehouse', num: true, cell: a => a.warehouse_id },
      { title: 'Available here', num: true, cell: a => num(a.available) },
      { title: 'Product available', num: true, cell: a => num(a.product_available) },
      { title: 'Threshold', num: true, cell: a => num(a.low_stock_threshold) },
    ], alerts.items, 'No product is under its threshold.'));
    expiring.replaceChildren(
      el('p', { class: 'muted' }, `${num(pending.total)} pending.`),
      table([
        { title: 'Reservation', cell: r => short(r.id) },
        { title: 'Expires', cell: r => inSeconds(r.expires_at) },
        { title: 'Items', cell: r => r.items.map(i => `${i.quantity}× product ${i.product_id} @ warehouse ${i.warehouse_id}`).join(', ') },
        { title: 'Reference', cell: r => r.reference || '' },
      ], pending.items, 'No reservation is pending.'));
  }, live);
}

// ---- cluster ------------------------------------------------------------------------

async function clusterPage() {
  const live = el('span', { class: 'live' });
  const body = el('div', { id: 'cluster' });
  main.replaceChildren(el('h1', {}, 'Cluster', live), body);
  every(2000, async () => {
    const c = await api('GET', '/admin/cluster');
    if (c.mode === 'single') {
      body.replaceChildren(el('p', {}, 'This server runs as a single process: it holds every stock line itself. '
        + 'Set STOCKLINE_CLUSTER_NATS_URL to run several nodes as a cluster.'));
      return;
    }
    const owners = c.nodes.map(n => n.node_id);
    const colour = owner => owner === null ? 'none' : `n${owners.indexOf(owner) % 8}`;
    const grid = el('div', { class: 'shards', role: 'img',
      'aria-label': `${c.shards_total} shards by owner; ${c.shards_unowned} without one` },
      ...c.shards.map(s => el('span', { class: `shard ${colour(s.owner)}`,
        title: `shard ${s.shard}: ${s.owner || 'no owner'}, epoch ${s.epoch}` })));
    body.replaceChildren(
      el('div', { class: 'cards' },
        card('Cluster', el('span', { class: 'long' }, c.cluster), `answered by ${c.node_id}`),
        card('Nodes live', `${c.nodes.filter(n => n.live).length} of ${c.nodes.length}`, `lease ${c.shard_lease_secs} s`),
        card('Shards without owner', num(c.shards_unowned), c.shards_unowned ? 'their stock waits for a node' : 'every shard is served'),
        card('Served by this node', num(c.served_here), `of ${num(c.shards_total)}`)),
      el('h2', {}, 'Nodes'),
      table([
        { title: 'Node', cell: n => el('span', {}, el('span', { class: `swatch ${colour(n.node_id)}` }), ` ${n.node_id}`) },
        { title: 'Address', cell: n => n.http_addr },
        { title: 'Status', cell: n => el('span', { class: `badge ${n.live ? 'active' : 'inactive'}` }, n.live ? 'live' : 'silent') },
        { title: 'Shards', num: true, cell: n => num(n.shards) },
        { title: 'Journal range', num: true, cell: n => n.ordinal ?? '–' },
        // The database's clock: never shown as in the future.
        { title: 'Heartbeat', cell: n => `${Math.max(0, Math.round((Date.now() - new Date(n.heartbeat_at)) / 1000))} s ago` },
        { title: 'Started', cell: n => when(n.started_at) },
      ], c.nodes, 'No node has joined.'),
      el('h2', {}, 'Shards'),
      el('p', { class: 'muted' }, 'Each square is a shard, coloured by its owner (grey: none). Hover for its epoch.'),
      grid);
  }, live);
}

// ---- start --------------------------------------------------------------------------

if (sessionStorage.getItem(TOKEN)) start(); else signIn();
