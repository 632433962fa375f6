// Chain verification (verify.py): block by block, in the Python reference's order of checks.
import { verify as verifySig } from '../ed25519.js';
import { blockFromJson } from './block.js';
import { BLOCK_DOMAIN, ZERO_HASH, canonicalJson, merkleRoot, sha256Hex } from './codec.js';
import { ChainViolation, LedgerError } from './errors.js';
import { paramsFromJson } from './params.js';
import { LedgerState, applyTx, beginBlock, endBlock } from './state.js';
import { Transaction } from './tx.js';

/** Verify block `index` on top of `state` (null for genesis); mutates and returns the state. */
export async function checkBlock(state, raw, index, now, coordinator = null) {
  const fail = (e, tx = null) => new ChainViolation(index, tx, e instanceof LedgerError ? e : new LedgerError('malformed', String(e)));
  let block;
  try { block = blockFromJson(raw); } catch (e) { throw fail(e); }
  if (block.header.height !== index) throw fail(new LedgerError('bad_height', `height ${block.header.height} at position ${index}`));
  if (state === null) {
    let params;
    try { params = paramsFromJson(block.header.params); } catch (e) { throw fail(e); }
    if (coordinator !== null && params.coordinator !== coordinator) {
      throw fail(new LedgerError('unexpected_coordinator', `genesis coordinator ${params.coordinator} is not the expected ${coordinator}`));
    }
    state = new LedgerState(params);
  }
  const tipHash = index ? state.tipHash : ZERO_HASH;
  if (block.header.prev !== tipHash) throw fail(new LedgerError('bad_prev_hash', `prev ${block.header.prev.slice(0, 16)}... does not link to block ${index - 1}`));
  if (index && block.header.timestamp < state.tipTs) throw fail(new LedgerError('timestamp_order', `timestamp ${block.header.timestamp} is before the previous block's ${state.tipTs}`));
  if (block.header.timestamp > now + state.params.max_future_ms) throw fail(new LedgerError('future_timestamp', `block timestamp ${block.header.timestamp} is in the future (now ${now})`));
  const coord = state.params.coordinator;
  const txs = [];
  for (let j = 0; j < block.txs.length; j++) {
    let tx;
    try {
      tx = Transaction.fromJson(block.txs[j]);
      await tx.checkSignature(coord);
    } catch (e) { throw fail(e, j); }
    txs.push(tx);
  }
  if (index === 0 && txs.length) throw fail(new LedgerError('malformed', 'the genesis block carries no transactions'), 0);
  if (block.header.tx_count !== txs.length || block.header.merkle_root !== merkleRoot(txs.map((t) => t.leaf()))) {
    throw fail(new LedgerError('bad_merkle_root', 'Merkle root/tx_count do not match the transactions'));
  }
  if (sha256Hex(canonicalJson(block.header)) !== block.hash) throw fail(new LedgerError('bad_block_hash', 'hash does not match the header'));
  if (!(await verifySig(coord, BLOCK_DOMAIN + block.hash, block.signature))) throw fail(new LedgerError('bad_block_signature', "block signature is not the coordinator's"));
  beginBlock(state, index);
  for (let j = 0; j < txs.length; j++) {
    try { applyTx(state, txs[j], block.header.timestamp); } catch (e) { throw fail(e, j); }
  }
  endBlock(state, block.hash, block.header.timestamp);
  return state;
}

function summary(state, count, ok) {
  if (!state) return { ok, height: -1, blocks: 0, tx_count: 0, minted: 0, burned: 0, supply: 0, state: null };
  return { ok, height: state.height, blocks: count, tx_count: state.txCount, minted: state.minted, burned: state.burned, supply: state.supply, state };
}

/** Verify a whole chain (block objects, genesis first). Returns the totals after the last
 *  fully verified block and, on failure, `violation` {block, tx, code, message}. */
export async function verifyChain(blocks, { now = Date.now(), coordinator = null, onBlock = null } = {}) {
  let state = null;
  let good = summary(null, 0, false);
  try {
    for (let i = 0; i < blocks.length; i++) {
      state = await checkBlock(state, blocks[i], i, now, coordinator);
      good = summary(state, i + 1, false);
      if (onBlock) await onBlock(i, blocks[i], state);
    }
    if (state === null) throw new ChainViolation(0, null, new LedgerError('empty_chain', 'the chain is empty'));
    try { state.checkInvariants(); } catch (e) { throw new ChainViolation(state.height, null, e); }
  } catch (e) {
    if (!(e instanceof ChainViolation)) throw e;
    good.violation = { block: e.block, tx: e.tx, code: e.code, message: e.message };
    return good;
  }
  good.ok = true;
  return good;
}
