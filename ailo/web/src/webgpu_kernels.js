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

function run(program, inputs, uniforms) {
  const info = tf.backend().runWebGPUProgram(program, inputs, 'float32', uniforms);
  return tf.engine().makeTensorFromTensorInfo(info);
}

/** Whether the fused kernels apply (the WebGPU backend is active). */
export const fusedAdamWAvailable = () => tf.getBackend() === 'webgpu' && typeof tf.backend().runWebGPUProgram === 'function';

/** One AdamW update of one parameter: returns [p', m', v'] (the caller assigns them). `coef`: a
 *  1-value float32 tensor multiplying g (gradient clipping). */
export function fusedAdamW(p, m, v, g, coef, { b1, b2, eps, decay, stepSize, bc2sqrt }) {
  const shape = p.shape;
  const m2 = run(new AdamWProgram('m', shape), [m, g, coef], f32(b1, 1 - b1));
  const v2 = run(new AdamWProgram('v', shape), [v, g, coef], f32(b2, 1 - b2));
  const p2 = run(new AdamWProgram('p', shape), [p, m2, v2], f32(decay, stepSize, bc2sqrt, eps));
  return [p2, m2, v2];
}
