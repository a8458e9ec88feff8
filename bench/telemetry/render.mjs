#!/usr/bin/env node
// Page render time of Mast's topology view in a real browser (bench/telemetry/run.sh).
//
// Loads the web view served by `telemetry-load collector` in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core from telemetry/web/node_modules) and times, per
// load, navigation start → the graph drawn: the page has applied its first graph answer to its
// cytoscape instance with their positions (window.__mast.cy has the nodes, and
// window.__mast.layouts ≥ 1: the page counts the layout once its positions are applied; the
// layout itself runs in a Web Worker before the elements are added) and two animation frames
// have passed, so cytoscape has painted it. Each load is a fresh browser context (cold cache), like opening the page.
//
// The page shows one namespace at a time (its selector has no multi-namespace choice yet). For
// "all namespaces" this script offers one more entry in /api/namespaces and routes that
// entry's graph request to the multi-namespace API (/api/namespaces/graph?namespaces=…),
// inside the browser (Playwright request routing): same page, same code path, the real
// 10-namespace answer.
//
// Environment: BASE_URL (required), SCENARIOS (comma list of namespaces and/or `all-namespaces`;
// default: the first namespace, then all), NAMESPACES (what "all" means), LOADS (default 5),
// GRAPH_TYPE (versionedApp), DURATION (5m), CHROMIUM (/usr/bin/chromium), PLAYWRIGHT (path of
// playwright-core's index.mjs), TIMEOUT_MS per load (60000; a load that is not drawn by then is
// reported as timed out and ends the run).
// Prints one JSON line per scenario.

import { access, constants } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const env = process.env;
const BASE = (env.BASE_URL || '').replace(/\/$/, '');
const NAMESPACES = (env.NAMESPACES || 'ns0,ns1,ns2,ns3,ns4,ns5,ns6,ns7,ns8,ns9').split(',');
const LOADS = Number(env.LOADS || 5);
const GRAPH_TYPE = env.GRAPH_TYPE || 'versionedApp';
const DURATION = env.DURATION || '5m';
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT_MS = Number(env.TIMEOUT_MS || 60000);
const PLAYWRIGHT = env.PLAYWRIGHT || resolve(here, '../../telemetry/web/node_modules/playwright-core/index.mjs');
const ALL = 'all-namespaces';

if (!BASE) {
  console.error('BASE_URL is required, e.g. http://127.0.0.1:20101');
  process.exit(2);
}
await access(CHROMIUM, constants.X_OK);
const { chromium } = await import(pathToFileURL(PLAYWRIGHT).href);

const query = `graphType=${GRAPH_TYPE}&duration=${DURATION}`;
const apiUrl = (ns) => ns === ALL
  ? `${BASE}/api/namespaces/graph?namespaces=${NAMESPACES.join(',')}&${query}`
  : `${BASE}/api/namespaces/${ns}/graph?${query}`;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const browser = await chromium.launch({
  executablePath: CHROMIUM, headless: true, timeout: 30000,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

// One page load: { drawnMs, dataMs, nodes, edges } or { timedOut: true, dataMs }. dataMs: when the
// graph's JSON had arrived (from the browser's network events, which arrive even while the
// page's main thread is busy laying out).
async function load(ns) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  let started;
  let dataMs;
  page.on('requestfinished', (r) => {
    if (r.url().includes('/graph?') && dataMs === undefined) dataMs = Date.now() - started;
  });
  if (ns === ALL) {
    await page.route(`${BASE}/api/namespaces`, async (route) => {
      const res = await route.fetch();
      const list = await res.json();
      await route.fulfill({ response: res, json: [...list, { name: ALL }] });
    });
    await page.route((url) => url.pathname === `/api/namespaces/${ALL}/graph`, (route) => {
      const u = new URL(route.request().url());
      route.continue({ url: `${BASE}/api/namespaces/graph?namespaces=${NAMESPACES.join(',')}&${u.searchParams}` });
    });
  }
  started = Date.now();
  // refresh=3600: no second refresh during the measurement.
  await page.goto(`${BASE}/?namespace=${ns}&${query}&refresh=3600`, { waitUntil: 'commit', timeout: TIMEOUT_MS });
  // The deadline is kept here, not by Playwright: its in-page polling (and its timeout) cannot
  // run while the page's main thread is busy laying out.
  const drawn = page.waitForFunction(() => {
    const m = window.__mast;
    return m && m.layouts >= 1 && m.cy.nodes().length > 0;
  }, null, { polling: 'raf', timeout: 0 });
  drawn.catch(() => {});
  let timer;
  const deadline = new Promise((resolve) => { timer = setTimeout(resolve, Math.max(1000, TIMEOUT_MS - (Date.now() - started)), 'timeout'); });
  const first = await Promise.race([drawn, deadline]);
  clearTimeout(timer);
  if (first === 'timeout') {
    // The page is still busy: leave it (closing waits for its script); the browser goes at exit.
    return { timedOut: true, dataMs };
  }
  const r = await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => {
    const graph = performance.getEntriesByType('resource').find((e) => e.name.includes('/graph?'));
    done({
      drawnMs: performance.now(), apiEndMs: graph?.responseEnd,
      nodes: window.__mast.cy.nodes().length, edges: window.__mast.cy.edges().length,
    });
  }))));
  if (errors.length) console.error(`page errors (${ns}): ${errors.join('; ')}`);
  await context.close();
  return { ...r, dataMs: r.apiEndMs };
}

const scenarios = (env.SCENARIOS || `${NAMESPACES[0]},${ALL}`).split(',');
let abandoned = false;
for (const ns of scenarios) {
  // The graph's size now (the page's own answer is what it draws: `nodes_drawn`).
  const answer = await (await fetch(apiUrl(ns))).json();
  const runs = [];
  for (let i = 0; i < LOADS; i++) {
    const r = await load(ns);
    runs.push(r);
    if (r.timedOut) { abandoned = true; break; }
  }
  const done = runs.filter((r) => !r.timedOut);
  const drawn = done.map((r) => r.drawnMs);
  console.log(JSON.stringify({
    scenario: ns === ALL ? `all ${NAMESPACES.length} namespaces` : ns,
    graphType: GRAPH_TYPE, duration: DURATION,
    nodes: answer.elements.nodes.length, edges: answer.elements.edges.length,
    nodes_drawn: done.map((r) => r.nodes),
    loads: runs.length,
    timed_out: runs.length - done.length,
    timeout_ms: TIMEOUT_MS,
    drawn_ms: drawn.map(Math.round),
    median_drawn_ms: drawn.length ? Math.round(median(drawn)) : null,
    median_data_ms: Math.round(median(runs.map((r) => r.dataMs ?? NaN))),
  }));
  if (abandoned) break;
}
if (abandoned) process.exit(0); // a page is still laying out; exit kills the browser
await browser.close();
