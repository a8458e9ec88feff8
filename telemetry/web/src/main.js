// Entry point: the top bar, the refresh loop and the error banner.
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { getNamespaces, getGraph } from './api.js';
import { iconElement, withIcon } from './icons.js';
import { BADGES, createGraph, edgeIcons, applyGraph, relabelEdges, resetLayout, setAnimation, startLayoutWorker } from './graph.js';
import { createPanel } from './panel.js';

performance.mark('mast:start');
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// ?refresh=N seconds (tests use a short one); 5 s as Kiali's default.
const refreshSeconds = Math.max(0.5, Number(params.get('refresh')) || 5);

const selects = {
  graphType: $('graph-type-select'),
  duration: $('duration-select'),
  edgeLabel: $('edge-label-select'),
};
// The selection can come from the URL (so a reload or a shared link keeps it); values that are
// not offered by the select are ignored.
for (const [key, sel] of Object.entries(selects)) {
  const v = params.get(key);
  if (v && [...sel.options].some((o) => o.value === v)) sel.value = v;
}
const state = {
  ns: params.get('namespace') ?? '',
  graphType: selects.graphType.value,
  duration: selects.duration.value,
  edgeLabel: selects.edgeLabel.value,
};

startLayoutWorker();
const cy = createGraph($('graph'));
const panel = createPanel({ root: $('side-panel'), cy, getState: () => state });
// For tests and debugging: the live cytoscape instance and refresh counters.
const debug = { cy, state, refreshes: 0, layouts: 0, errors: 0, edgeIcons: () => edgeIcons(cy) };
window.__mast = debug;

// The legend's icons: the same drawings as the graph's (icons.js), as inline SVG.
for (const el of document.querySelectorAll('#legend [data-icon]')) el.replaceWith(iconElement(el.dataset.icon));
$('legend-badges').replaceChildren(...BADGES.map(([, icon, text]) => {
  const li = document.createElement('li');
  li.append(withIcon(icon, text));
  return li;
}));

function writeURL() {
  const p = new URLSearchParams(location.search);
  p.set('namespace', state.ns);
  for (const key of Object.keys(selects)) p.set(key, state[key]);
  history.replaceState(null, '', `?${p}`);
}

function showError(message) {
  $('error-banner').textContent = message ? `Could not refresh: ${message} — showing the last good graph.` : '';
  $('error-banner').hidden = !message;
}

function setIndicator(status, text) {
  $('refresh-indicator').dataset.state = status;
  if (text) $('refresh-text').textContent = text;
}

let nsLoaded = false;
async function loadNamespaces() {
  const names = (await getNamespaces()).map((n) => n.name);
  $('namespace-select').replaceChildren(...names.map((name) => new Option(name, name)));
  if (!names.includes(state.ns)) state.ns = names.includes('default') ? 'default' : names[0] ?? '';
  $('namespace-select').value = state.ns;
  nsLoaded = true;
}

// One refresh at a time, the next one scheduled when this one ends (never overlapping on a slow
// API). `generation` drops answers to a request made before the selection changed.
let timer;
let generation = 0;
async function refresh() {
  clearTimeout(timer);
  const gen = ++generation;
  setIndicator('loading');
  try {
    // The first time, the graph of the namespace the URL names is fetched together with the
    // namespace list (and used if that namespace is in it).
    let early;
    if (!nsLoaded) {
      const asked = state.ns;
      const first = asked ? getGraph(asked, state.graphType, state.duration) : undefined;
      first?.catch(() => {}); // awaited below, or dropped
      await loadNamespaces();
      if (state.ns === asked) early = first;
    }
    if (gen !== generation) return;
    if (!state.ns) throw new Error('no namespace has workloads or traffic yet');
    const graph = await (early ?? getGraph(state.ns, state.graphType, state.duration));
    performance.mark('mast:graph-data');
    if (gen !== generation) return;
    const laidOut = await applyGraph(cy, graph, { ns: state.ns, labelMode: state.edgeLabel });
    if (gen !== generation) return;
    if (laidOut) debug.layouts++;
    $('empty').hidden = cy.nodes().nonempty();
    $('empty').textContent = `No traffic in namespace ${state.ns} over the last ${state.duration}.`;
    await panel.refresh();
    if (gen !== generation) return;
    debug.refreshes++;
    showError(null);
    setIndicator('ok', `updated ${new Date().toLocaleTimeString([], { hour12: false })} · every ${refreshSeconds}s`);
  } catch (e) {
    if (gen !== generation) return;
    debug.errors++;
    showError(e.message);
    setIndicator('error', 'refresh failed');
  } finally {
    if (gen === generation) timer = setTimeout(refresh, refreshSeconds * 1000);
  }
}

// Namespace and graph type change what the ids mean: start from an empty graph. The window only
// changes the figures: same ids, so the layout is kept.
$('namespace-select').addEventListener('change', (e) => { state.ns = e.target.value; restart(); });
selects.graphType.addEventListener('change', (e) => { state.graphType = e.target.value; restart(); });
selects.duration.addEventListener('change', (e) => { state.duration = e.target.value; writeURL(); refresh(); });
selects.edgeLabel.addEventListener('change', (e) => {
  state.edgeLabel = e.target.value;
  writeURL();
  relabelEdges(cy, state.edgeLabel);
});
$('traffic-animation').addEventListener('change', (e) => setAnimation(cy, e.target.checked));

function restart() {
  writeURL();
  panel.close();
  cy.elements().remove();
  resetLayout(cy);
  refresh();
}

cy.on('tap', 'node, edge', (e) => panel.open(e.target));
cy.on('tap', (e) => { if (e.target === cy) panel.close(); });

refresh();
