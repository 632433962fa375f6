// WebGPU in Node for the runner: Dawn's Node bindings (npm `webgpu`) installed as
// `navigator.gpu`, before TensorFlow.js's WebGPU backend is imported (it registers itself only
// when navigator.gpu exists). Two shims make tfjs-backend-webgpu 4.22 run on Dawn-node:
// requestDevice's `requiredFeatures` is flattened to plain names the adapter has (tfjs pushes
// ['bgra8unorm-storage'] as an array, which Dawn-node rejects), and the WebGPU globals
// (GPUBufferUsage, GPUMapMode, ...) are defined. This module is imported first by main.js.
//
// AILO_DAWN_FLAGS (comma separated) are passed to Dawn's `create`, e.g.
// `enable-dawn-features=disable_robustness` or `adapter=NVIDIA`.
import { create, globals } from 'webgpu';

Object.assign(globalThis, globals);
const flags = (process.env.AILO_DAWN_FLAGS || '').split(/[;]/).map((s) => s.trim()).filter(Boolean);
export const gpu = create(flags);

const requestAdapter = gpu.requestAdapter.bind(gpu);
gpu.requestAdapter = async (options) => {
  const adapter = await requestAdapter(options);
  if (!adapter) return adapter;
  const requestDevice = adapter.requestDevice.bind(adapter);
  adapter.requestDevice = (desc = {}) => requestDevice({
    ...desc, requiredFeatures: [...(desc.requiredFeatures || [])].flat().filter((f) => adapter.features.has(f)),
  });
  return adapter;
};

if (typeof globalThis.navigator === 'undefined') {
  Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
} else {
  Object.defineProperty(globalThis.navigator, 'gpu', { value: gpu, configurable: true });
}
