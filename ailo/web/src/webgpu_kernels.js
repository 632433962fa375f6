// Hand-written WGSL for TensorFlow.js's WebGPU backend, where stock ops cost the most dispatches
// (each one a pipeline bind + dispatch recorded on the CPU):
//
// AdamW. Stock tfjs spends
// ~15 dispatches per parameter tensor on clip × AdamW (a 6-layer model: ~1,100 per step, each
// a pipeline bind + dispatch recorded on the CPU); these three kernels do the same float32
// arithmetic, in the same order, in 3: m' = β1·m + (1−β1)·c·g, v' = β2·v + (1−β2)·(c·g)², and
// p' = decay·p − step·m' / (√v' / √bc2 + ε), where c is the clipping coefficient (a device
// scalar, never read back). Results equal the stock-op path (tests/test_webgpu.py: Δ vs PyTorch).
//
// tanh-GELU: 1 kernel forward, 1 backward (stock: ~9 and ~20). LayerNorm: 2 kernels forward
// (row mean/rstd, normalise), 3 + 2 stock column sums backward (stock: ~9 and ~20).
import * as tf from '@tensorflow/tfjs';
import { webgpu_util as wu } from '@tensorflow/tfjs-backend-webgpu';

class AdamWProgram {
  /** kind 'm' | 'v': inputs X (moment), G (gradient), C (clip coefficient, 1 value);
   *  kind 'p': inputs P (parameter), M, V (the new moments). */
  constructor(kind, shape) {
    this.kind = kind;
    this.variableNames = kind === 'p' ? ['P', 'M', 'V'] : ['X', 'G', 'C'];
    this.outputShape = shape;
    this.size = true;
    this.workgroupSize = [256, 1, 1];
    this.dispatchLayout = wu.flatDispatchLayout(shape);
    this.dispatch = wu.computeDispatch(this.dispatchLayout, shape, this.workgroupSize);
    this.uniforms = kind === 'p' ? 'decay : f32, stepSize : f32, bc2sqrt : f32, eps : f32,' : 'beta : f32, oneMinusBeta : f32,';
    this.shaderKey = `ailo_adamw_${kind}`;
  }

  getUserCode() {
    const body = {
      m: 'let g = G[index] * C[0]; setOutputAtIndex(index, X[index] * uniforms.beta + g * uniforms.oneMinusBeta);',
      v: 'let g = G[index] * C[0]; setOutputAtIndex(index, X[index] * uniforms.beta + (g * g) * uniforms.oneMinusBeta);',
      p: 'let denom = sqrt(V[index]) / uniforms.bc2sqrt + uniforms.eps;\n'
        + '          setOutputAtIndex(index, P[index] * uniforms.decay - (M[index] / denom) * uniforms.stepSize);',
    }[this.kind];
    return `
      fn main(index : i32) {
        if (index < uniforms.size) {
          ${body}
        }
      }`;
  }
}

const f32 = (...xs) => xs.map((x) => ({ type: 'float32', data: [Math.fround(x)] }));

// Registered as kernels of the WebGPU backend, so they run (and are profiled) like tfjs's own.
tf.registerKernel({
  kernelName: 'AiloAdamWMoment', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x, g, c }, backend, attrs: { beta, square } }) =>
    backend.runWebGPUProgram(new AdamWProgram(square ? 'v' : 'm', x.shape), [x, g, c], 'float32', f32(beta, 1 - beta)),
});
tf.registerKernel({
  kernelName: 'AiloAdamWParam', backendName: 'webgpu',
  kernelFunc: ({ inputs: { p, m, v }, backend, attrs: { decay, stepSize, bc2sqrt, eps } }) =>
    backend.runWebGPUProgram(new AdamWProgram('p', p.shape), [p, m, v], 'float32', f32(decay, stepSize, bc2sqrt, eps)),
});

// tf.env flag AILO_WGSL_KERNELS (default on) lets bench/webgpu.py time the stock-op path.
tf.env().registerFlag('AILO_WGSL_KERNELS', () => true);

/** Whether the hand-written kernels apply (the WebGPU backend is active). */
export const wgslKernels = () => tf.getBackend() === 'webgpu' && tf.env().getBool('AILO_WGSL_KERNELS');
export const fusedAdamWAvailable = wgslKernels;

/** One AdamW update of one parameter: returns [p', m', v'] (the caller assigns them). `coef`: a
 *  1-value float32 tensor multiplying g (gradient clipping). */
export function fusedAdamW(p, m, v, g, coef, { b1, b2, eps, decay, stepSize, bc2sqrt }) {
  const run = (name, inputs, attrs) => tf.engine().runKernel(name, inputs, attrs);
  const m2 = run('AiloAdamWMoment', { x: m, g, c: coef }, { beta: b1, square: false });
  const v2 = run('AiloAdamWMoment', { x: v, g, c: coef }, { beta: b2, square: true });
  const p2 = run('AiloAdamWParam', { p, m: m2, v: v2 }, { decay, stepSize, bc2sqrt, eps });
  return [p2, m2, v2];
}

/** An elementwise program over `shape` (flat index `index`), or one thread per row of a [rows, cols]
 *  input (`perRow`: the body loops over the row itself). */
class AiloProgram {
  constructor(name, variableNames, outputShape, body, { uniforms = '', perRow = 0 } = {}) {
    this.variableNames = variableNames;
    this.outputShape = outputShape;
    this.workgroupSize = [perRow ? 64 : 256, 1, 1];
    this.dispatchLayout = wu.flatDispatchLayout(outputShape);
    const threads = perRow ? [perRow] : outputShape;
    this.dispatch = wu.computeDispatch(wu.flatDispatchLayout(threads), threads, this.workgroupSize);
    this.size = !perRow;
    if (uniforms) this.uniforms = uniforms;
    this.body = body;
    this.shaderKey = `ailo_${name}`;
  }

  getUserCode() {
    return `
      fn main(index : i32) {
        ${this.size ? 'if (index < uniforms.size)' : 'if (index < uniforms.rows)'} {
          ${this.body}
        }
      }`;
  }
}

const GELU = `
          let x = X[index];
          let t = tanh(clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0));`;
tf.registerKernel({
  kernelName: 'AiloGeluTanh', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x }, backend }) => backend.runWebGPUProgram(
    new AiloProgram('gelu', ['X'], x.shape, `${GELU}
          setOutputAtIndex(index, 0.5 * x * (1.0 + t));`), [x], 'float32'),
});
tf.registerKernel({
  kernelName: 'AiloGeluTanhGrad', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x, dy }, backend }) => backend.runWebGPUProgram(
    new AiloProgram('gelu_grad', ['X', 'DY'], x.shape, `${GELU}
          let du = 0.7978845608028654 * (1.0 + 0.134145 * x * x);
          setOutputAtIndex(index, DY[index] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du));`), [x, dy], 'float32'),
});

const kernel = (name, inputs, attrs = {}) => tf.engine().runKernel(name, inputs, attrs);

/** GELU with the tanh approximation (torch's approximate='tanh'), and its gradient, in WGSL. */
export const geluTanhFused = tf.customGrad((x, save) => {
  save([x]);
  return { value: kernel('AiloGeluTanh', { x }), gradFunc: (dy, [xs]) => kernel('AiloGeluTanhGrad', { x: xs, dy }) };
});

const ROW = 'let rows = uniforms.rows; let cols = uniforms.cols; let base = index * cols;';
const STATS = 'let mean = S[2 * row]; let rstd = S[2 * row + 1];';
tf.registerKernel({  // [N, C] → [N, 2]: mean and 1/sqrt(biased variance + eps), two passes in float32
  kernelName: 'AiloLNStats', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x }, backend, attrs: { eps } }) => {
    const [n, c] = x.shape;
    return backend.runWebGPUProgram(new AiloProgram('ln_stats', ['X'], [n, 2], `${ROW}
          var s = 0.0;
          for (var j = 0; j < cols; j++) { s += X[base + j]; }
          let mean = s / f32(cols);
          var v = 0.0;
          for (var j = 0; j < cols; j++) { let d = X[base + j] - mean; v += d * d; }
          setOutputAtIndex(2 * index, mean);
          setOutputAtIndex(2 * index + 1, inverseSqrt(v / f32(cols) + uniforms.eps));`,
    { uniforms: 'rows : i32, cols : i32, eps : f32,', perRow: n }), [x], 'float32',
    [{ type: 'int32', data: [n] }, { type: 'int32', data: [c] }, { type: 'float32', data: [eps] }]);
  },
});
tf.registerKernel({  // y = (x − mean)·rstd·w + b
  kernelName: 'AiloLNApply', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x, s, w, b }, backend }) => backend.runWebGPUProgram(new AiloProgram('ln_apply', ['X', 'S', 'W', 'B'], x.shape, `
          let cols = uniforms.cols; let row = index / cols; let col = index - row * cols; ${STATS}
          setOutputAtIndex(index, (X[index] - mean) * rstd * W[col] + B[col]);`, { uniforms: 'cols : i32,' }),
  [x, s, w, b], 'float32', [{ type: 'int32', data: [x.shape[1]] }]),
});
tf.registerKernel({  // [N, 2]: Σ_j g_j and Σ_j g_j·x̂_j with g = dy·w
  kernelName: 'AiloLNGradRows', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x, s, w, dy }, backend }) => {
    const [n, c] = x.shape;
    return backend.runWebGPUProgram(new AiloProgram('ln_grad_rows', ['X', 'S', 'W', 'DY'], [n, 2], `${ROW}
          let row = index; ${STATS}
          var a = 0.0; var b = 0.0;
          for (var j = 0; j < cols; j++) { let g = DY[base + j] * W[j]; a += g; b += g * (X[base + j] - mean) * rstd; }
          setOutputAtIndex(2 * index, a);
          setOutputAtIndex(2 * index + 1, b);`,
    { uniforms: 'rows : i32, cols : i32,', perRow: n }), [x, s, w, dy], 'float32',
    [{ type: 'int32', data: [n] }, { type: 'int32', data: [c] }]);
  },
});
tf.registerKernel({  // dx = rstd·(g − (Σg + x̂·Σg·x̂)/C)
  kernelName: 'AiloLNGradX', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x, s, w, dy, r }, backend }) => backend.runWebGPUProgram(new AiloProgram('ln_grad_x', ['X', 'S', 'W', 'DY', 'R'], x.shape, `
          let cols = uniforms.cols; let row = index / cols; let col = index - row * cols; ${STATS}
          let xhat = (X[index] - mean) * rstd;
          let g = DY[index] * W[col];
          setOutputAtIndex(index, rstd * (g - (R[2 * row] + xhat * R[2 * row + 1]) / f32(cols)));`, { uniforms: 'cols : i32,' }),
  [x, s, w, dy, r], 'float32', [{ type: 'int32', data: [x.shape[1]] }]),
});
tf.registerKernel({  // dy·x̂ (summed over rows by a stock Sum for the weight's gradient)
  kernelName: 'AiloLNXhatDy', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x, s, dy }, backend }) => backend.runWebGPUProgram(new AiloProgram('ln_xhat_dy', ['X', 'S', 'DY'], x.shape, `
          let cols = uniforms.cols; let row = index / cols; ${STATS}
          setOutputAtIndex(index, DY[index] * (X[index] - mean) * rstd);`, { uniforms: 'cols : i32,' }),
  [x, s, dy], 'float32', [{ type: 'int32', data: [x.shape[1]] }]),
});

/** LayerNorm over the last axis of x [N, C] (biased variance, as torch), with its gradients
 *  for x, w and b, in WGSL. */
export function layerNormFused(x, w, b, eps) {
  const f = tf.customGrad((xi, wi, bi, save) => {
    const s = kernel('AiloLNStats', { x: xi }, { eps });
    save([xi, s, wi]);
    return {
      value: kernel('AiloLNApply', { x: xi, s, w: wi, b: bi }),
      gradFunc: (dy, [xs, ss, ws]) => {
        const r = kernel('AiloLNGradRows', { x: xs, s: ss, w: ws, dy });
        return [kernel('AiloLNGradX', { x: xs, s: ss, w: ws, dy, r }),
          tf.sum(kernel('AiloLNXhatDy', { x: xs, s: ss, dy }), 0), tf.sum(dy, 0)];
      },
    };
  });
  return f(x, w, b);
}

// Σ x² of a large tensor (the gradient-norm for clipping). tfjs's full reduction runs ONE
// workgroup over every entry: the [50257, 256] embedding gradient took 9.8 ms of a 48 ms
// ailo-small step on an H100 (bench/RESULTS.md). Here `parts` threads each add a strided share
// (x[i], x[i + parts], …: neighbouring threads read neighbouring entries) and a stock Sum adds
// the `parts` partial sums.
tf.registerKernel({
  kernelName: 'AiloSumSquaresPartial', backendName: 'webgpu',
  kernelFunc: ({ inputs: { x }, backend, attrs: { parts } }) => backend.runWebGPUProgram(
    new AiloProgram('sumsq_partial', ['X'], [parts], `
          let n = uniforms.n;
          var s = 0.0;
          for (var j = index; j < n; j += uniforms.size) { let v = X[j]; s += v * v; }
          setOutputAtIndex(index, s);`, { uniforms: 'n : i32,' }),
    [x], 'float32', [{ type: 'int32', data: [x.size] }]),
});

/** Σ x² as a scalar: `parts` strided partial sums in WGSL, then their sum. */
export function sumSquaresFused(x, parts = 8192) {
  return tf.tidy(() => tf.sum(kernel('AiloSumSquaresPartial', { x }, { parts: Math.min(parts, x.size) })));
}
