// The topology graph: cytoscape set-up, the mapping from API elements to cytoscape elements,
// and the in-place diff that keeps the layout across refreshes. Positions come from
// layout.js, run in a Web Worker (layout-worker.js) so that a large graph's layout does not
// freeze the page; they are kept by node id, so a refresh moves nothing and a node that
// appears is placed next to its neighbours without moving the others.
import cytoscape from 'cytoscape';
import { num, fmtRps, fmtPercent, fmtMs, fmtBytes } from './format.js';
import { iconImage, iconStrip } from './icons.js';

// Kiali's service badges: [data flag, icon (icons.js), legend text].
export const BADGES = [
  ['hasTrafficShifting', 'trafficShifting', 'traffic shifting'],
  ['hasFaultInjection', 'faultInjection', 'fault injection'],
  ['hasRequestTimeout', 'requestTimeout', 'request timeout'],
  ['hasCB', 'circuitBreaker', 'circuit breaker'],
];

// The mTLS icon of an edge's figures: a lock for all of its traffic, an open one for a share.
export function mtlsIcon(f) {
  if (f.mtls >= 100) return 'lock';
  if (f.mtls > 0) return 'unlock';
  return undefined;
}

// Room at the start of an edge label for the lock, which is drawn over it (see drawEdgeIcons):
// an em space is one font size wide, the icon's size. Cytoscape trims labels, so zero-width
// spaces (not white space to String.trim) hold the gap in place.
const ICON_GAP = '\u200b\u2003\u2009\u200b';

export const COLORS = { healthy: '#3f9c35', idle: '#9aa0a6', degraded: '#ec7a08', failure: '#c9190b' };

// One figure extractor for edges, so the labels and the side panel always agree. Mast's plain
// numbers are preferred; Kiali's strings are the fallback.
export function edgeFigures(d) {
  const rates = d.traffic?.rates ?? {};
  const tcp = d.traffic?.protocol === 'tcp';
  return {
    tcp,
    rps: tcp ? undefined : num(d.rps) ?? num(rates.http) ?? num(rates.grpc),
    bytes: tcp ? num(d.tcpBytesPerSecond) ?? num(rates.tcp) : undefined,
    errorRate: num(d.errorRate),
    p50: num(d.p50),
    p95: num(d.p95) ?? num(d.responseTime),
    p99: num(d.p99),
    percent: num(d.percent) ?? num(rates.httpPercentReq),
    mtls: num(d.isMTLS),
  };
}

export function edgeLabel(d, mode) {
  const f = edgeFigures(d);
  let text = '';
  if (mode === 'rps') text = f.tcp ? fmtBytes(f.bytes) : fmtRps(f.rps);
  else if (mode === 'percent') text = fmtPercent(f.percent);
  else if (mode === 'p95' && !f.tcp) text = fmtMs(f.p95);
  // The lock stays visible whatever the label mode, as in Kiali; a partial share is spelled out.
  const icon = mtlsIcon(f);
  if (icon === 'lock') return `${ICON_GAP}${text}`;
  if (icon === 'unlock') return `${ICON_GAP}${Math.round(f.mtls)}%${text ? ` · ${text}` : ''}`;
  return text;
}

// The full, human name of a node, for titles.
export function nodeName(d) {
  switch (d.nodeType) {
    case 'service': return d.service ?? d.id;
    case 'workload': return d.workload ?? d.id;
    case 'box': return d.app ?? d.namespace ?? d.id;
    case 'app': return [d.app, d.version].filter(Boolean).join(' ') || d.id;
    default: return d.workload ?? d.app ?? d.service ?? 'unknown';
  }
}

function nodeLabel(d, ns) {
  // Inside an app box the box already names the app: the node only needs its version.
  let label = d.nodeType === 'app' && d.parent && d.version ? d.version : nodeName(d);
  if (d.namespace && d.namespace !== ns && d.nodeType !== 'box') label += `\n(${d.namespace})`;
  return label;
}

// A service's badges, drawn under it as one image (a strip of icons) between the node and its
// label; undefined without badges.
function badgeData(d) {
  if (d.nodeType !== 'service') return {};
  const icons = BADGES.filter(([flag]) => d[flag]).map(([, icon]) => icon);
  if (!icons.length) return {};
  const strip = iconStrip(icons);
  return { badgeImage: strip.uri, badgeWidth: strip.width, badges: strip.title };
}

function toNode(d, opts) {
  const classes = [d.nodeType ?? 'unknown', d.isUnreachable && 'unreachable', d.isIdle && 'idle'];
  return { group: 'nodes', data: { ...d, ...badgeData(d), label: nodeLabel(d, opts.ns) }, classes: classes.filter(Boolean).join(' ') };
}

function edgeClasses(d) {
  const f = edgeFigures(d);
  const busy = (f.rps ?? f.bytes ?? 0) > 0;
  // A "healthy" edge without traffic is grey, not green: nothing is known to be healthy.
  const health = d.health && d.health !== 'healthy' ? d.health : busy ? 'healthy' : 'idle';
  return [health, busy && 'busy', f.tcp && 'tcp'].filter(Boolean).join(' ');
}

function toEdge(d, opts) {
  const icon = mtlsIcon(edgeFigures(d));
  return { group: 'edges', data: { ...d, ...(icon && { mtlsIcon: icon }), label: edgeLabel(d, opts.labelMode) }, classes: edgeClasses(d) };
}

// Labels smaller than this on screen are not drawn (a whole namespace in view): cytoscape skips
// them without any restyling, and zooming in brings them back.
const MIN_FONT = 6;
// Edge labels' font size and background padding (STYLE), which drawEdgeIcons needs.
const EDGE_FONT = 10;
const EDGE_LABEL_PAD = 2;
// The badge strip's place: under the service triangle (26 px high), the label under it.
const BADGE_TOP = 29;
const BADGE_ROW = 17;

const STYLE = [
  { selector: 'node', style: {
    label: 'data(label)', 'font-size': 11, 'min-zoomed-font-size': MIN_FONT, color: '#151515',
    'text-wrap': 'wrap', 'text-max-width': 140, 'text-valign': 'bottom', 'text-margin-y': 4,
    'text-background-color': '#fff', 'text-background-opacity': 0.75, 'text-background-padding': 1,
    width: 26, height: 26, 'background-color': '#fff', 'border-width': 1.5, 'border-color': '#393f44',
  } },
  { selector: 'node.app', style: { shape: 'round-rectangle' } },
  { selector: 'node.workload', style: { shape: 'ellipse' } },
  { selector: 'node.service', style: { shape: 'triangle', width: 30 } },
  { selector: 'node[badgeImage]', style: {
    'background-image': 'data(badgeImage)', 'background-fit': 'none', 'background-clip': 'none',
    'background-image-containment': 'over', 'background-position-x': '50%', 'background-position-y': `${BADGE_TOP}px`,
    'bounds-expansion': BADGE_ROW + 14, 'text-margin-y': 4 + BADGE_ROW,
  } },
  { selector: 'node.unknown', style: { shape: 'diamond' } },
  { selector: 'node.box', style: {
    shape: 'round-rectangle', 'background-color': '#f5f7fa', 'border-color': '#8a8d90', 'border-style': 'dashed',
    'text-valign': 'top', 'text-margin-y': -3, 'font-weight': 'bold', padding: 14,
  } },
  { selector: 'node.flatbox', style: {
    width: 'data(boxW)', height: 'data(boxH)', 'z-compound-depth': 'bottom',
  } },
  { selector: 'node.idle', style: { opacity: 0.45 } },
  { selector: 'node.unreachable', style: {
    'background-color': '#d2d2d2', 'border-color': '#8a8d90', 'border-style': 'dotted', color: '#8a8d90',
  } },
  { selector: 'node:selected', style: { 'border-width': 3, 'border-color': '#0066cc' } },
  { selector: 'edge', style: {
    width: 2, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle',
    'line-color': COLORS.idle, 'target-arrow-color': COLORS.idle,
    label: 'data(label)', 'font-size': EDGE_FONT, 'min-zoomed-font-size': MIN_FONT, color: '#151515',
    'text-background-color': '#fff', 'text-background-opacity': 0.85, 'text-background-padding': EDGE_LABEL_PAD,
  } },
  ...['healthy', 'degraded', 'failure'].map((h) => ({
    selector: `edge.${h}`, style: { 'line-color': COLORS[h], 'target-arrow-color': COLORS[h] },
  })),
  { selector: 'edge.tcp', style: { 'line-style': 'dashed', 'line-dash-pattern': [2, 3] } },
  { selector: 'edge:selected', style: { width: 4, color: '#0066cc' } },
  // The whole mesh: "haystack" edges, the cheapest edges cytoscape draws (straight, and
  // without arrowheads).
  { selector: 'edge.big', style: { 'curve-style': 'haystack', 'haystack-radius': 0, 'target-arrow-shape': 'none' } },
];

// Above this many elements (nodes + edges) a graph gets the cheaper drawing above.
export const BIG = 2500;

export function createGraph(container) {
  const cy = cytoscape({
    container, style: STYLE, minZoom: 0.2, maxZoom: 3,
    boxSelectionEnabled: false, selectionType: 'single',
  });
  drawEdgeIcons(cy);
  return cy;
}

// === edge icons: the mTLS lock on the edge labels ===

// Cytoscape labels are text only, so the lock is drawn on a canvas laid over cytoscape's, in
// the gap the label keeps at its start (ICON_GAP), each time cytoscape draws a frame. The
// icons drawn last, in screen pixels, are kept for tests (edgeIcons()).
const edgeIconState = new WeakMap();

function drawEdgeIcons(cy) {
  const container = cy.container();
  if (!container) return;
  const canvas = document.createElement('canvas');
  canvas.className = 'edge-icons';
  canvas.dataset.testid = 'edge-icons';
  canvas.setAttribute('aria-hidden', 'true'); // the side panel says it in words
  Object.assign(canvas.style, { position: 'absolute', left: '0', top: '0', pointerEvents: 'none', zIndex: '1' });
  container.append(canvas);
  const state = { drawn: [] };
  edgeIconState.set(cy, state);
  let waiting = false;
  const draw = () => {
    const w = container.clientWidth;
    const h = container.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
      canvas.style.width = `${w}px`;
      canvas.style.height = `${h}px`;
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const drawn = [];
    state.drawn = drawn;
    const zoom = cy.zoom();
    if (EDGE_FONT * zoom < MIN_FONT) return; // the labels are not drawn at this zoom either
    const size = EDGE_FONT * zoom;
    cy.edges('[mtlsIcon]').forEach((e) => {
      if (!e.visible()) return;
      const img = iconImage(e.data('mtlsIcon'));
      if (!img.complete) {
        if (!waiting) { waiting = true; img.addEventListener('load', () => { waiting = false; draw(); }, { once: true }); }
        return;
      }
      const bb = e.renderedBoundingBox({
        includeNodes: false, includeEdges: false, includeLabels: true, includeMainLabels: true,
        includeSourceLabels: false, includeTargetLabels: false, includeOverlays: false, includeUnderlays: false,
      });
      if (bb.w <= 0 || bb.x2 < 0 || bb.y2 < 0 || bb.x1 > w || bb.y1 > h) return;
      // The bounding box adds the background padding and 2 px of margin around the text.
      const x = bb.x1 + (EDGE_LABEL_PAD + 2) * zoom;
      const y = (bb.y1 + bb.y2) / 2 - size / 2;
      ctx.globalAlpha = e.effectiveOpacity();
      ctx.drawImage(img, x, y, size, size);
      drawn.push({ id: e.id(), icon: e.data('mtlsIcon'), x, y, size });
    });
    ctx.globalAlpha = 1;
  };
  cy.on('render', draw);
}

/** The edge icons drawn in the last frame: `{ id, icon, x, y, size }` in screen pixels. */
export function edgeIcons(cy) {
  return edgeIconState.get(cy)?.drawn ?? [];
}

// Fit the graph in view, but do not blow a three-node graph up to giant size.
export function fit(cy) {
  cy.fit(undefined, 40);
  if (cy.zoom() > 1.6) cy.zoom({ level: 1.6, renderedPosition: { x: cy.width() / 2, y: cy.height() / 2 } });
}

// The same from the layout's own figures, without asking cytoscape for the bounding box of
// every element (which measures every label: seconds on the whole mesh).
function fitTo(cy, box) {
  const pad = 40;
  const w = Math.max(1, box.x2 - box.x1);
  const h = Math.max(1, box.y2 - box.y1);
  const zoom = Math.min(1.6, (cy.width() - 2 * pad) / w, (cy.height() - 2 * pad) / h);
  // A large graph may need to be smaller than the usual floor to fit at all.
  if (zoom < cy.minZoom()) cy.minZoom(Math.max(0.01, zoom));
  const z = Math.max(cy.minZoom(), zoom);
  cy.viewport({ zoom: z, pan: { x: cy.width() / 2 - z * (box.x1 + box.x2) / 2, y: cy.height() / 2 - z * (box.y1 + box.y2) / 2 } });
}

// === layout: sizes, the worker, positions kept by id ===

// A node's size for the layout: its shape plus its label under it (11 px font, wrapped at
// 140 px), estimated from the text rather than measured, so that no label is measured before
// the graph is drawn.
function layoutSize(w) {
  const body = w.data.nodeType === 'service' ? 30 : 26;
  const lines = String(w.data.label ?? '').split('\n');
  let rows = 0;
  let width = Math.max(body, w.data.badgeWidth ?? 0);
  for (const line of lines) {
    const px = [...line].length * 6.4;
    rows += Math.max(1, Math.ceil(px / 140));
    width = Math.max(width, Math.min(140, px));
  }
  return { w: Math.ceil(width) + 8, h: body + 6 + rows * 14 + (w.data.badgeImage ? BADGE_ROW : 0) };
}

function layoutInput(wanted) {
  const nodes = [];
  const edges = [];
  for (const w of wanted.values()) {
    const d = w.data;
    if (w.group === 'edges') { edges.push({ s: d.source, t: d.target }); continue; }
    // A workload graph has no app boxes: a workload is laid out with the other workloads of
    // its app all the same (the group is not drawn).
    const group = !d.parent && d.nodeType === 'workload' && d.app ? `${d.namespace}/${d.app}` : undefined;
    nodes.push({ id: d.id, parent: d.parent, group, ns: d.namespace, sort: d.label, ...layoutSize(w) });
  }
  return { nodes, edges };
}

let worker;
let seq = 0;
const pending = new Map();

/**
 * Start the layout worker now, before the first graph arrives: loading it then overlaps the
 * API call instead of adding to the time to the first drawing.
 */
export function startLayoutWorker() {
  layoutInWorker({ nodes: [], edges: [] }).catch(() => {}); // a failure shows on the real layout
}

function layoutInWorker(input) {
  if (!worker) {
    // Beside app.js in dist/ (fixed file names: see build.mjs).
    worker = new Worker(new URL('./layout-worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = ({ data }) => {
      const p = pending.get(data.id);
      pending.delete(data.id);
      if (data.error) p?.reject(new Error(`layout: ${data.error}`));
      else p?.resolve(data.result);
    };
    worker.onerror = (e) => {
      for (const p of pending.values()) p.reject(new Error(`layout worker: ${e.message ?? 'failed to start'}`));
      pending.clear();
      worker = undefined;
    };
  }
  const id = ++seq;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, input });
  });
}

// Per cytoscape instance: where every node was put, by id (kept after a node goes, so a node
// that comes back returns to its place), and an epoch that resetLayout() moves on, so a layout
// that finishes after the graph was cleared is dropped.
const placed = new WeakMap();
function memory(cy) {
  if (!placed.has(cy)) placed.set(cy, { pos: new Map(), epoch: 0 });
  return placed.get(cy);
}

/** Forget every position (namespace or graph type changed: the ids mean other things). */
export function resetLayout(cy) {
  const m = memory(cy);
  m.pos.clear();
  m.epoch++;
}

// New nodes among kept ones: each goes where the new layout puts it relative to a neighbour
// that is already drawn (a sibling in its box first), so nothing already drawn moves; without
// such a neighbour, the new nodes keep their layout among themselves, under the graph.
function placeNew(fresh, layout, known, input) {
  const neighbours = new Map();
  const link = (a, b) => {
    if (!neighbours.has(a)) neighbours.set(a, []);
    neighbours.get(a).push(b);
  };
  const byParent = new Map();
  for (const n of input.nodes) {
    if (!n.parent) continue;
    if (!byParent.has(n.parent)) byParent.set(n.parent, []);
    byParent.get(n.parent).push(n.id);
  }
  for (const n of input.nodes) if (n.parent) for (const s of byParent.get(n.parent)) if (s !== n.id) link(n.id, s);
  for (const e of input.edges) { link(e.s, e.t); link(e.t, e.s); }

  const out = new Map();
  const loose = [];
  for (const id of fresh) {
    const anchor = (neighbours.get(id) ?? []).find((a) => known.has(a) && layout[a]);
    if (anchor) {
      const a = known.get(anchor);
      out.set(id, { x: a.x + layout[id].x - layout[anchor].x, y: a.y + layout[id].y - layout[anchor].y });
    } else {
      loose.push(id);
    }
  }
  if (loose.length) {
    let below = -Infinity;
    let left = Infinity;
    for (const p of known.values()) { below = Math.max(below, p.y); left = Math.min(left, p.x); }
    const x0 = Math.min(...loose.map((id) => layout[id].x));
    const y0 = Math.min(...loose.map((id) => layout[id].y));
    for (const id of loose) out.set(id, { x: left + layout[id].x - x0, y: below + 120 + layout[id].y - y0 });
  }
  return out;
}

// The structural fields cytoscape cannot change through data(): a change means remove + add.
const FIXED = ['parent', 'source', 'target', 'flatBox'];

// Above this many elements the app boxes are drawn as plain nodes behind their versions rather
// than as cytoscape compound nodes: cytoscape keeps compound nodes' bookkeeping up to date for
// every style property of every element, which made a third of the first drawing of one
// namespace of the benchmark's mesh (946 elements). A box then does not follow a dragged
// version until the next refresh; the versions keep their box's id as `box` instead of
// `parent`. Small graphs (the demo's) keep real compound boxes.
export const FLAT_ABOVE = 600;

function flattenBoxes(wanted, parents, pos) {
  const extent = new Map();
  for (const w of wanted.values()) {
    const box = w.group === 'nodes' ? w.data.parent : undefined;
    if (!box) continue;
    const p = pos.get(w.data.id);
    const { w: width, h } = layoutSize(w);
    const e = extent.get(box) ?? { x1: Infinity, y1: Infinity, x2: -Infinity, y2: -Infinity };
    if (p) {
      e.x1 = Math.min(e.x1, p.x - width / 2);
      e.x2 = Math.max(e.x2, p.x + width / 2);
      e.y1 = Math.min(e.y1, p.y - 13);
      e.y2 = Math.max(e.y2, p.y - 13 + h);
    }
    extent.set(box, e);
    const { parent, ...data } = w.data;
    w.data = { ...data, box: parent };
  }
  for (const id of parents) {
    const w = wanted.get(id);
    const e = extent.get(id);
    if (!w || !e || !Number.isFinite(e.x1)) continue;
    // The box style's padding (14) goes around this, as around a compound node's children.
    w.data = { ...w.data, flatBox: true, boxW: e.x2 - e.x1, boxH: e.y2 - e.y1 };
    w.classes += ' flatbox';
    w.position = { x: (e.x1 + e.x2) / 2, y: (e.y1 + e.y2) / 2 };
  }
}

/** The nodes a node stands for: a box's versions (drawn inside it or not), else itself. */
export function members(node) {
  if (node.isParent()) return node.children();
  if (node.data('flatBox')) return node.cy().nodes().filter((n) => n.data('box') === node.id());
  return node;
}

/**
 * Make cy show `graph` (an API graph response) by diffing on element ids: existing elements get
 * their data and classes updated in place, new ones are added, gone ones removed. Positions are
 * kept by node id: the layout runs (in the worker) only when a node without a position
 * appears, and then only the new nodes are placed, unless nothing was drawn yet. Resolves to
 * whether the layout ran.
 */
export async function applyGraph(cy, graph, opts) {
  const wanted = new Map();
  for (const n of graph?.elements?.nodes ?? []) wanted.set(n.data.id, toNode(n.data, opts));
  for (const e of graph?.elements?.edges ?? []) wanted.set(e.data.id, toEdge(e.data, opts));
  const big = wanted.size > BIG;
  if (big) for (const w of wanted.values()) if (w.group === 'edges') w.classes += ' big';

  const mem = memory(cy);
  const epoch = mem.epoch;
  // Where the drawn nodes are now (the user may have dragged some).
  cy.nodes().forEach((n) => { if (!n.isParent() && !n.data('flatBox')) mem.pos.set(n.id(), { ...n.position() }); });
  const parents = new Set();
  for (const w of wanted.values()) if (w.group === 'nodes' && w.data.parent) parents.add(w.data.parent);
  const fresh = [];
  for (const w of wanted.values()) {
    if (w.group === 'nodes' && !parents.has(w.data.id) && !mem.pos.has(w.data.id)) fresh.push(w.data.id);
  }
  let laidOut = false;
  let box; // set when the whole graph was laid out afresh
  if (fresh.length) {
    const input = layoutInput(wanted);
    performance.mark('mast:layout-start');
    const { positions, box: all } = await layoutInWorker(input);
    performance.mark('mast:layout-done');
    if (mem.epoch !== epoch) return false; // cleared meanwhile: this answer is for another graph
    const known = new Map([...mem.pos].filter(([id]) => wanted.has(id)));
    // Nothing drawn yet, or most of it is new: the whole layout. Else only the new nodes.
    if (known.size === 0 || fresh.length > known.size) {
      for (const [id, p] of Object.entries(positions)) mem.pos.set(id, p);
      box = all;
    } else {
      for (const [id, p] of placeNew(fresh, positions, known, input)) mem.pos.set(id, p);
    }
    laidOut = true;
  }

  // Draw the cheaper way while the view moves, for a large graph (cytoscape reads these
  // renderer options on every frame; they are init options, so set on its renderer).
  const r = cy.renderer?.();
  if (r) { r.textureOnViewport = big; r.hideEdgesOnViewport = big; }

  if (wanted.size > FLAT_ABOVE) flattenBoxes(wanted, parents, mem.pos);

  cy.batch(() => {
    cy.elements().forEach((ele) => {
      if (ele.removed()) return; // already gone with a removed parent
      const w = wanted.get(ele.id());
      const stale = !w || w.group !== ele.group() || FIXED.some((k) => (w.data[k] ?? undefined) !== (ele.data(k) ?? undefined));
      if (stale) ele.remove();
    });
    const added = [];
    for (const [id, w] of wanted) {
      const ele = cy.getElementById(id);
      if (ele.empty()) {
        const p = w.position ?? mem.pos.get(id);
        added.push(p && w.group === 'nodes' ? { ...w, position: { ...p } } : w);
        continue;
      }
      const old = ele.data();
      const gone = Object.keys(old).filter((k) => !(k in w.data) && !FIXED.includes(k) && k !== 'id');
      if (gone.length) ele.removeData(gone.join(' '));
      ele.data(w.data);
      ele.classes(w.classes);
      // A fresh layout of the whole graph moves what was drawn; otherwise it stays put. A
      // drawn-flat box goes around its versions wherever they are.
      const p = w.position ?? (box && w.group === 'nodes' && !parents.has(id) ? mem.pos.get(id) : undefined);
      if (p) ele.position({ ...p });
    }
    // Parents before children, nodes before edges: cytoscape needs the referenced ids to exist.
    added.sort((a, b) => rank(a) - rank(b));
    cy.add(added);
  });
  if (box) fitTo(cy, box);
  performance.mark('mast:applied');
  return laidOut;
}
const rank = (w) => (w.group === 'edges' ? 2 : w.data.parent ? 1 : 0);

export function relabelEdges(cy, mode) {
  cy.batch(() => cy.edges().forEach((e) => e.data('label', edgeLabel(e.data(), mode))));
}

// Traffic animation: marching dashes on edges that carry traffic. A style bypass driven by a
// timer, so it needs no re-render of the rest of the graph and stops cleanly.
let animTimer;
export function setAnimation(cy, on) {
  clearInterval(animTimer);
  if (!on) {
    cy.edges().removeStyle('line-style line-dash-pattern line-dash-offset');
    return;
  }
  let offset = 0;
  animTimer = setInterval(() => {
    offset = (offset + 1) % 1000;
    cy.edges('.busy').style({ 'line-style': 'dashed', 'line-dash-pattern': [6, 4], 'line-dash-offset': -offset });
  }, 50);
}
