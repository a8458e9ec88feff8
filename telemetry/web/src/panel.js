// The side panel: figures and three time-series charts for the clicked node or edge.
import uPlot from 'uplot';
import { getDetail } from './api.js';
import { BADGES, edgeFigures, fit, members, mtlsIcon, nodeName } from './graph.js';
import { withIcon } from './icons.js';
import { fmtRps, fmtRatio, fmtMs, fmtPercent, fmtBytes } from './format.js';
import { createTraceList } from './traces.js';

const CHARTS = [
  // [series key, title, colour, value transform]
  ['rps', 'Requests/s', '#0066cc', (v) => v],
  ['errorRate', 'Error rate %', '#c9190b', (v) => v * 100],
  ['p95', 'Response time p95 (ms)', '#ec7a08', (v) => v],
];

// Figures of a node, from the edges around it: API.md gives nodes no rate, error or latency
// figures of their own, so a node shows its inbound traffic (outbound for a pure client).
// Figures the server does put in the node's data win; p95 falls back to the detail series.
function nodeFigures(node, detail) {
  const around = members(node);
  let edges = around.incomers('edge').filter((e) => !around.contains(e.source()));
  if (edges.empty()) edges = around.outgoers('edge');
  const figs = edges.map((e) => edgeFigures(e.data()));
  const rps = figs.reduce((s, f) => s + (f.rps ?? 0), 0);
  const weighted = (key) => {
    const known = figs.filter((f) => f[key] !== undefined && f.rps !== undefined);
    const w = known.reduce((s, f) => s + f.rps, 0);
    if (!known.length) return undefined;
    if (w <= 0) return known[0][key];
    // A mean lies between the smallest and largest value; clamping keeps float rounding from
    // turning all-100% mTLS into 99.99999999999999% (an open lock beside "100%").
    const values = known.map((f) => f[key]);
    const mean = known.reduce((s, f) => s + f[key] * f.rps, 0) / w;
    return Math.min(Math.max(mean, Math.min(...values)), Math.max(...values));
  };
  const d = { ...node.data(), ...detail?.data };
  const last = (series) => (series?.length ? series[series.length - 1][1] : undefined);
  // Percentiles do not average: they are exact only when a single edge carries the traffic.
  const one = figs.length === 1 ? figs[0] : {};
  const fromService = edges.length === 1 && edges[0].source().data('nodeType') === 'service';
  return {
    tcp: figs.length > 0 && figs.every((f) => f.tcp),
    rps: d.rps ?? (figs.length ? rps : undefined),
    bytes: figs.reduce((s, f) => s + (f.bytes ?? 0), 0),
    errorRate: d.errorRate ?? weighted('errorRate'),
    p50: d.p50 ?? one.p50, p95: d.p95 ?? one.p95 ?? last(detail?.series?.p95), p99: d.p99 ?? one.p99,
    mtls: d.mtlsPercent ?? weighted('mtls'),
    percent: fromService ? one.percent : undefined, // a version's share of its service
  };
}

// One-line time ticks (uPlot's default adds a date line that does not fit a small chart).
const hhmm = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });

export function createPanel({ root, cy, getState }) {
  const $ = (sel) => root.querySelector(sel);
  let selected = null; // id of the node/edge shown
  let seq = 0; // ignores detail answers that arrive after a newer selection
  const charts = [];
  const traces = createTraceList({ list: $('#panel-trace-list'), view: document.getElementById('trace-view') });

  function chartWidth() { return Math.max(200, $('#panel-charts').clientWidth); }

  function ensureCharts() {
    if (charts.length) return;
    for (const [key, title, color] of CHARTS) {
      const box = document.createElement('div');
      box.className = 'chart';
      box.dataset.testid = `chart-${key}`;
      $('#panel-charts').append(box);
      charts.push(new uPlot({
        title, width: chartWidth(), height: 110, legend: { show: false },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
        axes: [{ size: 24, font: '10px system-ui', ticks: { size: 3 }, values: (u, ts) => ts.map(hhmm) },
          { size: 40, font: '10px system-ui', ticks: { size: 3 } }],
        series: [{}, { stroke: color, width: 1.5, fill: `${color}22`, points: { show: false } }],
      }, [[], []], box));
    }
  }

  function renderFigures(ele, detail) {
    const f = ele.isEdge() ? edgeFigures(ele.data()) : nodeFigures(ele, detail);
    const rows = [
      f.tcp ? ['Throughput', fmtBytes(f.bytes)] : ['Requests', fmtRps(f.rps)],
      ['Error rate', fmtRatio(f.errorRate)],
      ['p50 / p95 / p99', [f.p50, f.p95, f.p99].map(fmtMs).join(' / ')],
      ['mTLS', mtlsIcon(f) ? withIcon(mtlsIcon(f), fmtPercent(f.mtls)) : fmtPercent(f.mtls)],
      // From a service it is the traffic split; from a caller, the share of its requests.
      [ele.isEdge() && ele.source().data('nodeType') !== 'service' ? 'Share of source' : 'Split', fmtPercent(f.percent)],
    ];
    if (ele.isNode() && ele.data('isUnreachable')) rows.push(['Proxy', 'unreachable (last scrape failed)']);
    const badges = ele.isNode() && ele.data('nodeType') === 'service' ? BADGES.filter(([flag]) => ele.data(flag)) : [];
    if (badges.length) rows.push(['Routing', badges.map(([, icon, text]) => withIcon(icon, text))]);
    $('#panel-figures').replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd');
      dd.replaceChildren(...[v].flat());
      return [dt, dd];
    }));
  }

  function renderTitle(ele) {
    const d = ele.data();
    if (ele.isEdge()) {
      $('#panel-title').textContent = `${nodeName(ele.source().data())} → ${nodeName(ele.target().data())}`;
      $('#panel-subtitle').textContent = `edge · ${d.traffic?.protocol ?? 'http'} · ${d.health ?? ''}`;
    } else {
      $('#panel-title').textContent = nodeName(d);
      $('#panel-subtitle').textContent = `${d.nodeType === 'box' ? 'app box' : d.nodeType} · ${d.namespace ?? ''}`;
    }
  }

  async function refresh() {
    if (!selected) return;
    const ele = cy.getElementById(selected);
    if (ele.empty()) { close(); return; } // gone from the graph
    renderTitle(ele);
    renderFigures(ele); // at once from the graph data; the detail adds the series
    traces.refresh(ele);
    const { ns, duration } = getState();
    const mine = ++seq;
    try {
      const detail = await getDetail(ns, selected, duration);
      if (mine !== seq || !selected) return;
      $('#panel-error').hidden = true;
      renderFigures(ele, detail);
      ensureCharts();
      CHARTS.forEach(([key, , , tx], i) => {
        const s = detail.series?.[key] ?? [];
        charts[i].setData([s.map((p) => p[0]), s.map((p) => tx(p[1]))]);
      });
    } catch (e) {
      if (mine !== seq) return;
      $('#panel-error').textContent = e.message;
      $('#panel-error').hidden = false;
    }
  }

  function open(ele) {
    const changed = selected !== ele.id();
    selected = ele.id();
    setOpen(true);
    if (changed) {
      charts.forEach((c) => c.setData([[], []])); // no stale curves from the last pick
      traces.clear();
    }
    ensureCharts();
    charts.forEach((c) => c.setSize({ width: chartWidth(), height: 110 }));
    return refresh();
  }

  function close() {
    selected = null;
    seq++;
    traces.clear();
    setOpen(false);
    cy.elements().unselect();
  }

  // The panel takes its width from the graph rather than covering it; the graph is re-fitted
  // only if it no longer fits (zoom and pan change, node positions never do).
  function setOpen(open) {
    if (root.hidden === !open) return;
    root.hidden = !open;
    document.body.classList.toggle('panel-open', open);
    cy.resize();
    const bb = cy.elements().renderedBoundingBox();
    if (bb.x1 < 0 || bb.y1 < 0 || bb.x2 > cy.width() || bb.y2 > cy.height()) fit(cy);
  }

  $('#panel-close').addEventListener('click', close);
  return { open, close, refresh, get selected() { return selected; } };
}
