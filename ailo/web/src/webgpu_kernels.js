// Hand-written WGSL for the optimizer step on TensorFlow.js's WebGPU backend. Stock tfjs spends
// ~15 dispatches per parameter tensor on clip × AdamW (a 6-layer model: ~1,100 per step, each
// a pipeline bind + dispatch recorded on the CPU); these three kernels do the same float32
// arithmetic, in the same order, in 3: m' = β1·m + (1−β1)·c·g, v' = β2·v + (1−β2)·(c·g)², and
// p' = decay·p − step·m' / (√v' / √bc2 + ε), where c is the clipping coefficient (a device
// scalar, never read back). Results equal the stock-op path (tests/test_webgpu.py: Δ vs PyTorch).
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

// tf.env flag AILO_FUSED_ADAMW (default on) lets bench/webgpu.py time the stock-op path.
tf.env().registerFlag('AILO_FUSED_ADAMW', () => true);

/** Whether the fused kernels apply (the WebGPU backend is active). */
export const fusedAdamWAvailable = () => tf.getBackend() === 'webgpu' && tf.env().getBool('AILO_FUSED_ADAMW');

/** One AdamW update of one parameter: returns [p', m', v'] (the caller assigns them). `coef`: a
 *  1-value float32 tensor multiplying g (gradient clipping). */
export function fusedAdamW(p, m, v, g, coef, { b1, b2, eps, decay, stepSize, bc2sqrt }) {
  const run = (name, inputs, attrs) => tf.engine().runKernel(name, inputs, attrs);
  const m2 = run('AiloAdamWMoment', { x: m, g, c: coef }, { beta: b1, square: false });
  const v2 = run('AiloAdamWMoment', { x: v, g, c: coef }, { beta: b2, square: true });
  const p2 = run('AiloAdamWParam', { p, m: m2, v: v2 }, { decay, stepSize, bc2sqrt, eps });
  return [p2, m2, v2];
}
