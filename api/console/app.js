// The operator console: one page over the JSON API, no build step.
//
// Everything shown comes from the API and is treated as hostile (payloads and receivers'
// answers are written by others): text is only ever placed with textContent, never parsed as
// HTML. The bearer token lives in sessionStorage and travels in the Authorization header,
// never in a URL.
'use strict';

const TOKEN_KEY = 'ih-console-token';
const REFRESH_MS = 5000;
const main = document.getElementById('main');
const errorBox = document.getElementById('error');
const notice = document.getElementById('notice');
let refreshTimer = null;
// cursor stacks per view, so "First page" can go back
const pages = {};
// a secret just created, shown once by the next rendering of the subscriptions view
let secretToShow = null;

// ---------- small helpers ----------

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') node.textContent = String(value);
    else if (name === 'className') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(value) {
  return value ? new Date(value).toLocaleString() : '—';
}

function showError(error) {
  errorBox.hidden = false;
  errorBox.textContent = error instanceof Error ? error.message : String(error);
}

function clearMessages() {
  errorBox.hidden = true;
  errorBox.textContent = '';
  notice.textContent = '';
}

function say(message) {
  notice.textContent = message;
}

async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch('/api/v1' + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    let message = data && data.message ? data.message : 'HTTP ' + response.status;
    if (response.status === 401) message += ' (enter an admin token above)';
    if (data && data.request_id) message += ' [request ' + data.request_id + ']';
    throw new Error(message);
  }
  return data;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, value);
  }
  const text = search.toString();
  return text ? '?' + text : '';
}

function table(headers, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((header) => el('th', { scope: 'col', text: header })))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headers.length, className: 'muted', text: 'Nothing here.' }))));
}

function cell(text, className) {
  return el('td', { text: text === null || text === undefined ? '—' : text, className });
}

function eventLink(id) {
  return el('td', { className: 'mono' }, el('a', { href: '#/events/' + id, text: id }));
}

// One page of a list with Next / First buttons driven by the API's cursors.
function pager(view, nextCursor, reload) {
  const stack = pages[view] || (pages[view] = []);
  return el('div', { className: 'pager' },
    el('button', {
      type: 'button', className: 'secondary', text: 'First page', disabled: stack.length === 0,
      onclick: () => { pages[view] = []; reload(); },
    }),
    el('button', {
      type: 'button', className: 'secondary', text: 'Next page', disabled: !nextCursor,
      onclick: () => { stack.push(nextCursor); reload(); },
    }));
}

function cursorOf(view) {
  const stack = pages[view] || [];
  return stack.length ? stack[stack.length - 1] : undefined;
}

// Asks before anything that changes or removes something.
function confirmed(message) {
  return window.confirm(message);
}

// ---------- views ----------

// ---------- charts ----------

const SVG = 'http://www.w3.org/2000/svg';
const CHART_WIDTH = 600;
const CHART_HEIGHT = 160;
const CHART_WINDOWS = [['15m', '15 min'], ['1h', '1 h'], ['6h', '6 h'], ['24h', '24 h']];
// the overview's chart window, kept across its refreshes
let chartWindow = '1h';

function svg(tag, attributes, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (tag === 'text') node.textContent = children.join('');
  else node.append(...children);
  return node;
}

// One chart of the points: a line per series (a value per point, null for none), drawn as
// inline SVG. data-points counts the points with a value above 0, for tests and readers.
function lineChart(id, title, points, series) {
  const values = series.flatMap((line) => points.map(line.value)).filter((value) => value !== null && value !== undefined);
  const top = Math.max(1, ...values);
  const pad = 8;
  const step = points.length > 1 ? (CHART_WIDTH - 2 * pad) / (points.length - 1) : 0;
  const x = (index) => (pad + index * step).toFixed(1);
  const y = (value) => (CHART_HEIGHT - 4 - (value / top) * (CHART_HEIGHT - 20)).toFixed(1);
  const chart = svg('svg', { id, viewBox: '0 0 ' + CHART_WIDTH + ' ' + CHART_HEIGHT, role: 'img', 'aria-label': title, class: 'chart' },
    svg('line', { x1: 0, y1: CHART_HEIGHT - 4, x2: CHART_WIDTH, y2: CHART_HEIGHT - 4, stroke: '#d9dee7' }),
    svg('text', { x: 4, y: 12, fill: '#5b6474', 'font-size': 11 }, 'max ' + (Number.isInteger(top) ? top : top.toFixed(1))));
  for (const line of series) {
    const drawn = points
      .map((point, index) => [index, line.value(point)])
      .filter(([, value]) => value !== null && value !== undefined);
    if (drawn.length) chart.append(svg('polyline', { points: drawn.map(([index, value]) => x(index) + ',' + y(value)).join(' '), fill: 'none', stroke: line.color, 'stroke-width': 2, 'data-series': line.name }));
    // a dot per value above 0, so a lone point shows too
    for (const [index, value] of drawn) {
      if (value > 0) chart.append(svg('circle', { cx: x(index), cy: y(value), r: 3, fill: line.color }));
    }
  }
  if (points.length) {
    const clock = (point) => new Date(point.start).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    chart.append(svg('text', { x: 4, y: CHART_HEIGHT - 8, fill: '#5b6474', 'font-size': 11 }, clock(points[0])),
      svg('text', { x: CHART_WIDTH - 4, y: CHART_HEIGHT - 8, fill: '#5b6474', 'font-size': 11, 'text-anchor': 'end' }, clock(points[points.length - 1])));
  }
  chart.setAttribute('data-points', values.filter((value) => value > 0).length);
  const legend = el('div', { className: 'legend' }, series.map((line) => el('span', { className: 'swatch-' + line.name, text: line.name })));
  return el('figure', { className: 'card chart-card' }, el('figcaption', { text: title }), chart, legend);
}

async function charts() {
  const data = await api('GET', '/admin/charts' + query({ window: chartWindow }));
  const perMinute = 60 / data.bucket_seconds;
  const rate = (field) => (point) => point[field] * perMinute;
  const select = el('select', { id: 'chart-window', onchange: () => { chartWindow = select.value; render(overview); } },
    CHART_WINDOWS.map(([value, label]) => el('option', { value, text: label, selected: value === chartWindow })));
  return [
    el('div', { className: 'filters' }, el('label', {}, 'Charts over the last', select)),
    el('div', { className: 'charts' },
      lineChart('chart-outcomes', 'Deliveries per minute by outcome', data.points, [
        { name: 'delivered', color: '#0f7b3f', value: rate('delivered') },
        { name: 'retried', color: '#8a5a00', value: rate('retried') },
        { name: 'dead', color: '#b42318', value: rate('dead') },
      ]),
      lineChart('chart-lag', 'Publish → delivered lag (ms)', data.points, [
        { name: 'p50', color: '#1f5fbf', value: (point) => point.lag_p50_ms },
        { name: 'p99', color: '#b42318', value: (point) => point.lag_p99_ms },
      ]),
      lineChart('chart-due', 'Due deliveries', data.points, [
        { name: 'due', color: '#1f5fbf', value: (point) => point.due },
      ])),
  ];
}

async function overview() {
  const stats = await api('GET', '/admin/stats');
  const minutes = stats.window_seconds / 60;
  const attempts = stats.delivered + stats.failed;
  const failureRate = attempts ? Math.round((stats.failed / attempts) * 100) : 0;
  const card = (label, value, id) => el('div', { className: 'card', id },
    el('div', { className: 'value', text: value }),
    el('div', { className: 'label', text: label }));
  return [
    el('h2', { text: 'Overview' }),
    el('p', { className: 'muted', text: 'Refreshes every 5 seconds.' }),
    el('div', { className: 'cards' },
      card('deliveries due now', stats.due + (stats.due >= 100000 ? '+' : ''), 'stat-due'),
      card('oldest due delivery waiting', stats.oldest_due_age_seconds === null || stats.oldest_due_age_seconds === undefined ? '—' : stats.oldest_due_age_seconds.toFixed(1) + ' s', 'stat-oldest'),
      card('delivered per minute (last ' + minutes + ' min)', (stats.delivered / minutes).toFixed(1), 'stat-rate'),
      card('failed attempts (last ' + minutes + ' min)', failureRate + ' %  (' + stats.failed + ')', 'stat-failures'),
      card('dead letters not replayed', stats.dead_letters + (stats.dead_letters >= 10000 ? '+' : ''), 'stat-dead')),
    await charts(),
  ];
}

function subscriptionForm(existing, onDone) {
  const url = el('input', { name: 'url', type: 'url', required: true, value: existing ? existing.url : '' });
  const events = el('input', { name: 'events', required: true, value: existing ? existing.events.join(', ') : '', placeholder: 'order.created, *' });
  const description = el('input', { name: 'description', value: existing && existing.description ? existing.description : '' });
  const secret = existing ? null : el('input', { name: 'secret', type: 'password', autocomplete: 'off', placeholder: 'generated when empty' });
  const form = el('form', { className: 'inline', id: existing ? 'edit-subscription' : 'new-subscription' },
    el('label', {}, 'URL', url),
    el('label', {}, 'Event types', events),
    el('label', {}, 'Description', description),
    secret && el('label', {}, 'Secret (optional)', secret),
    el('button', { type: 'submit', text: existing ? 'Save' : 'Create subscription' }),
    existing && el('button', { type: 'button', className: 'secondary', text: 'Cancel', onclick: () => onDone(null) }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearMessages();
    const body = {
      url: url.value.trim(),
      events: events.value.split(/[\s,]+/).filter(Boolean),
      description: description.value.trim() || null,
    };
    try {
      if (existing) {
        await api('PATCH', '/subscriptions/' + existing.id, body);
        say('Subscription saved.');
        onDone(null);
      } else {
        if (secret.value) body.secret = secret.value;
        onDone(await api('POST', '/subscriptions', body));
      }
    } catch (error) {
      showError(error);
    }
  });
  return form;
}

function secretBox(title, secret) {
  return el('div', { className: 'secret', id: 'shown-secret' },
    el('strong', { text: title }),
    el('p', { text: 'Copy it now: it is shown this once and cannot be read back.' }),
    el('code', { className: 'mono', id: 'secret-value', text: secret }));
}

// A subscription's endpoint health in words: since when it fails, when its circuit opened,
// why it is disabled.
function endpointState(subscription) {
  switch (subscription.state) {
    case 'disabled':
      return 'disabled' + (subscription.disabled_reason ? ' (' + subscription.disabled_reason + ')' : '');
    case 'circuit_open':
      return 'circuit open since ' + when(subscription.circuit_opened_at);
    case 'failing':
      return 'failing since ' + when(subscription.failing_since);
    default:
      return subscription.state;
  }
}

// A subscription's last hour as bars, one per bucket: delivered (green) under failed (red),
// scaled to the busiest bucket.
function sparkline(points) {
  const width = 120;
  const height = 24;
  const top = Math.max(1, ...points.map((point) => point.delivered + point.failed));
  const bar = width / Math.max(1, points.length);
  const chart = svg('svg', { viewBox: '0 0 ' + width + ' ' + height, class: 'sparkline', role: 'img',
    'aria-label': 'attempts per 5 minutes over the last hour' });
  points.forEach((point, index) => {
    const delivered = (point.delivered / top) * height;
    const failed = (point.failed / top) * height;
    const x = (index * bar).toFixed(1);
    if (delivered > 0) chart.append(svg('rect', { x, y: (height - delivered).toFixed(1), width: (bar - 1).toFixed(1), height: delivered.toFixed(1), fill: '#0f7b3f' }));
    if (failed > 0) chart.append(svg('rect', { x, y: (height - delivered - failed).toFixed(1), width: (bar - 1).toFixed(1), height: failed.toFixed(1), fill: '#b42318' }));
  });
  chart.setAttribute('data-attempts', points.reduce((sum, point) => sum + point.delivered + point.failed, 0));
  return chart;
}

async function health() {
  const list = await api('GET', '/admin/subscription-health');
  const rows = list.data.map((entry) => {
    const subscription = entry.subscription;
    const filtered = (view) => '#/' + view + query({ subscription: subscription.id });
    const rate = entry.success_rate === undefined ? '—' : Math.round(entry.success_rate * 100) + ' %';
    return el('tr', { 'data-id': subscription.id, className: 'clickable', title: 'Show its deliveries', onclick: (event) => {
      if (event.target.closest('a')) return;
      location.hash = filtered('deliveries');
    } },
      cell(subscription.url, 'mono'),
      cell(endpointState(subscription), 'state-' + subscription.state),
      cell(rate),
      cell(when(subscription.last_success_at)),
      cell(String(subscription.consecutive_failures)),
      cell(String(entry.in_flight)),
      cell(String(entry.due)),
      el('td', {}, sparkline(entry.sparkline)),
      el('td', {}, el('a', { href: filtered('deliveries'), text: 'deliveries' }), ' · ', el('a', { href: filtered('dead-letters'), text: 'dead letters' })));
  });
  return [
    el('h2', { text: 'Subscription health' }),
    el('p', { className: 'muted', text: 'Most troubled first: open circuits, failing, disabled, then healthy; within each the lowest success rate over the last hour. Click a row for its deliveries.' }),
    table(['URL', 'State', 'Success (1 h)', 'Last success', 'Failures in a row', 'In flight', 'Due', 'Last hour', ''], rows),
  ];
}

async function subscriptions() {
  const cursor = cursorOf('subscriptions');
  const page = await api('GET', '/subscriptions' + query({ cursor, limit: 50 }));
  const container = el('div', {});
  const reload = () => route();
  const editing = el('div', {});
  if (secretToShow) {
    editing.append(secretToShow);
    secretToShow = null;
  }
  const rows = page.data.map((subscription) => {
    const action = (text, className, handler) => el('button', { type: 'button', className, text, 'data-id': subscription.id, onclick: async () => {
      clearMessages();
      try {
        await handler();
      } catch (error) {
        showError(error);
      }
    } });
    return el('tr', { 'data-id': subscription.id },
      cell(subscription.url, 'mono'),
      cell(subscription.events.join(', ')),
      cell(endpointState(subscription), 'state-' + subscription.state),
      cell(String(subscription.consecutive_failures)),
      cell(when(subscription.last_success_at)),
      el('td', {}, el('div', { className: 'actions' },
        action('Edit', 'secondary', async () => {
          editing.replaceChildren(el('h3', { text: 'Edit ' + subscription.url }), subscriptionForm(subscription, () => reload()));
        }),
        subscription.enabled
          ? action('Disable', 'secondary', async () => {
            if (!confirmed('Disable this subscription? New events will not be sent to it.')) return;
            await api('PATCH', '/subscriptions/' + subscription.id, { enabled: false });
            say('Subscription disabled.');
            reload();
          })
          : action('Enable', 'secondary', async () => {
            await api('PATCH', '/subscriptions/' + subscription.id, { enabled: true });
            say('Subscription enabled.');
            reload();
          }),
        action('Rotate secret', 'secondary', async () => {
          if (!confirmed('Rotate the signing secret? The old one keeps signing for 24 hours.')) return;
          const rotated = await api('POST', '/subscriptions/' + subscription.id + '/rotate-secret');
          editing.replaceChildren(secretBox('New secret for ' + subscription.url, rotated.secret));
        }),
        action('Delete', 'danger', async () => {
          if (!confirmed('Delete this subscription? Its queued deliveries are cancelled.')) return;
          await api('DELETE', '/subscriptions/' + subscription.id);
          say('Subscription deleted.');
          reload();
        }))));
  });
  container.append(
    el('h2', { text: 'Subscriptions' }),
    el('h3', { text: 'New subscription' }),
    subscriptionForm(null, (created) => {
      if (!created) return;
      secretToShow = secretBox('Secret for ' + created.url, created.secret);
      reload().then(() => say('Subscription created.'));
    }),
    editing,
    table(['URL', 'Event types', 'State', 'Failures in a row', 'Last success', 'Actions'], rows),
    pager('subscriptions', page.next_cursor, reload));
  return container;
}

async function events(params) {
  const type = params.get('type') || '';
  const cursor = cursorOf('events');
  const page = await api('GET', '/events' + query({ event_type: type, cursor, limit: 50 }));
  const typeInput = el('input', { name: 'type', value: type, placeholder: 'all types' });
  const idInput = el('input', { name: 'id', placeholder: 'event id', className: 'mono' });
  const filter = el('form', { className: 'filters', id: 'event-filter' }, el('label', {}, 'Event type', typeInput), el('button', { type: 'submit', text: 'Filter' }));
  filter.addEventListener('submit', (event) => {
    event.preventDefault();
    pages.events = [];
    location.hash = '#/events' + query({ type: typeInput.value.trim() });
  });
  const open = el('form', { className: 'filters', id: 'event-open' }, el('label', {}, 'Open an event', idInput), el('button', { type: 'submit', text: 'Open' }));
  open.addEventListener('submit', (event) => {
    event.preventDefault();
    if (idInput.value.trim()) location.hash = '#/events/' + encodeURIComponent(idInput.value.trim());
  });
  const rows = page.data.map((item) => el('tr', {},
    eventLink(item.id), cell(item.event_type), cell(when(item.created_at)), cell(String(item.deliveries))));
  return [
    el('h2', { text: 'Events' }), filter, open,
    table(['Event', 'Type', 'Published', 'Deliveries'], rows),
    pager('events', page.next_cursor, () => route()),
  ];
}

async function eventDetail(id) {
  // The attempts are read after the deliveries, not beside them: a delivery's outcome and its
  // attempt are written together, so every attempt of a delivery shown finished is then seen.
  // Read side by side, a delivery could show as delivered with no attempt.
  const detail = await api('GET', '/events/' + encodeURIComponent(id));
  const attempts = await api('GET', '/admin/events/' + encodeURIComponent(id) + '/attempts');
  const byDelivery = new Map();
  for (const attempt of attempts.data) {
    if (!byDelivery.has(attempt.delivery_id)) byDelivery.set(attempt.delivery_id, []);
    byDelivery.get(attempt.delivery_id).push(attempt);
  }
  const deliveries = detail.deliveries.map((delivery) => {
    const timeline = (byDelivery.get(delivery.id) || []).map((attempt) => el('li', { 'data-outcome': attempt.outcome },
      el('div', {},
        el('strong', { text: 'Attempt ' + attempt.attempt_number + ' ' }),
        el('span', { className: 'outcome-' + attempt.outcome, text: attempt.outcome }),
        el('span', { className: 'muted', text: ' · ' + when(attempt.started_at) + ' · ' + attempt.duration_ms + ' ms' +
          (attempt.response_status ? ' · HTTP ' + attempt.response_status : '') + (attempt.worker_id ? ' · ' + attempt.worker_id : '') })),
      attempt.error && el('div', { className: 'mono', text: 'error: ' + attempt.error }),
      attempt.response_body && el('pre', { className: 'response-body', text: attempt.response_body })));
    return el('section', { className: 'delivery', 'data-delivery': delivery.id },
      el('h3', {},
        delivery.target + ' delivery ',
        el('span', { className: 'status status-' + delivery.status, text: delivery.status })),
      el('p', { className: 'muted mono', text: delivery.id + (delivery.subscription_id ? ' → subscription ' + delivery.subscription_id : '') +
        ' · ' + delivery.attempts + ' attempt(s) · next ' + when(delivery.next_attempt_at) }),
      timeline.length ? el('ol', { className: 'timeline' }, timeline) : el('p', { className: 'muted', text: 'No attempt yet.' }));
  });
  return [
    el('h2', {}, 'Event ', el('span', { className: 'mono', text: detail.id })),
    el('p', { text: detail.event_type + ' · published ' + when(detail.created_at) + ' · ' + detail.deliveries_created + ' deliveries' }),
    el('button', { type: 'button', className: 'secondary', text: 'Refresh', id: 'refresh', onclick: () => route() }),
    el('h3', { text: 'Payload' }),
    el('pre', { id: 'payload', text: JSON.stringify(detail.payload, null, 2) }),
    el('h3', { text: 'Deliveries and attempts' }),
    deliveries.length ? deliveries : el('p', { className: 'muted', text: 'No subscription matched this event.' }),
  ];
}

async function deliveriesView(params) {
  const status = params.get('status') || '';
  const subscription = params.get('subscription') || '';
  const cursor = cursorOf('deliveries');
  const page = await api('GET', '/admin/deliveries' + query({ status, subscription_id: subscription, cursor, limit: 50 }));
  const statusSelect = el('select', { name: 'status' },
    ['', 'pending', 'leased', 'delivered', 'dead', 'cancelled'].map((value) => el('option', { value, selected: value === status, text: value || 'any status' })));
  const subscriptionInput = el('input', { name: 'subscription', value: subscription, placeholder: 'subscription id', className: 'mono' });
  const filter = el('form', { className: 'filters', id: 'delivery-filter' },
    el('label', {}, 'Status', statusSelect), el('label', {}, 'Subscription', subscriptionInput), el('button', { type: 'submit', text: 'Filter' }));
  filter.addEventListener('submit', (event) => {
    event.preventDefault();
    pages.deliveries = [];
    location.hash = '#/deliveries' + query({ status: statusSelect.value, subscription: subscriptionInput.value.trim() });
  });
  const rows = page.data.map((delivery) => el('tr', {},
    cell(delivery.id, 'mono'), eventLink(delivery.event_id), cell(delivery.target),
    cell(delivery.subscription_id, 'mono'), el('td', { className: 'status-' + delivery.status, text: delivery.status }),
    cell(String(delivery.attempts)), cell(when(delivery.next_attempt_at)), cell(delivery.last_error, 'mono')));
  return [
    el('h2', { text: 'Deliveries' }), filter,
    table(['Delivery', 'Event', 'Target', 'Subscription', 'Status', 'Attempts', 'Next attempt', 'Last error'], rows),
    pager('deliveries', page.next_cursor, () => route()),
  ];
}

function bulkReplay() {
  const subscription = el('input', { name: 'subscription_id', className: 'mono', placeholder: 'any subscription' });
  const since = el('input', { name: 'since', type: 'datetime-local' });
  const until = el('input', { name: 'until', type: 'datetime-local' });
  const result = el('div', { id: 'bulk-result', 'aria-live': 'polite' });
  const filters = () => {
    const body = {};
    if (subscription.value.trim()) body.subscription_id = subscription.value.trim();
    if (since.value) body.since = new Date(since.value).toISOString();
    if (until.value) body.until = new Date(until.value).toISOString();
    return body;
  };
  const form = el('form', { className: 'inline', id: 'bulk-replay' },
    el('label', {}, 'Subscription', subscription), el('label', {}, 'Dead-lettered since', since), el('label', {}, 'until', until),
    el('button', { type: 'submit', text: 'Count matching dead letters' }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearMessages();
    try {
      const body = filters();
      const dry = await api('POST', '/admin/dead-letters/replay', Object.assign({ dry_run: true }, body));
      result.replaceChildren(
        el('p', { id: 'bulk-count', text: dry.count + ' dead letter(s) would be replayed.' }),
        dry.count > 0 && el('button', { type: 'button', className: 'danger', id: 'bulk-confirm', text: 'Replay ' + dry.count, onclick: async () => {
          if (!confirmed('Replay ' + dry.count + ' dead letter(s)? Each becomes a new delivery.')) return;
          try {
            const done = await api('POST', '/admin/dead-letters/replay', Object.assign({ dry_run: false }, body));
            say(done.count + ' dead letter(s) replayed.');
            route();
          } catch (error) {
            showError(error);
          }
        } }));
    } catch (error) {
      showError(error);
    }
  });
  return [el('h3', { text: 'Bulk replay' }), form, result];
}

async function deadLetters(params) {
  const replayed = params.get('replayed') || 'false';
  const subscription = params.get('subscription') || '';
  const cursor = cursorOf('dead-letters');
  const page = await api('GET', '/admin/dead-letters' + query({ replayed: replayed === 'all' ? '' : replayed, subscription_id: subscription, cursor, limit: 50 }));
  const replayedSelect = el('select', { name: 'replayed' },
    [['false', 'not replayed'], ['true', 'replayed'], ['all', 'all']].map(([value, text]) => el('option', { value, text, selected: value === replayed })));
  const subscriptionInput = el('input', { name: 'subscription', value: subscription, placeholder: 'subscription id', className: 'mono' });
  const filter = el('form', { className: 'filters', id: 'dead-letter-filter' }, el('label', {}, 'Show', replayedSelect),
    el('label', {}, 'Subscription', subscriptionInput), el('button', { type: 'submit', text: 'Filter' }));
  filter.addEventListener('submit', (event) => {
    event.preventDefault();
    pages['dead-letters'] = [];
    location.hash = '#/dead-letters' + query({ replayed: replayedSelect.value, subscription: subscriptionInput.value.trim() });
  });
  const rows = page.data.map((letter) => el('tr', { 'data-event': letter.event_id },
    cell(letter.id, 'mono'), eventLink(letter.event_id), cell(letter.target), cell(letter.reason), cell(when(letter.created_at)),
    cell(letter.replayed_at ? 'replayed ' + when(letter.replayed_at) : null),
    el('td', {}, letter.replayed_at ? '' : el('button', { type: 'button', className: 'secondary replay', text: 'Replay', onclick: async () => {
      if (!confirmed('Replay this dead letter? It becomes a new delivery.')) return;
      clearMessages();
      try {
        await api('POST', '/admin/dead-letters/' + letter.id + '/replay');
        say('Dead letter replayed.');
        route();
      } catch (error) {
        showError(error);
      }
    } }))));
  return [
    el('h2', { text: 'Dead letters' }), filter,
    table(['Dead letter', 'Event', 'Target', 'Reason', 'Dead since', 'Replay', ''], rows),
    pager('dead-letters', page.next_cursor, () => route()),
    bulkReplay(),
  ];
}

// ---------- routing ----------

async function route() {
  clearInterval(refreshTimer);
  const [path, search] = (location.hash.slice(1) || '/overview').split('?');
  const params = new URLSearchParams(search || '');
  const parts = path.split('/').filter(Boolean);
  for (const link of document.querySelectorAll('nav a')) {
    if (link.getAttribute('href') === '#/' + (parts[0] || 'overview')) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  let view;
  switch (parts[0] || 'overview') {
    case 'overview': view = overview; refreshTimer = setInterval(() => render(overview), REFRESH_MS); break;
    case 'subscriptions': view = subscriptions; break;
    case 'health': view = health; break;
    case 'events': view = parts[1] ? () => eventDetail(decodeURIComponent(parts[1])) : () => events(params); break;
    case 'deliveries': view = () => deliveriesView(params); break;
    case 'dead-letters': view = () => deadLetters(params); break;
    default: view = async () => el('p', { text: 'No such view.' });
  }
  await render(view);
}

async function render(view) {
  try {
    const content = await view();
    main.replaceChildren(...[content].flat(Infinity));
    main.setAttribute('data-ready', location.hash || '#/overview');
  } catch (error) {
    showError(error);
    main.replaceChildren(el('p', { className: 'muted', text: 'Could not load this view.' }));
    main.setAttribute('data-ready', 'error');
  }
}

document.getElementById('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = document.getElementById('token');
  if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = '';
  input.placeholder = 'token set for this session';
  clearMessages();
  route();
});
document.getElementById('forget-token').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById('token').placeholder = 'kept for this browser session';
  say('Token forgotten.');
});
if (sessionStorage.getItem(TOKEN_KEY)) document.getElementById('token').placeholder = 'token set for this session';
window.addEventListener('hashchange', () => { clearMessages(); route(); });
route();
