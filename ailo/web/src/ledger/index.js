// AiloCoin chain verification in the browser (SPEC R11): a port of docs/LEDGER.md, one module per
// Python module of ailo/ledger/ (codec, errors, params, tx, block, state, verify). Same canonical
// bytes, same order of checks, same error codes: it reproduces every vector in tests/vectors/ledger/.
// Integers are JS Numbers: the schemas keep every chain integer within [0, 2^53 − 1].
export * from './errors.js';
export * from './codec.js';
export * from './params.js';
export * from './tx.js';
export * from './block.js';
export * from './state.js';
export * from './verify.js';
