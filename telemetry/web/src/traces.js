// Traces in the side panel and the waterfall, from mastd's Jaeger-shaped trace API
// (telemetry/API.md, "Traces"): the panel lists the recent traces through the clicked node
// or edge (duration, status, span count); a click opens the trace as a waterfall, each span a
// bar on the trace's time line, its tags under it, failed spans in red. As Kiali's traces
// tab, without Jaeger.
import './traces.css';
import { fmtMs } from './format.js';
import { nodeName } from './graph.js';

const TIMEOUT_MS = 8000;
const LIMIT = 20;
const LOOKBACK = '1h';

async function getJaeger(path) {
  let res;
  try {
    res = await fetch(path, { signal: AbortSignal.timeout(TIMEOUT_MS), headers: { Accept: 'application/json' } });
  } catch (e) {
    throw new Error(`${path}: ${e.name === 'TimeoutError' ? 'timed out' : e.message}`);
  }
  let body;
  try { body = await res.json(); } catch { body = undefined; }
  if (res.status === 404 && !body?.errors) return { data: [], unavailable: true }; // a mastd without traces
  if (!res.ok) throw new Error(`${path}: ${res.status} ${body?.errors?.[0]?.msg ?? body?.error ?? res.statusText}`);
  if (!Array.isArray(body?.data)) throw new Error(`${path}: not a trace list`);
  return body;
}

const enc = encodeURIComponent;

// The service name the sidecars report for a graph node: Istio's default for tracing is
// `<canonical service>.<namespace>`, the canonical service being the app label (else the
// workload's name).
export function serviceOf(d) {
  const name = d.app ?? d.workload ?? d.service;
  return name && d.namespace ? `${name}.${d.namespace}` : undefined;
}

// The trace query for a node or an edge (a caller's span with a child in the callee).
export function traceQuery(ele) {
  if (ele.isNode()) {
    const s = serviceOf(ele.data());
    return s && `service=${enc(s)}`;
  }
  const [from, to] = [serviceOf(ele.source().data()), serviceOf(ele.target().data())];
  if (!from || !to) return undefined;
  // Service → its own versions: the same canonical service on both ends.
  if (from === to) return `service=${enc(to)}`;
  return `source=${enc(from)}&target=${enc(to)}`;
}

const tagValue = (span, key) => span.tags?.find((t) => t.key === key)?.value;
const isError = (span) => {
  const v = tagValue(span, 'error');
  return v === true || v === 'true' || tagValue(span, 'otel.status_code') === 'ERROR';
};

// A trace's summary: its root span, time range, status.
export function summarize(trace) {
  const ids = new Set(trace.spans.map((s) => s.spanID));
  const roots = trace.spans.filter((s) => !s.references?.some((r) => r.refType === 'CHILD_OF' && ids.has(r.spanID)));
  const start = Math.min(...trace.spans.map((s) => s.startTime));
  const end = Math.max(...trace.spans.map((s) => s.startTime + s.duration));
  const root = roots.sort((a, b) => a.startTime - b.startTime)[0] ?? trace.spans[0];
  const errors = trace.spans.filter(isError).length;
  return {
    id: trace.traceID, start, durationUs: end - start, spans: trace.spans.length, errors,
    root: root && { service: trace.processes?.[root.processID]?.serviceName ?? '?', operation: root.operationName },
  };
}

export const fmtUs = (us) => (us >= 1e6 ? `${(us / 1e6).toFixed(2)}s` : us >= 1000 ? fmtMs(us / 1000) : `${Math.round(us)}µs`);
const clock = (us) => new Date(us / 1000).toLocaleTimeString([], { hour12: false });

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'testid') e.dataset.testid = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children.flat().filter((c) => c !== undefined && c !== null));
  return e;
}

// The spans in tree order (parents before children, siblings by start), with their depth.
function ordered(trace) {
  const byParent = new Map();
  const ids = new Set(trace.spans.map((s) => s.spanID));
  for (const s of trace.spans) {
    const p = s.references?.find((r) => r.refType === 'CHILD_OF' && ids.has(r.spanID))?.spanID ?? null;
    if (!byParent.has(p)) byParent.set(p, []);
    byParent.get(p).push(s);
  }
  const out = [];
  const walk = (parent, depth) => {
    for (const s of (byParent.get(parent) ?? []).sort((a, b) => a.startTime - b.startTime)) {
      out.push([s, depth]);
      if (depth < 64) walk(s.spanID, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

function tagTable(span, process) {
  const rows = [...(span.tags ?? []), ...(process?.tags ?? []).map((t) => ({ ...t, key: `process: ${t.key}` }))];
  const logs = (span.logs ?? []).map((l) => ({
    key: `log +${fmtUs(l.timestamp - span.startTime)}`,
    value: l.fields.map((f) => (f.key === 'event' ? f.value : `${f.key}=${f.value}`)).join(' '),
  }));
  return el('table', { class: 'span-tags', testid: 'span-tags' },
    [...rows, ...logs].map((t) => el('tr', {}, el('th', {}, t.key), el('td', {}, String(t.value)))));
}

// The waterfall of one trace, in `root`.
export function renderWaterfall(root, trace) {
  const sum = summarize(trace);
  const total = Math.max(sum.durationUs, 1);
  const rows = ordered(trace).map(([span, depth]) => {
    const process = trace.processes?.[span.processID];
    const left = ((span.startTime - sum.start) / total) * 100;
    const width = Math.max((span.duration / total) * 100, 0.3);
    const failed = isError(span);
    const row = el('details', { class: `span-row${failed ? ' error' : ''}`, testid: 'span-row', 'data-span-id': span.spanID },
      el('summary', {},
        el('span', { class: 'span-name', style: `padding-left:${depth * 12}px`, title: `${process?.serviceName}: ${span.operationName}` },
          el('b', {}, process?.serviceName ?? '?'), ` ${span.operationName}`),
        el('span', { class: 'span-track' },
          el('span', { class: 'span-bar', style: `left:${left}%;width:${width}%` }),
          el('span', { class: 'span-dur', style: `left:${Math.min(left + width, 88)}%` }, fmtUs(span.duration)))),
      tagTable(span, process));
    return row;
  });
  root.replaceChildren(
    el('header', {},
      el('div', {},
        el('h3', { testid: 'trace-title' }, sum.root ? `${sum.root.service}: ${sum.root.operation}` : trace.traceID),
        el('div', { class: 'trace-meta' },
          `${clock(sum.start)} · ${fmtUs(sum.durationUs)} · ${sum.spans} spans`,
          sum.errors ? el('span', { class: 'status error' }, ` · ${sum.errors} failed`) : ' · ok',
          ` · trace ${trace.traceID}`)),
      el('button', { type: 'button', class: 'close', testid: 'trace-close', 'aria-label': 'Close', onclick: () => { root.hidden = true; } }, '×')),
    el('div', { class: 'waterfall', testid: 'waterfall' }, rows));
  root.hidden = false;
}

// The panel's trace list: `refresh(ele)` with the node or edge shown, `clear()` when closed.
export function createTraceList({ list, view }) {
  let seq = 0;
  let shownKey = '';
  let traces = new Map();

  async function openTrace(id) {
    const mine = seq;
    const cached = traces.get(id);
    try {
      const body = await getJaeger(`/api/traces/${enc(id)}`);
      if (mine !== seq && !cached) return;
      renderWaterfall(view, body.data[0] ?? cached);
    } catch (e) {
      if (cached) renderWaterfall(view, cached);
      else { view.hidden = false; view.replaceChildren(el('div', { class: 'error' }, e.message)); }
    }
  }

  function render(list, found, query) {
    if (!query) {
      list.replaceChildren(el('p', { class: 'muted' }, 'No trace filter for this element.'));
      return;
    }
    const items = found.map(summarize).sort((a, b) => b.start - a.start);
    const key = items.map((t) => `${t.id}:${t.spans}:${t.durationUs}`).join(',');
    if (key === shownKey && list.childElementCount) return; // unchanged: keep the rows a user may be clicking
    shownKey = key;
    if (!items.length) {
      list.replaceChildren(el('p', { class: 'muted', testid: 'no-traces' }, 'No traces in the last hour (are the sidecars exporting spans to mastd?).'));
      return;
    }
    list.replaceChildren(el('table', { class: 'trace-list' },
      el('tr', {}, el('th', {}, 'Trace'), el('th', {}, 'Duration'), el('th', {}, 'Status'), el('th', {}, 'Spans')),
      items.map((t) => el('tr', {
        class: `trace-row${t.errors ? ' error' : ''}`, testid: 'trace-row', 'data-trace-id': t.id, tabindex: '0',
        onclick: () => openTrace(t.id), onkeydown: (e) => { if (e.key === 'Enter') openTrace(t.id); },
      },
      el('td', { class: 'trace-op', title: `${t.root?.service}: ${t.root?.operation}` }, clock(t.start), ' ', t.root?.operation ?? t.id.slice(0, 8)),
      el('td', { testid: 'trace-duration' }, fmtUs(t.durationUs)),
      el('td', { testid: 'trace-status', class: t.errors ? 'status error' : 'status ok' }, t.errors ? 'error' : 'ok'),
      el('td', { testid: 'trace-spans' }, String(t.spans))))));
  }

  async function refresh(ele) {
    const query = traceQuery(ele);
    const mine = ++seq;
    if (!query) { render(list, [], query); return; }
    try {
      const body = await getJaeger(`/api/traces?${query}&limit=${LIMIT}&lookback=${LOOKBACK}`);
      if (mine !== seq) return;
      if (body.unavailable) {
        list.replaceChildren(el('p', { class: 'muted' }, 'This mastd serves no traces.'));
        return;
      }
      traces = new Map(body.data.map((t) => [t.traceID, t]));
      render(list, body.data, query);
    } catch (e) {
      if (mine !== seq) return;
      shownKey = '';
      list.replaceChildren(el('p', { class: 'error' }, e.message));
    }
  }

  function clear() {
    seq++;
    shownKey = '';
    list.replaceChildren();
    view.hidden = true;
  }

  return { refresh, clear, openTrace, label: (ele) => (ele.isEdge() ? `${nodeName(ele.source().data())} → ${nodeName(ele.target().data())}` : nodeName(ele.data())) };
}
