// The graph layout, as a pure function of plain data so it can run in a Web Worker
// (layout-worker.js) and in Node for tests. Every position comes from dagre (@dagrejs/dagre);
// what this module adds is the order in which dagre is asked, so that no run is large:
//
//  1. each app box (a compound parent) is laid out alone: its versions, with the edges between
//     them (by dagre), or without any, simply one under the other, as dagre would put them.
//     The box then counts as one node of that size;
//  2. the top level (boxes as single nodes, services, unboxed nodes; edges merged per pair of
//     top-level nodes) is laid out left to right, as Kiali's dagre does;
//  3. a graph too large for one dagre run (the whole mesh) is laid out per namespace, and the
//     namespaces are put side by side in rows; edges between namespaces are drawn but do not
//     steer the layout.
//
// Why: dagre's cost grows much faster than the graph, and worst with compound nodes: cytoscape-
// dagre took 2.5 s for one namespace of this mesh (402 nodes, compound boxes) and about 4
// minutes for all ten (3,001 nodes). Box by box and namespace by namespace, each dagre run is
// ~100 nodes and the whole mesh is ten of those. Cytoscape sizes the boxes from where their
// children are.

import dagre from '@dagrejs/dagre';

// Spacing, as the page used with cytoscape-dagre: left to right, 110 px between ranks.
const TOP = { rankdir: 'LR', nodesep: 30, ranksep: 110, edgesep: 10 };
// Inside a box: the versions close together.
const INNER = { rankdir: 'LR', nodesep: 16, ranksep: 60, edgesep: 10 };
// Box padding (the page's style: padding 14) and the box's own label above it.
const BOX_PAD = 14;
const BOX_LABEL = 18;
// Above this many top-level nodes a multi-namespace graph is laid out per namespace.
export const SPLIT_ABOVE = 250;
// Gap between namespaces when they are laid out apart.
const NS_GAP = 160;

/**
 * @param {{nodes: {id: string, parent?: string, group?: string, ns?: string, sort?: string, w: number, h: number}[],
 *          edges: {s: string, t: string}[]}} input
 *   nodes: every node, boxes included (a box's w/h are ignored: it is sized from its children);
 *   `group` puts unboxed nodes together as if in a box that is not drawn (a workload graph's
 *   workloads of one app).
 * @returns {{positions: Record<string, {x: number, y: number}>, box: {x1, y1, x2, y2}, runs: number}}
 *   the centre of every non-box node (boxes follow their children), the drawing's extent, and
 *   how many dagre runs it took.
 */
export function computeLayout(input) {
  const byId = new Map(input.nodes.map((n) => [n.id, n]));
  const members = new Map(); // unit id → its nodes (a box's children, or a group)
  const unitOf = new Map(); // node id → the unit it is laid out in
  for (const n of input.nodes) {
    const unit = n.parent && byId.has(n.parent) ? n.parent : n.group ? `group:${n.group}` : undefined;
    if (!unit) continue;
    unitOf.set(n.id, unit);
    if (!members.has(unit)) members.set(unit, []);
    members.get(unit).push(n);
  }
  const top = (id) => unitOf.get(id) ?? id;
  let runs = 0;

  // 1. Inside each unit: the members' offsets from the unit's centre, and the unit's size.
  const inner = new Map(); // unit id → { w, h, offsets: Map(id → {x, y}) }
  const innerEdges = new Map();
  for (const e of input.edges) {
    const u = unitOf.get(e.s);
    if (u && u === unitOf.get(e.t) && e.s !== e.t) {
      if (!innerEdges.has(u)) innerEdges.set(u, []);
      innerEdges.get(u).push(e);
    }
  }
  for (const [unit, nodes] of members) {
    const drawn = !unit.startsWith('group:');
    let offsets;
    let box;
    if (!innerEdges.has(unit)) {
      // No edges inside: dagre would put them all in one rank, i.e. one column in id order;
      // stacking them so saves a dagre run per box (hundreds on the whole mesh).
      ({ positions: offsets, box } = column(nodes, INNER.nodesep));
    } else {
      const placed = runDagre(nodes, innerEdges.get(unit) ?? [], INNER);
      runs++;
      offsets = placed.positions;
      box = placed.box;
    }
    const cx = (box.x1 + box.x2) / 2;
    const cy = (box.y1 + box.y2) / 2;
    for (const p of offsets.values()) { p.x -= cx; p.y -= cy; }
    const pad = drawn ? BOX_PAD : 0;
    const label = drawn ? BOX_LABEL : 0;
    // The box's label sits above it: the unit is taller by that much, its children lower.
    for (const p of offsets.values()) p.y += label / 2;
    inner.set(unit, {
      w: box.x2 - box.x1 + 2 * pad,
      h: box.y2 - box.y1 + 2 * pad + label,
      offsets,
    });
  }

  // 2. The top-level units and the edges between them, once per pair.
  const units = [];
  for (const n of input.nodes) {
    if (unitOf.has(n.id)) continue;
    const size = inner.get(n.id);
    units.push({ id: n.id, ns: n.ns ?? '', w: size?.w ?? n.w, h: size?.h ?? n.h });
  }
  for (const [unit, size] of inner) {
    if (unit.startsWith('group:')) units.push({ id: unit, ns: members.get(unit)[0].ns ?? '', w: size.w, h: size.h });
  }
  const pairs = new Map();
  for (const e of input.edges) {
    const s = top(e.s);
    const t = top(e.t);
    if (s !== t) pairs.set(`${s}\u0000${t}`, { s, t });
  }

  // 3. One dagre run, or one per namespace when the graph is large.
  const namespaces = [...new Set(units.map((u) => u.ns))].sort();
  const split = units.length > SPLIT_ABOVE && namespaces.length > 1;
  const parts = split ? namespaces.map((ns) => units.filter((u) => u.ns === ns)) : [units];
  const unitPos = new Map();
  const blocks = [];
  for (const part of parts) {
    const ids = new Set(part.map((u) => u.id));
    const edges = [...pairs.values()].filter((e) => ids.has(e.s) && ids.has(e.t));
    const placed = runDagre(part, edges, TOP);
    runs++;
    blocks.push(placed);
  }
  // Namespaces in rows of about the same width, the whole roughly as wide as it is tall times
  // the screen's aspect (wider than tall).
  const area = blocks.reduce((a, b) => a + (b.box.x2 - b.box.x1 + NS_GAP) * (b.box.y2 - b.box.y1 + NS_GAP), 0);
  const rowWidth = Math.max(...blocks.map((b) => b.box.x2 - b.box.x1), Math.sqrt(area * 1.6));
  let x = 0;
  let y = 0;
  let rowHeight = 0;
  for (const b of blocks) {
    const w = b.box.x2 - b.box.x1;
    const h = b.box.y2 - b.box.y1;
    if (x > 0 && x + w > rowWidth) { x = 0; y += rowHeight + NS_GAP; rowHeight = 0; }
    for (const [id, p] of b.positions) unitPos.set(id, { x: p.x - b.box.x1 + x, y: p.y - b.box.y1 + y });
    x += w + NS_GAP;
    rowHeight = Math.max(rowHeight, h);
  }

  // Members at their unit's place plus their offset; boxes are left to cytoscape.
  const positions = {};
  for (const n of input.nodes) {
    if (inner.has(n.id)) continue; // a box
    const unit = unitOf.get(n.id);
    if (unit) {
      const c = unitPos.get(unit);
      const o = inner.get(unit).offsets.get(n.id);
      positions[n.id] = { x: c.x + o.x, y: c.y + o.y };
    } else {
      positions[n.id] = unitPos.get(n.id);
    }
  }
  // The extent of the drawing (node sizes included), for fitting it in view.
  const box = { x1: Infinity, y1: Infinity, x2: -Infinity, y2: -Infinity };
  for (const n of input.nodes) {
    const p = positions[n.id];
    if (!p) continue;
    box.x1 = Math.min(box.x1, p.x - n.w / 2);
    box.x2 = Math.max(box.x2, p.x + n.w / 2);
    box.y1 = Math.min(box.y1, p.y - n.h / 2 - BOX_PAD - BOX_LABEL);
    box.y2 = Math.max(box.y2, p.y + n.h / 2 + BOX_PAD);
  }
  return { positions, box, runs };
}

// Nodes without edges between them, one under the other (as dagre's single rank, left to
// right, centred on x = 0), in the order of their `sort` key (v1 above v2).
function column(nodes, gap) {
  const positions = new Map();
  const w = Math.max(...nodes.map((n) => n.w));
  let y = 0;
  const key = (n) => `${n.sort ?? ''}\u0000${n.id}`;
  for (const n of [...nodes].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))) {
    positions.set(n.id, { x: 0, y: y + n.h / 2 });
    y += n.h + gap;
  }
  return { positions, box: { x1: -w / 2, x2: w / 2, y1: 0, y2: y - gap } };
}

// One dagre run: node centres and the bounding box of the nodes.
function runDagre(nodes, edges, options) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ ...options });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of nodes) g.setNode(n.id, { width: n.w, height: n.h });
  for (const e of edges) g.setEdge(e.s, e.t);
  dagre.layout(g);
  const positions = new Map();
  const box = { x1: Infinity, y1: Infinity, x2: -Infinity, y2: -Infinity };
  for (const n of nodes) {
    const { x, y } = g.node(n.id);
    positions.set(n.id, { x, y });
    box.x1 = Math.min(box.x1, x - n.w / 2);
    box.x2 = Math.max(box.x2, x + n.w / 2);
    box.y1 = Math.min(box.y1, y - n.h / 2);
    box.y2 = Math.max(box.y2, y + n.h / 2);
  }
  return { positions, box };
}
