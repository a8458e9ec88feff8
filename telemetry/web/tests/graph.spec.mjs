#!/usr/bin/env node
// Browser test of the topology view: drives Debian's headless Chromium with playwright-core and
// checks what a user sees. A plain script (no test runner): exits 0 when every check passes,
// non-zero with a FAIL line naming the failed check otherwise.
//
// Environment (all optional):
//   BASE_URL         the web view to test (default: start tests/fixture-server.mjs on a free port)
//   NAMESPACE        namespace to show (default: default)
//   EXPECT_SPLIT     expected share of each of user v1/v2, in % (default 50)
//   SPLIT_TOLERANCE  allowed deviation in points (default 10)
//   REFRESH          the page's refresh period in s, passed as ?refresh= (default 2)
//   SCREENSHOT       where to save the screenshot (default tests/out/graph.png next to this file)
//   CHROMIUM         browser binary (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import { access, constants, mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const env = process.env;
const NS = env.NAMESPACE || 'default';
const EXPECT_SPLIT = Number(env.EXPECT_SPLIT ?? 50);
const TOLERANCE = Number(env.SPLIT_TOLERANCE ?? 10);
const REFRESH = Number(env.REFRESH ?? 2);
const SCREENSHOT = env.SCREENSHOT ? resolve(env.SCREENSHOT) : resolve(here, 'out/graph.png');
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
const EXPECT_TRACES = env.EXPECT_TRACES === '1';
const OVERALL_TIMEOUT_MS = 45_000;

const started = Date.now();
let passed = 0;
let fixture;
let browser;
let page;

class CheckFailed extends Error {}
function check(ok, what, detail = '') {
  if (!ok) throw new CheckFailed(`${what}${detail ? `: ${detail}` : ''}`);
  passed++;
  console.log(`ok ${passed} - ${what}${detail ? ` (${detail})` : ''}`);
}

// Everything the checks need, read from the live cytoscape instance in one round trip.
const snapshot = () => page.evaluate(() => {
  const { cy, refreshes, layouts } = window.__mast;
  const [w, h] = [cy.width(), cy.height()];
  const inView = (bb) => bb.x1 >= 0 && bb.y1 >= 0 && bb.x2 <= w && bb.y2 <= h;
  return {
    refreshes, layouts, sameCy: window.__testCy ? window.__testCy === cy : null,
    nodes: cy.nodes().map((n) => ({
      id: n.id(), data: n.data(), pos: { ...n.position() }, bb: n.boundingBox(),
      label: n.style('label'), shown: n.visible() && inView(n.renderedBoundingBox({ includeLabels: false })),
    })),
    edges: cy.edges().map((e) => ({
      id: e.id(), source: e.source().id(), target: e.target().id(), data: e.data(),
      label: e.style('label'), shown: e.visible(), color: e.style('line-color'),
    })),
  };
});

// Emoji code points (the icons used to be emoji, empty boxes without a colour-emoji font).
const EMOJI = /\p{Extended_Pictographic}/u;

// A data: URI image drawn on a canvas in the page: how many pixels it paints (0 if it is not
// a valid image), and whether it is an SVG with a <title>.
async function paint(uri) {
  return page.evaluate(async (src) => {
    const img = new Image();
    img.src = src;
    try { await img.decode(); } catch { return { pixels: 0 }; }
    const c = document.createElement('canvas');
    c.width = Math.max(1, img.naturalWidth);
    c.height = Math.max(1, img.naturalHeight);
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let pixels = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 128) pixels++;
    const text = decodeURIComponent(src.slice(src.indexOf(',') + 1));
    return { pixels, svg: src.startsWith('data:image/svg+xml') && text.includes('<svg'), title: /<title>([^<]*)<\/title>/.exec(text)?.[1] ?? '' };
  }, uri);
}

// A service's badge strip: the node's SVG background, and that it paints.
async function badgeDrawn(id) {
  const uri = await page.evaluate((nid) => {
    const n = window.__mast.cy.getElementById(nid);
    const bg = n.style('background-image');
    return (Array.isArray(bg) ? bg[0] : bg) === n.data('badgeImage') ? n.data('badgeImage') : '';
  }, id);
  return uri ? paint(uri) : { svg: false, title: '', pixels: 0 };
}

// An edge's lock, drawn over its label: dark pixels where the page says it drew it.
async function lockDrawn(id) {
  await waitFor((eid) => window.__mast.edgeIcons().some((i) => i.id === eid), id, 'the lock', 3000).catch(() => {});
  return page.evaluate((eid) => {
    const icon = window.__mast.edgeIcons().find((i) => i.id === eid);
    if (!icon) return { drawn: false, pixels: 0 };
    const c = document.querySelector('#graph canvas.edge-icons');
    const k = c.width / c.clientWidth;
    const px = c.getContext('2d').getImageData(Math.floor(icon.x * k), Math.floor(icon.y * k), Math.ceil(icon.size * k), Math.ceil(icon.size * k)).data;
    let pixels = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 128) pixels++;
    return { drawn: true, pixels };
  }, id);
}

const waitFor = (fn, arg, what, timeout) =>
  page.waitForFunction(fn, arg, { timeout, polling: 100 }).catch(() => { throw new CheckFailed(`timed out waiting for ${what}`); });

// The trace list in the side panel (already open on a node) and the waterfall of its slowest
// trace and of a failed one.
async function checkTraces() {
  const rowsSel = '#panel-traces [data-testid="trace-row"]';
  await waitFor((sel) => document.querySelectorAll(sel).length > 0, rowsSel, 'the side panel\'s trace list', 8000);
  const rows = await page.$$eval(rowsSel, (rs) => rs.map((r) => ({
    id: r.dataset.traceId, error: r.classList.contains('error'),
    duration: r.querySelector('[data-testid="trace-duration"]').textContent,
    status: r.querySelector('[data-testid="trace-status"]').textContent,
    spans: Number(r.querySelector('[data-testid="trace-spans"]').textContent),
  })));
  const us = (d) => { const m = /^([\d.]+)(µs|ms|s)$/.exec(d); return m ? Number(m[1]) * { µs: 1, ms: 1e3, s: 1e6 }[m[2]] : NaN; };
  check(rows.every((r) => us(r.duration) > 0 && ['ok', 'error'].includes(r.status) && r.spans > 0),
    'the side panel lists recent traces with duration, status and span count', `${rows.length} traces, first ${JSON.stringify(rows[0])}`);
  const slowest = rows.reduce((a, b) => (us(b.duration) > us(a.duration) ? b : a));
  await page.click(`${rowsSel}[data-trace-id="${slowest.id}"]`);
  const spanSel = '#trace-view [data-testid="span-row"]';
  await waitFor((id) => !document.getElementById('trace-view').hidden && document.querySelector('#trace-view [data-testid="trace-title"]')
    && document.getElementById('trace-view').textContent.includes(id), slowest.id, 'the waterfall of the clicked trace', 5000);
  const bars = await page.$$eval(spanSel, (rs) => rs.map((r) => {
    const b = r.querySelector('.span-bar').getBoundingClientRect();
    const t = r.querySelector('.span-track').getBoundingClientRect();
    return { w: b.width, left: b.left - t.left, track: t.width, name: r.querySelector('.span-name').textContent };
  }));
  check(bars.length === slowest.spans && bars.every((b) => b.w > 0 && b.left >= -0.5 && b.left + b.w <= b.track + 1),
    `clicking the slowest trace (${slowest.duration}) opens its waterfall, one bar per span on the trace's time line`,
    bars.map((b) => `${b.name.trim()} ${Math.round(b.w)}px`).join('; '));
  check(bars.some((b) => b.w > bars[0].track * 0.5), 'the slow span spans most of the waterfall', `widest ${Math.round(Math.max(...bars.map((b) => b.w)))} of ${Math.round(bars[0].track)} px`);
  await page.click(`${spanSel} summary`);
  const tags = await page.textContent(`${spanSel}[open] [data-testid="span-tags"]`);
  check(/http\.status_code/.test(tags) && /span\.kind/.test(tags), 'a span opens to show its tags', tags.replace(/\s+/g, ' ').slice(0, 120));

  const failed = rows.find((r) => r.error && r.status === 'error');
  check(failed, 'a failed trace is marked in the list', failed ? failed.id : rows.map((r) => r.status).join(','));
  await page.click(`${rowsSel}[data-trace-id="${failed.id}"]`);
  await waitFor((id) => document.getElementById('trace-view').textContent.includes(id), failed.id, 'the failed trace\'s waterfall', 5000);
  const red = await page.$$eval(`${spanSel}.error .span-bar`, (bs) => bs.map((b) => getComputedStyle(b).backgroundColor));
  check(red.length > 0 && red.every((c) => c === 'rgb(201, 25, 11)'), 'its failed spans are highlighted in red', `${red.length} red bars`);
  const shot = SCREENSHOT.replace(/(\.png)?$/, '-trace.png');
  await mkdir(dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, timeout: 10_000 });
  console.log(`# screenshot: ${shot}`);
  await page.click('#trace-view [data-testid="trace-close"]');
  check(await page.isHidden('#trace-view'), 'the waterfall closes');
}

async function main() {
  let base = env.BASE_URL?.replace(/\/$/, '');
  if (!base) {
    const { start } = await import('./fixture-server.mjs');
    fixture = await start(0);
    base = fixture.url;
    console.log(`# fixture server on ${base}`);
  }

  await access(CHROMIUM, constants.X_OK).catch(() => {
    throw new CheckFailed(`no browser at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM=/path/to/chromium)`);
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: [
    // As root in CI; and no background calls out of a closed network (they are refused, noisily).
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ], timeout: 15_000 });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(8000);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));

  const url = `${base}/?refresh=${REFRESH}&namespace=${encodeURIComponent(NS)}`;
  const res = await page.goto(url, { timeout: 10_000 });
  check(res?.ok(), `page loads: ${url}`, `HTTP ${res?.status()}`);
  await waitFor(() => window.__mast?.refreshes >= 1 && window.__mast.cy.nodes().length > 0, null, 'the first graph', 10_000);
  await page.evaluate(() => { window.__testCy = window.__mast.cy; });
  const first = await snapshot();
  const nodeWhere = (s, pred) => s.nodes.find((n) => pred(n.data));

  // The nodes a user expects, drawn inside the viewport.
  const myapp = nodeWhere(first, (d) => d.app === 'myapp' && d.nodeType !== 'box' && d.nodeType !== 'service');
  check(myapp?.shown, 'myapp is shown', myapp ? `${myapp.id}` : 'no myapp node');
  const svc = nodeWhere(first, (d) => d.nodeType === 'service' && d.service === 'user');
  check(svc?.shown, 'the user service is shown', svc ? `${svc.id}, label ${JSON.stringify(svc.label)}` : 'no service node "user"');
  if (svc.data.hasTrafficShifting) {
    const badge = await badgeDrawn(svc.id);
    check(badge.svg && badge.title.includes('traffic shifting') && badge.pixels > 0,
      'the user service shows its traffic-shifting badge, an SVG drawn under it', JSON.stringify({ ...badge, uri: undefined }));
  }
  const box = nodeWhere(first, (d) => d.nodeType === 'box' && d.app === 'user');
  check(box?.shown, 'the user app box is shown', box?.id ?? 'no box for app "user"');
  const inBox = (n) => n.pos.x > box.bb.x1 && n.pos.x < box.bb.x2 && n.pos.y > box.bb.y1 && n.pos.y < box.bb.y2;
  const versions = {};
  for (const v of ['v1', 'v2']) {
    const n = nodeWhere(first, (d) => d.nodeType === 'app' && d.app === 'user' && d.version === v);
    check(n?.shown && n.data.parent === box.id && inBox(n), `user ${v} is drawn inside the user box`, n ? `label ${JSON.stringify(n.label)}` : 'missing');
    versions[v] = n;
  }

  // Edges: traffic flowing, the split, the lock.
  const edge = (s, from, to) => s.edges.find((e) => e.source === from && e.target === to);
  const inbound = edge(first, myapp.id, svc.id);
  check(inbound?.data.rps > 0, 'myapp → user carries traffic', inbound ? `${inbound.data.rps.toFixed(1)} rps, label ${JSON.stringify(inbound.label)}` : 'no edge');
  check(/\d+\.\d rps/.test(inbound.label), 'edge labels show requests/s', JSON.stringify(inbound.label));
  for (const v of ['v1', 'v2']) {
    const e = edge(first, svc.id, versions[v].id);
    check(e?.data.rps > 0, `user → user ${v} carries traffic`, e ? `${e.data.rps.toFixed(1)} rps` : 'no edge');
    const pct = e.data.percent ?? Number(e.data.traffic?.rates?.httpPercentReq);
    check(Math.abs(pct - EXPECT_SPLIT) <= TOLERANCE, `user ${v} gets ${EXPECT_SPLIT}±${TOLERANCE}% of user's traffic`, `${pct.toFixed(1)}%`);
    const lock = await lockDrawn(e.id);
    check(e.data.mtlsIcon === 'lock' && lock.drawn && lock.pixels > 0 && !EMOJI.test(e.label),
      `user → user ${v} shows the mTLS lock, an SVG drawn on its label`, `isMTLS ${e.data.isMTLS}, label ${JSON.stringify(e.label)}, ${lock.pixels} lock pixels`);
  }
  const noEmoji = first.nodes.concat(first.edges).filter((x) => EMOJI.test(x.label ?? ''));
  check(noEmoji.length === 0, 'no graph label has an emoji', noEmoji.map((x) => `${x.id}: ${x.label}`).join('; '));

  // The legend draws its icons as inline SVG with titles, and its text has no emoji left.
  const legend = await page.evaluate(() => {
    const el = document.getElementById('legend');
    return {
      text: el.textContent,
      icons: [...el.querySelectorAll('svg[role="img"]')].map((s) => {
        const r = s.getBoundingClientRect();
        return { icon: s.dataset.icon, label: s.getAttribute('aria-label'), title: s.querySelector('title')?.textContent, w: r.width, h: r.height };
      }),
    };
  });
  const want = ['lock', 'unlock', 'service', 'app', 'workload', 'trafficShifting', 'faultInjection', 'requestTimeout', 'circuitBreaker'];
  const missing = want.filter((n) => !legend.icons.some((i) => i.icon === n && i.label && i.title === i.label && i.w > 0 && i.h > 0));
  check(missing.length === 0, 'the legend shows every icon as a titled, visible SVG', missing.length ? `missing or empty: ${missing.join(', ')}` : `${legend.icons.length} icons`);
  check(!EMOJI.test(legend.text), 'the legend text has no emoji', JSON.stringify(legend.text.replace(/\s+/g, ' ')));

  // One refresh later: the data moved, the layout did not.
  await waitFor((n) => window.__mast.refreshes > n, first.refreshes, 'a refresh', REFRESH * 1000 + 8000);
  const second = await snapshot();
  check(second.sameCy, 'the refresh kept the same cytoscape instance');
  check(second.layouts === first.layouts, 'the refresh did not re-run the layout', `layouts ${first.layouts} → ${second.layouts}`);
  const moved = first.nodes.filter((a) => {
    const b = second.nodes.find((n) => n.id === a.id);
    return !b || Math.hypot(a.pos.x - b.pos.x, a.pos.y - b.pos.y) > 0.5;
  });
  check(moved.length === 0 && second.nodes.length === first.nodes.length, 'every node kept its position', moved.map((n) => n.id).join(', ') || `${first.nodes.length} nodes`);
  const changed = second.edges.filter((b) => first.edges.find((a) => a.id === b.id)?.data.rps !== b.data.rps);
  check(changed.length > 0, 'the refresh updated the figures in place', `${changed.length}/${second.edges.length} edges got new rates`);

  // Click the user service the way a user does, at its place on the screen.
  const at = await page.evaluate((id) => {
    const { cy } = window.__mast;
    const p = cy.getElementById(id).renderedPosition();
    const r = cy.container().getBoundingClientRect();
    return { x: r.left + p.x, y: r.top + p.y + 4 }; // a little low: a triangle is widest at its base
  }, svc.id);
  await page.mouse.click(at.x, at.y);
  await waitFor(() => !document.getElementById('side-panel').hidden, null, 'the side panel to open', 5000);
  const title = await page.textContent('#panel-title');
  check(title.includes('user'), 'clicking the user service opens the side panel with its name', JSON.stringify(title));
  const figures = await page.textContent('#panel-figures');
  check(/\d+\.\d rps/.test(figures), 'the side panel shows the figures', figures.replace(/\s+/g, ' ').slice(0, 120));
  const panelIcons = await page.evaluate(() => [...document.querySelectorAll('#panel-figures svg[role="img"]')].map((s) => s.dataset.icon));
  check(panelIcons.includes('lock') && (!svc.data.hasTrafficShifting || panelIcons.includes('trafficShifting')) && !EMOJI.test(figures),
    'the side panel shows the lock and the service\'s badges as SVG', panelIcons.join(', '));
  // A chart with data has pixels of its series colour; axes alone do not.
  const colours = { rps: [0, 102, 204], errorRate: [201, 25, 11], p95: [236, 122, 8] };
  const drawn = await waitFor((cols) => Object.entries(cols).every(([key, [r, g, b]]) => {
    const c = document.querySelector(`#side-panel [data-testid="chart-${key}"] canvas`);
    if (!c || !c.width) return false;
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < px.length; i += 4) {
      if (Math.abs(px[i] - r) < 30 && Math.abs(px[i + 1] - g) < 30 && Math.abs(px[i + 2] - b) < 30 && px[i + 3] > 200) return true;
    }
    return false;
  }), colours, 'the three charts to draw their series', 5000).then(() => true);
  check(drawn, 'the side panel draws the rps, error-rate and p95 charts');
  const before = figures;
  await waitFor((f) => window.__mast.refreshes > 0 && document.getElementById('panel-figures').textContent !== f, before, 'the side panel to refresh', REFRESH * 1000 + 8000);
  check(!(await page.isHidden('#side-panel')), 'the side panel refreshes with the graph and stays open');

  // Traces: the user service's recent traces in the panel; a click opens the waterfall.
  // Against the fixture, or a mastd that was sent spans (EXPECT_TRACES=1).
  if (fixture || EXPECT_TRACES) await checkTraces();

  await mkdir(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, timeout: 10_000 });
  console.log(`# screenshot: ${SCREENSHOT}`);

  // Errors: only against our fixture, which can be told to fail.
  if (fixture) {
    const count = second.nodes.length;
    await fetch(`${fixture.url}/__fixture/fail?n=1000`);
    await waitFor(() => !document.getElementById('error-banner').hidden, null, 'the error banner', REFRESH * 1000 + 8000);
    const banner = await page.textContent('#error-banner');
    const during = await snapshot();
    check(banner.includes('503') && during.nodes.length === count, 'an API error shows a banner and keeps the last good graph', JSON.stringify(banner));
    await fetch(`${fixture.url}/__fixture/fail?n=0`);
    await waitFor(() => document.getElementById('error-banner').hidden, null, 'the banner to clear', REFRESH * 1000 + 8000);
    check(true, 'the banner clears when the API answers again');
  }
  const bodyText = await page.evaluate(() => document.body.innerText);
  check(!EMOJI.test(bodyText), 'no emoji anywhere in the page', bodyText.match(EMOJI)?.[0] ?? '');
  check(pageErrors.length === 0, 'no uncaught error in the page', pageErrors.join('; '));
}

const watchdog = setTimeout(() => {
  console.log(`FAIL: the test did not finish within ${OVERALL_TIMEOUT_MS / 1000} s`);
  process.exit(2);
}, OVERALL_TIMEOUT_MS);

let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  console.log(`FAIL: ${e instanceof CheckFailed ? e.message : e.stack ?? e}`);
  if (page) {
    // A picture of the failure helps more than the message alone.
    const shot = SCREENSHOT.replace(/(\.png)?$/, '-failed.png');
    await mkdir(dirname(shot), { recursive: true }).catch(() => {});
    if (await page.screenshot({ path: shot, timeout: 5000 }).then(() => true, () => false)) console.log(`# failure screenshot: ${shot}`);
  }
} finally {
  await browser?.close().catch(() => {});
  await fixture?.close();
  clearTimeout(watchdog);
}
console.log(`# took ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${code ? 1 : 0} failed`);
process.exit(code);
