// The build: src/ → dist/{index.html, app.js, app.css, layout-worker.js}. Deterministic by
// construction: fixed file names (no content hashes), no timestamps or absolute paths in the
// output, versions pinned by package-lock.json, so the same sources give byte-identical files.
import { build } from 'esbuild';
import { copyFile, mkdir, rm, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const dist = `${here}dist`;

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  absWorkingDir: here,
  // app.js, plus app.css for the CSS it imports; layout-worker.js, the Web Worker app.js
  // starts by that fixed name.
  entryPoints: { app: 'src/main.js', 'layout-worker': 'src/layout-worker.js' },
  outdir: 'dist',
  bundle: true,
  format: 'esm',
  target: ['es2020'],
  minify: true,
  legalComments: 'eof',
  charset: 'utf8', // keep the badge emoji readable in app.js instead of \u escapes
  logLevel: 'warning',
});
await copyFile(`${here}src/index.html`, `${dist}/index.html`);

for (const f of ['index.html', 'app.js', 'app.css', 'layout-worker.js']) {
  const { size } = await stat(`${dist}/${f}`);
  console.log(`dist/${f}  ${(size / 1024).toFixed(1)} KiB`);
}
