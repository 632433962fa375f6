// TensorFlow.js backend selection: WebGPU when the browser has a usable adapter, else WebGL
// (the default on most machines), else wasm (XNNPACK; multi-threaded when the page is
// cross-origin isolated), else the plain-JS cpu backend. No hand-written kernels: every op is
// a stock TensorFlow.js kernel.
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-webgpu';
import { setWasmPaths, setThreadsCount, getThreadsCount } from '@tensorflow/tfjs-backend-wasm';

export const BACKEND_ORDER = ['webgpu', 'webgl', 'wasm', 'cpu'];

let wasmConfigured = false;
let gpuAdapter = null;  // {vendor, architecture, device, description} of the WebGPU adapter found
let gpuLimits = null;   // {maxBufferSize, maxStorageBufferBindingSize} of that adapter

/** Where the tfjs wasm binaries are served (the build copies them to static/wasm/), and optionally
 *  how many XNNPACK threads to ask for (threads need a cross-origin isolated page; tfjs's default
 *  is half the logical cores; backendInfo().threads reports what XNNPACK actually runs). */
export function configureWasm(prefix, threads = null) {
  setWasmPaths(prefix);
  if (threads) setThreadsCount(threads);
  wasmConfigured = true;
}

function defaultWasmPrefix() {
  // The build puts the wasm binaries in static/wasm/; this code may sit in static/chunks/.
  try {
    const here = import.meta.url;
    return new URL(here.includes('/chunks/') ? '../wasm/' : './wasm/', here).href;
  } catch {
    return '/static/wasm/';
  }
}

async function trySet(name) {
  if (name === 'wasm' && !wasmConfigured) configureWasm(defaultWasmPrefix());
  if (name === 'webgpu') {
    if (!(typeof navigator !== 'undefined' && navigator.gpu)) return false;
    try {
      const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
      if (!adapter) return false;  // API present, no adapter (e.g. --disable-gpu)
      const i = adapter.info || {};
      gpuAdapter = { vendor: i.vendor || '', architecture: i.architecture || '', device: i.device || '', description: i.description || '' };
      gpuLimits = { maxBufferSize: Number(adapter.limits.maxBufferSize), maxStorageBufferBindingSize: Number(adapter.limits.maxStorageBufferBindingSize) };
    } catch {
      return false;
    }
  }
  let ok = false;
  try {
    ok = await tf.setBackend(name);
    await tf.ready();
  } catch {
    ok = false;
  }
  if (ok && name === 'webgl' && !tf.env().getBool('WEBGL_RENDER_FLOAT32_CAPABLE')) {
    // Half-float textures cannot train this model faithfully; treat WebGL as unavailable.
    ok = false;
  }
  return ok && tf.getBackend() === name;
}

/** The WebGL renderer string, and whether it is a software rasteriser (SwiftShader, llvmpipe):
 *  those run tfjs-webgl ~10× slower than tfjs-wasm on the same CPU. */
export function webglRenderer() {
  try {
    const gl = tf.backend().gpgpu.gl;
    const ext = gl.getExtension('WEBGL_debug_renderer_info');
    const renderer = String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
    return { renderer, software: /swiftshader|llvmpipe|softpipe|software/i.test(renderer) };
  } catch {
    return { renderer: 'unknown', software: false };
  }
}

/** Select a backend. `prefer` (a name or list) is tried first, then WebGPU, hardware WebGL,
 *  wasm, software WebGL, cpu. Returns its name. */
export async function initBackend(prefer = null) {
  const wanted = prefer ? (Array.isArray(prefer) ? prefer : [prefer]) : [];
  for (const name of wanted) if (await trySet(name)) return name;
  let softwareGl = false;
  for (const name of BACKEND_ORDER) {
    if (!(await trySet(name))) continue;
    if (name === 'webgl' && webglRenderer().software) { softwareGl = true; continue; }
    if (name === 'cpu' && softwareGl && (await trySet('webgl'))) return 'webgl';
    return name;
  }
  throw new Error('no TensorFlow.js backend could be initialised');
}

/** Use exactly this backend (no fallback); throws when it cannot run here. */
export async function useBackend(name) {
  if (!(await trySet(name))) throw new Error(`TensorFlow.js backend ${name} is not available in this browser`);
  return name;
}

/** Every backend that initialises in this browser, in preference order. Leaves `current` selected. */
export async function availableBackends() {
  const current = tf.getBackend();
  const out = [];
  for (const name of BACKEND_ORDER) if (await trySet(name)) out.push(name);
  if (current) await trySet(current);
  return out;
}

/** What runs, for display: backend name and relevant capabilities. */
export function backendInfo() {
  const name = tf.getBackend();
  const info = { backend: name, tfjs: tf.version.tfjs };
  if (name === 'webgl') {
    info.webglVersion = tf.env().getNumber('WEBGL_VERSION');
    info.float32 = tf.env().getBool('WEBGL_RENDER_FLOAT32_ENABLED');
    Object.assign(info, webglRenderer());
  }
  if (name === 'webgpu' && gpuAdapter) {
    info.adapter = gpuAdapter;
    info.limits = gpuLimits;
    // Mesa's lavapipe / SwiftShader: WebGPU on the CPU (CI), not a GPU.
    info.software = /lavapipe|llvmpipe|swiftshader|software/i.test(Object.values(gpuAdapter).join(' '));
  }
  if (name === 'wasm') {
    info.threads = getThreadsCount();  // > 1 only when the page is cross-origin isolated
  }
  return info;
}

// What a page declares it can spend on training when the browser does not say (issue 26). wasm:
// tfjs-backend-wasm's memory maximum is 4 GiB, but its heap fails past 2 GiB ("memory access out
// of bounds" in the second step of an ailo-1b `embed` slice, declared 1.81 GiB, whose [V, C]
// gradients and AdamW temporaries took the heap over 2 GiB), so 1.5 GiB: ailo-1b then gets one
// block (estimated 1.14 GiB). WebGL textures share the GPU with the display and the browser gives
// no size, so 1 GiB; the plain-JS cpu backend as wasm.
export const DEFAULT_BUDGETS = Object.freeze({ wasm: 1.5 * 2 ** 30, cpu: 1.5 * 2 ** 30, webgl: 2 ** 30 });

/** Bytes this page can spend on training, sent with every task request: on WebGPU the adapter's
 *  largest buffer (maxBufferSize: a device that allows one buffer of that size has at least that
 *  much memory; desktops 2–4 GiB, phones 256 MiB–1 GiB), else DEFAULT_BUDGETS. `override`
 *  (e.g. the page's ?budget=512MiB) wins. */
export function memoryBudget(override = null, info = backendInfo()) {
  if (override) return parseSize(override);
  if (info.backend === 'webgpu' && gpuLimits) return gpuLimits.maxBufferSize;
  return DEFAULT_BUDGETS[info.backend] ?? 2 ** 30;
}

const UNITS = { '': 1, B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30 };

/** '512MiB', '2GB', '1.5 GiB', '1048576' → bytes (as ailo's --memory-budget reads them). */
export function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$/i.exec(String(text));
  if (!m) throw new Error(`not a size: ${text} (e.g. 512MiB, 2GB)`);
  return Math.floor(Number(m[1]) * UNITS[(m[2] || '').toUpperCase()]);
}

/** One line for people (the page's header, the X-Ailo-Device header the dashboard shows):
 *  "webgpu - nvidia hopper", "webgpu - mesa llvmpipe (software)", "wasm - 4 threads". Printable
 *  ASCII, at most 128 characters (an HTTP header value). */
export function deviceLabel(info = backendInfo()) {
  let s = info.backend || 'none';
  if (info.adapter) {
    const a = info.adapter;
    s += ` - ${[a.vendor, a.architecture !== 'software' ? a.architecture : '', a.device || a.description].filter(Boolean).join(' ')}`;
  } else if (info.renderer) s += ` - ${info.renderer}`;
  else if (info.threads) s += ` - ${info.threads} thread${info.threads > 1 ? 's' : ''}`;
  if (info.software) s += ' (software)';
  return s.replace(/[^ -~]/g, '?').slice(0, 128);
}

export { tf };
