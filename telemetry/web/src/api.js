// The telemetry API client (telemetry/API.md). Every call has a timeout so that a stuck
// request cannot stall the refresh loop.

const TIMEOUT_MS = 8000;

async function getJSON(path) {
  let res;
  try {
    res = await fetch(path, { signal: AbortSignal.timeout(TIMEOUT_MS), headers: { Accept: 'application/json' } });
  } catch (e) {
    throw new Error(`${path}: ${e.name === 'TimeoutError' ? 'timed out' : e.message}`);
  }
  let body;
  try { body = await res.json(); } catch { body = undefined; }
  if (!res.ok) throw new Error(`${path}: ${res.status} ${body?.error ?? res.statusText}`);
  if (body === undefined) throw new Error(`${path}: response is not JSON`);
  return body;
}

const enc = encodeURIComponent;

export const getNamespaces = () => getJSON('/api/namespaces');

export const getGraph = (ns, graphType, duration) =>
  getJSON(`/api/namespaces/${enc(ns)}/graph?graphType=${enc(graphType)}&duration=${enc(duration)}`);

export const getDetail = (ns, id, duration) =>
  getJSON(`/api/namespaces/${enc(ns)}/nodes/${enc(id)}?duration=${enc(duration)}`);
