// The page's icons (mTLS lock, service badges, node shapes) as inline SVG drawn from a few
// paths of our own, in one stroke style: emoji needed a colour-emoji font and were empty boxes
// on a machine without one. The same paths serve the DOM (legend, side panel: <svg> elements
// with a <title> and an aria-label) and the graph (data: URIs that cytoscape draws as node
// backgrounds, and images drawn over the edge labels by graph.js).

const NS = 'http://www.w3.org/2000/svg';

// 24×24 drawings, stroked (2 px, round ends and joins) unless `fill` says otherwise.
const DRAWINGS = {
  lock: { title: 'mTLS', d: 'M5 11h14v10H5z M8 11V7.5a4 4 0 0 1 8 0V11 M12 15v2.5' },
  unlock: { title: 'partial mTLS', d: 'M5 11h14v10H5z M8 11V7.5a4 4 0 0 1 7.7-1.6 M12 15v2.5' },
  trafficShifting: { title: 'traffic shifting', d: 'M3 12h6l6-6h5 M9 12l6 6h5 M17.5 3.5 20 6l-2.5 2.5 M17.5 15.5 20 18l-2.5 2.5' },
  faultInjection: {
    title: 'fault injection',
    d: 'M12 2.5l1.7 5.3 5-2.5-1.6 4.6 4.4 2.1-5.3 1.7 2.5 5-4.6-1.6L12 21.5l-1.7-5.3-5 2.5 1.6-4.6L2.5 12l5.3-1.7-2.5-5 4.6 1.6z',
  },
  requestTimeout: { title: 'request timeout', d: 'M12 21a7.5 7.5 0 1 0 0-15 7.5 7.5 0 0 0 0 15z M12 13.5V9.5 M12 13.5h3 M10 2.5h4 M12 2.5V6 M18 6.5l1.5-1.5' },
  circuitBreaker: { title: 'circuit breaker', d: 'M13.5 2.5 5.5 13.5h6l-1 8 8-11h-6z' },
  // The node shapes, as cytoscape draws them (graph.js' STYLE): white, with a dark border.
  service: { title: 'service', d: 'M12 4 21.5 20h-19z', fill: '#fff' },
  app: { title: 'app', d: 'M6.5 6h11a3 3 0 0 1 3 3v6a3 3 0 0 1-3 3h-11a3 3 0 0 1-3-3V9a3 3 0 0 1 3-3z', fill: '#fff' },
  workload: { title: 'workload', d: 'M12 19a7 7 0 1 0 0-14 7 7 0 0 0 0 14z', fill: '#fff' },
};

export const ICON_NAMES = Object.keys(DRAWINGS);

function drawing(name) {
  const icon = DRAWINGS[name];
  if (!icon) throw new Error(`no icon "${name}"`);
  return icon;
}

const attrs = (color, fill) =>
  `fill="${fill ?? 'none'}" stroke="${color}" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"`;

const escapeXml = (s) => String(s).replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]);

/** The icon as an <svg> element for the page: `role="img"`, an aria-label and a <title>. */
export function iconElement(name, { title, size = 14 } = {}) {
  const icon = drawing(name);
  const label = title ?? icon.title;
  const svg = document.createElementNS(NS, 'svg');
  for (const [k, v] of Object.entries({
    viewBox: '0 0 24 24', width: size, height: size, role: 'img', 'aria-label': label,
    class: 'icon', 'data-icon': name,
  })) svg.setAttribute(k, String(v));
  const t = document.createElementNS(NS, 'title');
  t.textContent = label;
  const path = document.createElementNS(NS, 'path');
  path.setAttribute('d', icon.d);
  path.setAttribute('fill', icon.fill ?? 'none');
  path.setAttribute('stroke', 'currentColor');
  for (const [k, v] of [['stroke-width', 2], ['stroke-linecap', 'round'], ['stroke-linejoin', 'round']]) path.setAttribute(k, String(v));
  svg.append(t, path);
  return svg;
}

/** An icon followed by its text, for lists and table cells. */
export function withIcon(name, text, opts) {
  const span = document.createElement('span');
  span.className = 'with-icon';
  span.append(iconElement(name, opts), document.createTextNode(` ${text}`));
  return span;
}

// Cytoscape draws a background image at the SVG's own width and height.
const STRIP = { size: 14, gap: 3 };
const stripCache = new Map();

/**
 * Several icons side by side, as a `data:image/svg+xml` URI for a cytoscape node background:
 * `{ uri, width, height, title }`, the same object for the same list.
 */
export function iconStrip(names, color = '#393f44') {
  const key = `${names.join(',')}|${color}`;
  let strip = stripCache.get(key);
  if (!strip) {
    const { size, gap } = STRIP;
    const width = names.length * size + (names.length - 1) * gap;
    const title = names.map((n) => drawing(n).title).join(', ');
    const step = (24 * (size + gap)) / size;
    const body = names.map((n, i) => {
      const icon = drawing(n);
      return `<path transform="translate(${(i * step).toFixed(2)} 0)" d="${icon.d}" ${attrs(color, icon.fill)}/>`;
    }).join('');
    const svg = `<svg xmlns="${NS}" width="${width}" height="${size}" viewBox="0 0 ${(width * 24) / size} 24">`
      + `<title>${escapeXml(title)}</title>${body}</svg>`;
    strip = { uri: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`, width, height: size, title };
    stripCache.set(key, strip);
  }
  return strip;
}

const imageCache = new Map();

/**
 * The icon as an <img> to draw on a canvas (drawn at `px` pixels, so it stays sharp when
 * zoomed); `img.complete` says when it can be.
 */
export function iconImage(name, color = '#151515', px = 64) {
  const key = `${name}|${color}|${px}`;
  let img = imageCache.get(key);
  if (!img) {
    const icon = drawing(name);
    const svg = `<svg xmlns="${NS}" width="${px}" height="${px}" viewBox="0 0 24 24"><title>${escapeXml(icon.title)}</title>`
      + `<path d="${icon.d}" ${attrs(color, icon.fill)}/></svg>`;
    img = new Image(px, px);
    img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svg)}`;
    imageCache.set(key, img);
  }
  return img;
}
