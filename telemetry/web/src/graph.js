// The topology graph: cytoscape set-up, the mapping from API elements to cytoscape elements,
// and the in-place diff that keeps the layout across refreshes.
import cytoscape from 'cytoscape';
import dagre from 'cytoscape-dagre';
import { num, fmtRps, fmtPercent, fmtMs, fmtBytes } from './format.js';

cytoscape.use(dagre);

// Kiali's service badges: [data flag, glyph, legend text].
export const BADGES = [
  ['hasTrafficShifting', '🔀', 'traffic shifting'],
  ['hasFaultInjection', '💥', 'fault injection'],
  ['hasRequestTimeout', '⏱', 'request timeout'],
  ['hasCB', '⚡', 'circuit breaker'],
];

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
  if (f.mtls >= 100) return text ? `🔒 ${text}` : '🔒';
  if (f.mtls > 0) return text ? `🔓${Math.round(f.mtls)}% · ${text}` : `🔓${Math.round(f.mtls)}%`;
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
  if (d.nodeType === 'service') {
    const badges = BADGES.filter(([flag]) => d[flag]).map(([, glyph]) => glyph).join(' ');
    if (badges) label += `\n${badges}`;
  }
  if (d.namespace && d.namespace !== ns && d.nodeType !== 'box') label += `\n(${d.namespace})`;
  return label;
}

function toNode(d, opts) {
  const classes = [d.nodeType ?? 'unknown', d.isUnreachable && 'unreachable', d.isIdle && 'idle'];
  return { group: 'nodes', data: { ...d, label: nodeLabel(d, opts.ns) }, classes: classes.filter(Boolean).join(' ') };
}

function edgeClasses(d) {
  const f = edgeFigures(d);
  const busy = (f.rps ?? f.bytes ?? 0) > 0;
  // A "healthy" edge without traffic is grey, not green: nothing is known to be healthy.
  const health = d.health && d.health !== 'healthy' ? d.health : busy ? 'healthy' : 'idle';
  return [health, busy && 'busy', f.tcp && 'tcp'].filter(Boolean).join(' ');
}

function toEdge(d, opts) {
  return { group: 'edges', data: { ...d, label: edgeLabel(d, opts.labelMode) }, classes: edgeClasses(d) };
}

const STYLE = [
  { selector: 'node', style: {
    label: 'data(label)', 'font-size': 11, color: '#151515', 'text-wrap': 'wrap', 'text-max-width': 140,
    'text-valign': 'bottom', 'text-margin-y': 4,
    'text-background-color': '#fff', 'text-background-opacity': 0.75, 'text-background-padding': 1,
    width: 26, height: 26, 'background-color': '#fff', 'border-width': 1.5, 'border-color': '#393f44',
  } },
  { selector: 'node.app', style: { shape: 'round-rectangle' } },
  { selector: 'node.workload', style: { shape: 'ellipse' } },
  { selector: 'node.service', style: { shape: 'triangle', width: 30 } },
  { selector: 'node.unknown', style: { shape: 'diamond' } },
  { selector: 'node.box', style: {
    shape: 'round-rectangle', 'background-color': '#f5f7fa', 'border-color': '#8a8d90', 'border-style': 'dashed',
    'text-valign': 'top', 'text-margin-y': -3, 'font-weight': 'bold', padding: 14,
  } },
  { selector: 'node.idle', style: { opacity: 0.45 } },
  { selector: 'node.unreachable', style: {
    'background-color': '#d2d2d2', 'border-color': '#8a8d90', 'border-style': 'dotted', color: '#8a8d90',
  } },
  { selector: 'node:selected', style: { 'border-width': 3, 'border-color': '#0066cc' } },
  { selector: 'edge', style: {
    width: 2, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle',
    'line-color': COLORS.idle, 'target-arrow-color': COLORS.idle,
    label: 'data(label)', 'font-size': 10, color: '#151515',
    'text-background-color': '#fff', 'text-background-opacity': 0.85, 'text-background-padding': 2,
  } },
  ...['healthy', 'degraded', 'failure'].map((h) => ({
    selector: `edge.${h}`, style: { 'line-color': COLORS[h], 'target-arrow-color': COLORS[h] },
  })),
  { selector: 'edge.tcp', style: { 'line-style': 'dashed', 'line-dash-pattern': [2, 3] } },
  { selector: 'edge:selected', style: { width: 4, color: '#0066cc' } },
];

export function createGraph(container) {
  return cytoscape({
    container, style: STYLE, minZoom: 0.2, maxZoom: 3,
    boxSelectionEnabled: false, selectionType: 'single',
  });
}

export function runLayout(cy) {
  cy.layout({
    name: 'dagre', rankDir: 'LR', nodeSep: 30, rankSep: 110, edgeSep: 10, padding: 40,
    nodeDimensionsIncludeLabels: true, fit: false, animate: false,
  }).run();
  fit(cy);
}

// Fit the graph in view, but do not blow a three-node graph up to giant size.
export function fit(cy) {
  cy.fit(undefined, 40);
  if (cy.zoom() > 1.6) cy.zoom({ level: 1.6, renderedPosition: { x: cy.width() / 2, y: cy.height() / 2 } });
}

// The structural fields cytoscape cannot change through data(): a change means remove + add.
const FIXED = ['parent', 'source', 'target'];

/**
 * Make cy show `graph` (an API graph response) by diffing on element ids: existing elements get
 * their data and classes updated in place, new ones are added, gone ones removed. The dagre
 * layout is re-run only when the set of nodes changed, so positions (and what the user dragged)
 * survive refreshes. Returns whether the layout ran.
 */
export function applyGraph(cy, graph, opts) {
  const wanted = new Map();
  for (const n of graph?.elements?.nodes ?? []) wanted.set(n.data.id, toNode(n.data, opts));
  for (const e of graph?.elements?.edges ?? []) wanted.set(e.data.id, toEdge(e.data, opts));

  let nodesChanged = false;
  cy.batch(() => {
    cy.elements().forEach((ele) => {
      if (ele.removed()) return; // already gone with a removed parent
      const w = wanted.get(ele.id());
      const stale = !w || w.group !== ele.group() || FIXED.some((k) => (w.data[k] ?? undefined) !== (ele.data(k) ?? undefined));
      if (stale) {
        if (ele.isNode()) nodesChanged = true;
        ele.remove();
      }
    });
    const added = [];
    for (const [id, w] of wanted) {
      const ele = cy.getElementById(id);
      if (ele.empty()) { added.push(w); continue; }
      const old = ele.data();
      const gone = Object.keys(old).filter((k) => !(k in w.data) && !FIXED.includes(k) && k !== 'id');
      if (gone.length) ele.removeData(gone.join(' '));
      ele.data(w.data);
      ele.classes(w.classes);
    }
    if (added.some((w) => w.group === 'nodes')) nodesChanged = true;
    // Parents before children, nodes before edges: cytoscape needs the referenced ids to exist.
    added.sort((a, b) => rank(a) - rank(b));
    cy.add(added);
  });
  if (nodesChanged && cy.nodes().nonempty()) runLayout(cy);
  return nodesChanged;
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
