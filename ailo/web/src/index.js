// Entry point of the browser bundle (static/ailo.js, an ES module).
export * as tfjs from '@tensorflow/tfjs';
export { initBackend, useBackend, availableBackends, backendInfo, configureWasm, BACKEND_ORDER } from './backend.js';
export { GPT, PRESETS, getPreset, paramShapes, configFrom, lossFn, logits, crossEntropy } from './model.js';
export { ChunkCache, ChunkLoader, ChunkIntegrityError, fetchManifest, assembleTensors, loadModelWeights } from './chunks.js';
export { parseSafetensors, serializeSafetensors, toFloat32, SafetensorsError } from './safetensors.js';
export { trainLocal, encodeUpdate, applyDelta, randomBatches, trainConfigFrom, AdamW, SGD, clipGradNorm, mulberry32, DEFAULT_TRAIN_CONFIG } from './train.js';
export { GPT2Tokenizer } from './tokenizer.js';
export { sha256, sha256Hex, toHex, fromHex } from './hash.js';
export { KV } from './idb.js';
export { Wallet, updateMessage, USERNAME_RE } from './wallet.js';
export { addressFromPublicKey, publicKeyFromAddress, isValidAddress, keyFromSeed, generateKey, sign as ed25519Sign, verify as ed25519Verify, hasWebCryptoEd25519, forceNoble } from './ed25519.js';
export { verifyChain, checkBlock, canonicalJson, parseJson, merkleRoot, merkleLeaf, signTx, formatAlc, LedgerError, Transaction, UNIT, FEE } from './ledger.js';
export { CoordinatorClient, ModelHolder, contributeRound, syncChain, HttpError } from './client.js';
export { webglRenderer } from './backend.js';
export { BrowserSpan, SpanCache, spanTensorNames, rotaryTables } from './span.js';
export { fetchSpanManifest, loadSpanWeights, assembleSpan } from './spanweights.js';
export { decodeFrame, encodeFrame, WireError } from './wire.js';
export { ContinuousContributor, backoffSeconds, isTransient } from './continuous.js';
