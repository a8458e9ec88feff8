#!/usr/bin/env node
// A stand-in for mastd's telemetry component (telemetry/API.md), for developing and testing the
// web view without a mesh: serves dist/ and a fake /api/ with the todo-list story. Node
// built-ins only.
//
//   node tests/fixture-server.mjs [--port 20001]     (or PORT=…; 0 picks a free port)
//
// Test hook, not part of the API: GET /__fixture/fail?n=K makes the next K API requests answer
// 503 (n=0 clears it), to exercise the page's error banner.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));
const GRAPH_TYPES = ['versionedApp', 'app', 'workload', 'service'];
const DURATIONS = { '1m': 60, '5m': 300, '15m': 900, '1h': 3600 };
const SCRAPE_SECONDS = 5;

// The mesh: workloads, the services in front of them, and who calls whom at what rate.
// `split` spreads a call over the service's workloads (percent); errors are fractions.
const MESH = {
  default: {
    workloads: {
      'myapp-v1': { app: 'myapp', version: 'v1' },
      'user-v1': { app: 'user', version: 'v1' },
      'user-v2': { app: 'user', version: 'v2' },
      'todo-v1': { app: 'todo', version: 'v1' },
    },
    services: {
      myapp: { workloads: ['myapp-v1'] },
      user: { workloads: ['user-v1', 'user-v2'], hasTrafficShifting: true, hasVS: { hostnames: ['user'] } },
      todo: { workloads: ['todo-v1'] },
    },
    calls: [
      { from: 'myapp-v1', service: 'user', rps: 40, split: { 'user-v1': 50, 'user-v2': 50 }, mtls: 100, p50: 4.1, p95: 12, p99: 18.5 },
      { from: 'myapp-v1', service: 'todo', rps: 20, split: { 'todo-v1': 100 }, mtls: 100, p50: 3.2, p95: 9, p99: 14 },
    ],
  },
  // A second namespace that shows the other states: failure, degraded, partial mTLS, TCP,
  // an unreachable proxy, an idle version and every badge.
  shop: {
    workloads: {
      'frontend-v1': { app: 'frontend', version: 'v1' },
      'catalog-v1': { app: 'catalog', version: 'v1', unreachable: true },
      'reviews-v1': { app: 'reviews', version: 'v1' },
      'reviews-v2': { app: 'reviews', version: 'v2' },
      'db-v1': { app: 'db', version: 'v1' },
    },
    services: {
      frontend: { workloads: ['frontend-v1'] },
      catalog: { workloads: ['catalog-v1'], hasCB: true, hasRequestTimeout: true, hasVS: { hostnames: ['catalog'] } },
      reviews: { workloads: ['reviews-v1', 'reviews-v2'], hasFaultInjection: true, hasTrafficShifting: true, hasVS: { hostnames: ['reviews'] } },
      db: { workloads: ['db-v1'] },
    },
    calls: [
      { from: 'frontend-v1', service: 'catalog', rps: 15, split: { 'catalog-v1': 100 }, e5xx: 0.15, mtls: 100, p50: 30, p95: 210, p99: 480 },
      { from: 'frontend-v1', service: 'reviews', rps: 10, split: { 'reviews-v1': 100, 'reviews-v2': 0 }, e4xx: 0.12, mtls: 60, p50: 6, p95: 25, p99: 40 },
      { from: 'frontend-v1', service: 'db', tcp: 12500, split: { 'db-v1': 100 }, mtls: 100 },
    ],
  },
};

const jitter = (v, pct) => v * (1 + (Math.random() * 2 - 1) * pct);
const fix = (v, d = 2) => v.toFixed(d);

// One scrape's worth of flows (caller workload → service → destination workload), with the
// rates moving a little on every call, as live traffic does.
function flows(ns) {
  const mesh = MESH[ns];
  const out = [];
  for (const c of mesh.calls) {
    const total = c.tcp ? 0 : jitter(c.rps, 0.05);
    const shares = Object.entries(c.split);
    // Move the split by up to ±3 points, keeping it summing to 100.
    const wobble = shares.length === 2 && shares.every(([, p]) => p > 0) ? Math.random() * 6 - 3 : 0;
    shares.forEach(([to, pct], i) => {
      const share = (pct + (i === 0 ? wobble : -wobble)) / 100;
      out.push({
        ...c, to, rps: total * share, bytes: c.tcp ? jitter(c.tcp, 0.05) * share : 0,
        p50: c.p50 && jitter(c.p50, 0.1), p95: c.p95 && jitter(c.p95, 0.1), p99: c.p99 && jitter(c.p99, 0.1),
      });
    });
  }
  return out;
}

const healthOf = (e5, e4) => (e5 >= 0.1 || e4 >= 0.2 ? 'failure' : e4 >= 0.1 ? 'degraded' : 'healthy');

// Builds one graph (API.md's elements) from the flows, for any graph type.
function buildGraph(ns, graphType) {
  const mesh = MESH[ns];
  const nodes = new Map();
  const edges = new Map();
  const wl = (name) => mesh.workloads[name];

  const serviceNode = (name) => {
    const id = `${ns}-svc-${name}`;
    if (!nodes.has(id)) {
      const { workloads, ...flags } = mesh.services[name];
      nodes.set(id, {
        id, nodeType: 'service', namespace: ns, service: name, cluster: 'Kubernetes',
        hasTrafficShifting: false, hasFaultInjection: false, hasRequestTimeout: false, hasCB: false, ...flags,
      });
    }
    return id;
  };
  const workloadNode = (name) => {
    const { app, version, unreachable = false } = wl(name);
    let n;
    if (graphType === 'service') {
      const svc = Object.keys(mesh.services).find((s) => mesh.services[s].workloads.includes(name));
      return serviceNode(svc);
    } else if (graphType === 'workload') {
      n = { id: `${ns}-wl-${name}`, nodeType: 'workload', workload: name, app, version };
    } else if (graphType === 'app') {
      n = { id: `${ns}-app-${app}`, nodeType: 'app', app };
    } else {
      const box = `${ns}-box-${app}`;
      if (!nodes.has(box)) nodes.set(box, { id: box, nodeType: 'box', isBox: 'app', namespace: ns, app, cluster: 'Kubernetes' });
      n = { id: `${ns}-app-${app}-${version}`, parent: box, nodeType: 'app', workload: name, app, version };
    }
    const prev = nodes.get(n.id);
    nodes.set(n.id, { ...n, namespace: ns, cluster: 'Kubernetes', isUnreachable: unreachable || !!prev?.isUnreachable });
    return n.id;
  };
  const addEdge = (source, target, f) => {
    if (source === target) return;
    const id = `${source}--${target}`;
    const e = edges.get(id) ?? { id, source, target, rps: 0, bytes: 0, w: {}, tcp: !!f.tcp, host: `${f.service}.${ns}.svc.cluster.local` };
    e.rps += f.rps;
    e.bytes += f.bytes;
    for (const k of ['e5xx', 'e4xx', 'mtls', 'p50', 'p95', 'p99']) e.w[k] = (e.w[k] ?? 0) + (f[k] ?? 0) * (f.tcp ? f.bytes : f.rps);
    edges.set(id, e);
  };

  for (const f of flows(ns)) {
    const from = workloadNode(f.from);
    const to = workloadNode(f.to);
    if (f.rps === 0 && f.bytes === 0) continue; // an idle destination: a node, no edge
    if (graphType === 'service') addEdge(from, serviceNode(f.service), f);
    else {
      addEdge(from, serviceNode(f.service), f);
      addEdge(serviceNode(f.service), to, f);
    }
  }

  // Finish the edges: weighted means, the source's share, Kiali's strings.
  // Shares are per protocol family: requests/s and bytes/s do not add up.
  const outTotal = {};
  const key = (e) => `${e.source} ${e.tcp}`;
  for (const e of edges.values()) outTotal[key(e)] = (outTotal[key(e)] ?? 0) + (e.tcp ? e.bytes : e.rps);
  const edgeData = [...edges.values()].map((e) => {
    const vol = e.tcp ? e.bytes : e.rps;
    const m = (k) => (vol > 0 ? e.w[k] / vol : 0);
    const [e5, e4] = [m('e5xx'), m('e4xx')];
    const percent = outTotal[key(e)] > 0 ? (100 * vol) / outTotal[key(e)] : 0;
    const traffic = e.tcp
      ? { protocol: 'tcp', rates: { tcp: fix(e.bytes) } }
      : {
        protocol: 'http',
        rates: { http: fix(e.rps), httpPercentReq: fix(percent, 1), http5xx: fix(e.rps * e5), http4xx: fix(e.rps * e4) },
        responses: Object.fromEntries([['200', 1 - e5 - e4], ['503', e5], ['404', e4]].filter(([, s]) => s > 0)
          .map(([code, s]) => [code, { flags: { [code === '503' ? 'UF' : '-']: fix(100 * s, 1) }, hosts: { [e.host]: fix(100 * s, 1) } }])),
      };
    return {
      id: e.id, source: e.source, target: e.target,
      isMTLS: String(Math.round(m('mtls'))), responseTime: e.tcp ? undefined : String(Math.round(m('p95'))),
      traffic, rps: e.tcp ? 0 : e.rps, errorRate: e.tcp ? 0 : e5, p50: m('p50'), p95: m('p95'), p99: m('p99'),
      percent, tcpBytesPerSecond: e.tcp ? e.bytes : 0, health: healthOf(e5, e4),
    };
  });

  // Node traffic and idleness follow from the edges.
  for (const n of nodes.values()) {
    if (n.nodeType === 'box') continue;
    const ins = edgeData.filter((e) => e.target === n.id);
    const outs = edgeData.filter((e) => e.source === n.id);
    const sum = (es, k) => es.reduce((s, e) => s + e[k], 0);
    const http = (es) => es.filter((e) => e.traffic.protocol !== 'tcp');
    const tcp = (es) => es.filter((e) => e.traffic.protocol === 'tcp');
    n.traffic = [];
    if (http(ins).length + http(outs).length) n.traffic.push({ protocol: 'http', rates: { httpIn: fix(sum(http(ins), 'rps')), httpOut: fix(sum(http(outs), 'rps')) } });
    if (tcp(ins).length + tcp(outs).length) n.traffic.push({ protocol: 'tcp', rates: { tcpIn: fix(sum(tcp(ins), 'tcpBytesPerSecond')), tcpOut: fix(sum(tcp(outs), 'tcpBytesPerSecond')) } });
    n.isIdle = ins.length + outs.length === 0;
    if (n.nodeType !== 'service') n.isUnreachable ??= false;
    if (n.nodeType !== 'service' && ins.length) n.mtlsPercent = ins.reduce((s, e) => s + Number(e.isMTLS), 0) / ins.length;
  }
  return { nodes: [...nodes.values()], edges: edgeData };
}

function graphResponse(namespaces, graphType, duration) {
  const all = namespaces.map((ns) => buildGraph(ns, graphType));
  return {
    timestamp: Math.floor(Date.now() / 1000), duration: DURATIONS[duration], graphType,
    elements: {
      nodes: all.flatMap((g) => g.nodes).map((data) => ({ data })),
      edges: all.flatMap((g) => g.edges).map((data) => ({ data })),
    },
  };
}

// Node or edge detail: the element's data plus a synthetic history ending at its current figures.
function detail(ns, id, duration) {
  for (const type of GRAPH_TYPES) {
    const g = buildGraph(ns, type);
    const edge = g.edges.find((e) => e.id === id);
    const node = g.nodes.find((n) => n.id === id);
    if (!edge && !node) continue;
    let figs = edge ? [edge] : g.edges.filter((e) => e.target === id || childrenOf(g, id).has(e.target));
    if (!edge && figs.length === 0) figs = g.edges.filter((e) => e.source === id);
    const rps = figs.reduce((s, e) => s + e.rps, 0);
    const mean = (k) => (rps > 0 ? figs.reduce((s, e) => s + e[k] * e.rps, 0) / rps : 0);
    return { data: edge ?? node, series: series(DURATIONS[duration], { rps, errorRate: mean('errorRate'), p95: mean('p95') }) };
  }
  return undefined;
}
const childrenOf = (g, boxId) => new Set(g.nodes.filter((n) => n.parent === boxId).map((n) => n.id));

function series(window, now) {
  const end = Math.floor(Date.now() / 1000 / SCRAPE_SECONDS) * SCRAPE_SECONDS;
  const out = { rps: [], errorRate: [], p95: [] };
  for (let t = end - window + SCRAPE_SECONDS; t <= end; t += SCRAPE_SECONDS) {
    const wave = 1 + 0.12 * Math.sin(t / 90) + 0.04 * Math.sin(t / 13);
    const last = t === end; // the newest point is the current figure, as a live query would give
    for (const k of Object.keys(out)) out[k].push([t, last ? now[k] : Math.max(0, jitter(now[k] * wave, 0.03))]);
  }
  return out;
}

// Traces in Jaeger's JSON (the shape of mastd's /api/traces), made once at start: requests
// through the sidecars as Istio's tracing writes them (a server span per inbound request, a
// client span per outbound call, service names <app>.<namespace>), one slow and one failed.
const TRACES = (() => {
  const t0 = Date.now() * 1000 - 60_000_000; // µs, a minute ago
  let n = 0;
  const hex = (v, len) => v.toString(16).padStart(len, '0');
  const out = [];
  const make = (ns, i, { slow = 0, fail = null, target = 'user', version = i % 2 ? 'v2' : 'v1' } = {}) => {
    const traceID = hex(0xabc0000 + i, 32);
    const start = t0 + i * 3_000_000;
    const procs = {};
    const spans = [];
    const proc = (svc, ver) => {
      const key = `${svc}|${ver}`;
      if (!procs[key]) procs[key] = { id: `p${Object.keys(procs).length + 1}`, serviceName: `${svc}.${ns}`, tags: [{ key: 'istio.canonical_revision', type: 'string', value: ver }, { key: 'istio.namespace', type: 'string', value: ns }] };
      return procs[key].id;
    };
    const span = (parent, svc, ver, op, kind, at, dur, tags = []) => {
      const spanID = hex(++n, 16);
      spans.push({
        traceID, spanID, operationName: op, flags: 1, startTime: start + at, duration: dur, processID: proc(svc, ver), logs: [], warnings: null,
        references: parent ? [{ refType: 'CHILD_OF', traceID, spanID: parent }] : [],
        tags: [{ key: 'span.kind', type: 'string', value: kind }, { key: 'component', type: 'string', value: 'proxy' }, ...tags],
      });
      return spanID;
    };
    const code = (c) => [{ key: 'http.status_code', type: 'string', value: String(c) }, ...(c >= 500 ? [{ key: 'error', type: 'bool', value: true }] : [])];
    const front = ns === 'default' ? 'myapp' : 'frontend';
    const total = 9_000 + slow + (i % 5) * 700;
    const root = span(null, front, 'v1', `${front}.${ns}.svc.cluster.local:80/*`, 'server', 0, total, [...code(fail ?? 200), { key: 'http.method', type: 'string', value: 'GET' }]);
    const host = `${target}.${ns}.svc.cluster.local`;
    const call = span(root, front, 'v1', `${host}:80/*`, 'client', 400, 5_000 + slow, [...code(fail ?? 200), { key: 'upstream_cluster', type: 'string', value: `outbound|80||${host}` }]);
    span(call, target, version, `${host}:80/*`, 'server', 700, 4_200 + slow, [...code(fail ?? 200), { key: 'upstream_cluster', type: 'string', value: 'inbound|8080||' }, ...(fail ? [{ key: 'response_flags', type: 'string', value: 'UF' }] : [])]);
    if (ns === 'default') {
      const todo = span(root, front, 'v1', `todo.${ns}.svc.cluster.local:80/*`, 'client', 5_800 + slow, 2_600, code(200));
      span(todo, 'todo', 'v1', `todo.${ns}.svc.cluster.local:80/*`, 'server', 6_000 + slow, 2_100, code(200));
    }
    out.push({ traceID, spans, processes: Object.fromEntries(Object.values(procs).map((p) => [p.id, { serviceName: p.serviceName, tags: p.tags }])), warnings: null });
  };
  for (let i = 0; i < 10; i++) make('default', i, { slow: i === 7 ? 1_800_000 : 0, fail: i === 4 ? 503 : null });
  for (let i = 10; i < 16; i++) make('shop', i, { target: 'catalog', version: 'v1', fail: i % 3 === 0 ? 503 : null });
  return out;
})();

function findTraces(q) {
  const svcOf = (t, s) => t.processes[s.processID].serviceName;
  const limit = Math.min(Number(q.get('limit') ?? 20) || 20, 1500);
  const service = q.get('service');
  const [source, target] = [q.get('source'), q.get('target')];
  return TRACES.filter((t) => {
    if (service && !t.spans.some((s) => svcOf(t, s) === service)) return false;
    if (source && target) {
      const callers = new Set(t.spans.filter((s) => svcOf(t, s) === source).map((s) => s.spanID));
      if (!t.spans.some((s) => svcOf(t, s) === target && s.references.some((r) => callers.has(r.spanID)))) return false;
    }
    return true;
  }).sort((a, b) => b.spans[0].startTime - a.spans[0].startTime).slice(0, limit);
}
const jaeger = (data) => ({ data, total: data.length, limit: 0, offset: 0, errors: null });

const json = (res, status, body) => {
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(JSON.stringify(body));
};
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.png': 'image/png' };

function badParams(q) {
  const gt = q.get('graphType') ?? 'versionedApp';
  const d = q.get('duration') ?? '5m';
  if (!GRAPH_TYPES.includes(gt)) return [`graphType "${gt}": expected one of ${GRAPH_TYPES.join(', ')}`];
  if (!(d in DURATIONS)) return [`duration "${d}": expected one of ${Object.keys(DURATIONS).join(', ')}`];
  return [null, gt, d];
}

async function handle(req, res, ctl) {
  const url = new URL(req.url, 'http://fixture');
  const path = url.pathname;
  const q = url.searchParams;

  if (path === '/__fixture/fail') {
    ctl.failures = Number(q.get('n') ?? 1);
    return json(res, 200, { failures: ctl.failures });
  }
  if (path.startsWith('/api/')) {
    if (ctl.failures > 0) {
      ctl.failures--;
      return json(res, 503, { error: 'fixture: injected failure' });
    }
    let m;
    if (path === '/api/namespaces') return json(res, 200, Object.keys(MESH).map((name) => ({ name })));
    if (path === '/api/health') {
      const targets = Object.values(MESH).flatMap((n) => Object.values(n.workloads));
      return json(res, 200, { targets: targets.length, reachable: targets.filter((w) => !w.unreachable).length, lastScrape: Math.floor(Date.now() / 1000), intervalSeconds: SCRAPE_SECONDS });
    }
    if (path === '/api/namespaces/graph' || (m = path.match(/^\/api\/namespaces\/([^/]+)\/graph$/))) {
      const names = m ? [decodeURIComponent(m[1])] : (q.get('namespaces') ?? '').split(',').filter(Boolean);
      const unknown = names.find((ns) => !MESH[ns]);
      if (!names.length || unknown) return json(res, 404, { error: `namespace "${unknown ?? ''}" not found` });
      const [err, gt, d] = badParams(q);
      if (err) return json(res, 400, { error: err });
      return json(res, 200, graphResponse(names, gt, d));
    }
    if ((m = path.match(/^\/api\/namespaces\/([^/]+)\/nodes\/([^/]+)$/))) {
      const [ns, id] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
      const d = q.get('duration') ?? '5m';
      if (!(d in DURATIONS)) return json(res, 400, { error: `duration "${d}": expected one of ${Object.keys(DURATIONS).join(', ')}` });
      const found = MESH[ns] && detail(ns, id, d);
      return found ? json(res, 200, found) : json(res, 404, { error: `node or edge "${id}" not found in namespace "${ns}"` });
    }
    if (path === '/api/services') return json(res, 200, jaeger([...new Set(TRACES.flatMap((t) => Object.values(t.processes).map((p) => p.serviceName)))].sort()));
    if (path === '/api/traces') {
      if (q.has('source') !== q.has('target')) return json(res, 400, { data: null, errors: [{ code: 400, msg: 'source and target: give both' }] });
      return json(res, 200, jaeger(findTraces(q)));
    }
    if ((m = path.match(/^\/api\/traces\/([0-9a-f]+)$/))) {
      const t = TRACES.find((x) => x.traceID === m[1].padStart(32, '0'));
      return t ? json(res, 200, jaeger([t])) : json(res, 404, { data: null, errors: [{ code: 404, msg: `trace not found: ${m[1]}` }] });
    }
    return json(res, 404, { error: `no such endpoint: ${path}` });
  }

  // Static files from dist/, never outside it.
  const file = normalize(join(DIST, path === '/' ? 'index.html' : decodeURIComponent(path)));
  if (!file.startsWith(DIST)) return json(res, 403, { error: 'forbidden' });
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream', 'Cache-Control': 'no-store' });
    res.end(body);
  } catch {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end(path === '/' ? 'dist/index.html missing: run `npm run build` first\n' : 'not found\n');
  }
}

/** Starts the server on 127.0.0.1:port (0 = a free port); resolves to { url, close }. */
export function start(port = 0) {
  const ctl = { failures: 0 };
  const server = createServer((req, res) => handle(req, res, ctl).catch((e) => json(res, 500, { error: String(e) })));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const url = `http://127.0.0.1:${server.address().port}`;
      resolve({ url, close: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }) });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port');
  const port = Number(i > 0 ? process.argv[i + 1] : process.env.PORT ?? 20001);
  const { url } = await start(port);
  console.log(`fixture server listening on ${url}`);
}
