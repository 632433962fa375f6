// The browser's model-family registry, mirror of ailo/inference/families/: the only module that
// looks at a spec's family name. `layout` picks the unit math in span.js: 'hf' (Llama-2, Qwen2:
// RMSNorm, rotary positions, SwiGLU; Hugging Face tensor names) or 'gpt' (ailo GPT: LayerNorm,
// learned positions, GELU; `ailo.model` tensor names). A new family: one entry here.
const FAMILIES = {
  llama: { layout: 'hf' },
  qwen2: { layout: 'hf' },
  ailo: { layout: 'gpt' },
};

export function familyOf(spec) {
  const f = FAMILIES[spec.family];
  if (!f) throw new Error(`unknown model family ${spec.family}; known: ${Object.keys(FAMILIES).join(', ')}`);
  return f;
}
