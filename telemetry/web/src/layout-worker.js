// The layout off the page's main thread: the whole mesh takes a few seconds of dagre, during
// which the page keeps answering (top bar, refresh indicator). One message in, one out.
import { computeLayout } from './layout.js';

self.onmessage = ({ data: { id, input } }) => {
  try {
    self.postMessage({ id, result: computeLayout(input) });
  } catch (e) {
    self.postMessage({ id, error: String(e?.message ?? e) });
  }
};
