// Number formatting shared by the graph labels and the side panel.
// The API sends Kiali's figures as strings and Mast's as numbers; num() accepts both.

export const num = (v) => {
  const n = typeof v === 'string' ? parseFloat(v) : v;
  return Number.isFinite(n) ? n : undefined;
};

const DASH = '—';

export const fmtRps = (v) => (v === undefined ? DASH : `${v > 0 && v < 0.1 ? v.toFixed(2) : v.toFixed(1)} rps`);
export const fmtPercent = (v) => (v === undefined ? DASH : `${Math.round(v)}%`);
export const fmtMs = (v) => (v === undefined ? DASH : `${v < 10 ? v.toFixed(1).replace(/\.0$/, '') : Math.round(v)}ms`);
export const fmtRatio = (v) => (v === undefined ? DASH : `${(v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1)}%`);

export function fmtBytes(v) {
  if (v === undefined) return DASH;
  const units = ['B/s', 'kB/s', 'MB/s', 'GB/s'];
  let i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}
