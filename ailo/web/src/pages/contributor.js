// The contributor page (`/`): wallet + registration, model download through the IndexedDB
// chunk cache, local training, signed update submission, balance, in-page chain verification.
// Page state is mirrored in `window.ailoPage` (read by the end-to-end test).
import { initBackend, backendInfo, deviceLabel, memoryBudget } from '../backend.js';
import { CoordinatorClient, ModelHolder, contributeRound, syncChain, HttpError } from '../client.js';
import { GPT2Tokenizer } from '../tokenizer.js';
import { Wallet, USERNAME_RE } from '../wallet.js';
import { formatAlc, FEE } from '../ledger/index.js';
import { hasWebCryptoEd25519 } from '../ed25519.js';
import { ContinuousContributor } from '../continuous.js';
import { BrowserNode } from '../node.js';
import { askRoom, parseTokenIds } from '../asker.js';
import { backupWallet, modelConsent, restoreWallet, sampleTitle, watchReward } from './newcomer_panels.js';

const $ = (id) => document.getElementById(id);
const state = (window.ailoPage = { ready: false, backend: null, wallet: null, model: null, rounds: [], asks: [], chain: null, errors: [],
  rewards: [], modelConsent: null });
const client = new CoordinatorClient('');
const params = new URLSearchParams(location.search);
let wallet = null;
let tokenizer = null;

const mb = (n) => `${(n / 1e6).toFixed(2)} MB`;
function setText(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  if (cls !== undefined) el.className = cls;
}
function fail(where, e) {
  state.errors.push(`${where}: ${e.message || e}`);
  return e.message || String(e);
}

function showWallet() {
  if (!wallet) return;
  setText('wallet-address', wallet.address);
  setText('wallet-kind', `(${wallet.kind === 'webcrypto' ? 'WebCrypto Ed25519, key not extractable' : '@noble/ed25519'})`);
  if (wallet.registered) {
    $('register-form').hidden = true;
    setText('register-status', `Registered as ${wallet.username}.`, 'ok');
  }
  state.wallet = { address: wallet.address, username: wallet.username, registered: wallet.registered, kind: wallet.kind };
}

async function refreshBalance() {
  if (!wallet || !wallet.registered) return null;
  try {
    const b = await client.balance(wallet.address);
    setText('balance', formatAlc(b.spendable));
    setText('balance-pending', b.pending ? `(+ ${formatAlc(b.pending)} pending)` : '');
    state.balance = b;
    return b;
  } catch (e) {
    fail('balance', e);
    return null;
  }
}

async function register() {
  const name = $('username').value.trim().toLowerCase();
  if (!USERNAME_RE.test(name)) {
    setText('register-status', 'Username: 3–32 characters of a-z, 0-9, _ and -, starting with a letter or digit.', 'bad');
    return;
  }
  $('register').disabled = true;
  try {
    if (!wallet) {
      wallet = await Wallet.generate();
      await wallet.save();  // keep the key even if this name is taken
    }
    const tx = await wallet.registerTx(name);
    setText('register-status', 'Registering…', 'muted');
    await client.register(tx);
    wallet.username = name;
    wallet.registered = true;
    await wallet.save();
    showWallet();
    await refreshBalance();
    updateTrainButton();
  } catch (e) {
    const msg = e instanceof HttpError && e.reason === 'username_taken' ? `“${name}” is taken, pick another.` : fail('register', e);
    setText('register-status', msg, 'bad');
  } finally {
    $('register').disabled = false;
  }
}

const holder = new ModelHolder(client, {
  onProgress: (p) => {
    if (p.kind === 'chunk') {
      $('model-progress').max = p.total;
      $('model-progress').value = p.done;
      setText('model-status', `chunk ${p.done}/${p.total} · downloaded ${mb(p.stats.downloadedBytes)} · from this browser's cache ${p.stats.cacheHits}`, 'muted');
    }
  },
});

let consentAsked;
const asking4consent = new Promise((resolve) => { consentAsked = resolve; });  // the page is ready while it waits for a click
async function loadModel() {
  try {
    await modelConsent(panel, Number(params.get('askAboveMB') || 100) * 1e6, consentAsked);
    await holder.ensure();
    const s = holder.stats;
    state.model = { version: holder.manifest.version, preset: holder.manifest.preset, downloadedBytes: s.downloadedBytes, cacheHits: s.cacheHits, chunks: s.chunks, totalBytes: s.totalBytes,
      format: s.format, via: s.via, patchBytes: s.patchBytes, notes: holder.notes.slice() };
    $('model-progress').max = 1;
    $('model-progress').value = 1;
    const how = s.via === 'patch' ? `patched from version ${holder.manifest.version - 1} with a ${mb(s.patchBytes)} int8 patch`
      : `${mb(s.downloadedBytes)} downloaded, ${s.cacheHits} from this browser's cache`;
    setText('model-status', `${holder.manifest.preset} version ${holder.manifest.version} (${s.format}): ${s.chunks} chunks (${mb(s.totalBytes)}), ` +
      `${how} — verified (sha256)${s.via === 'stream' ? `; larger than this device's ${mb(holder.budget)} budget: kept in the cache, trained a slice at a time` : ''}`, 'ok');
  } catch (e) {
    setText('model-status', `Model download failed: ${fail('model', e)} (reload to resume)`, 'bad');
  }
}

async function loadSamples() {
  try {
    const { samples } = await client.samples();
    const sel = $('text-source');
    for (const s of samples) {
      const o = document.createElement('option');
      o.value = s.name;
      o.textContent = `sample: ${sampleTitle(s.name)} (${Math.round(s.bytes / 1000)} kB)`;
      sel.appendChild(o);
    }
    if (samples.length) sel.value = samples[0].name;
  } catch (e) {
    fail('samples', e);
  }
}

let continuous = null;

function updateTrainButton() {
  const can = !!(wallet && wallet.registered && holder.manifest);
  $('train').disabled = !can || !!(continuous && continuous.running);
  $('continuous').disabled = !can;
  $('serve').disabled = !(wallet && wallet.registered && $('serve-room').value);
  $('ask').disabled = !(wallet && wallet.registered && $('ask-room').value) || asking;
}

let node = null;

let rooms = [];

async function loadRooms() {
  try {
    rooms = await client.rooms();
    for (const id of ['serve-room', 'ask-room']) {
      const sel = $(id);
      const keep = sel.value;
      sel.innerHTML = rooms.length ? '' : '<option value="">no rooms</option>';
      for (const r of rooms) {
        const o = document.createElement('option');
        o.value = r.id;
        o.textContent = `${r.id} — ${r.model} (${r.state}, ${r.nodes.filter((n) => n.alive).length}/${r.slots} nodes)`;
        sel.appendChild(o);
      }
      if (keep && rooms.some((r) => r.id === keep)) sel.value = keep;
    }
    showAskPrice();
  } catch (e) {
    fail('rooms', e);
  }
}

function showAskPrice() {
  const r = rooms.find((x) => x.id === $('ask-room').value);
  if (!r) { setText('ask-price', '—'); return; }
  setText('ask-price', r.price ? `Price: ${formatAlc(r.price)} + ${formatAlc(FEE)} fee per request (${r.plan ? r.plan.spans.length : '?'} spans)` +
    (r.has_tokenizer ? '' : ' · this room has no tokenizer: type token ids') : 'This coordinator charges nothing for this room.', 'muted');
}

let asking = false;

/** Ask the chosen room from this page's wallet, paying with a signed PAY_INFERENCE. */
async function ask() {
  asking = true;
  updateTrainButton();
  const room = $('ask-room').value;
  const record = { room, tokens: [], text: '', requestId: null, payees: null, error: null, reason: null };
  $('ask-output').textContent = '';
  try {
    await loadRooms();
    const view = rooms.find((r) => r.id === room);
    if (!view) throw new Error(`no room ${room}`);
    const typed = $('ask-prompt').value;
    const ids = view.has_tokenizer ? null : parseTokenIds(typed);
    if (!view.has_tokenizer && !ids) throw new Error('this room has no tokenizer: type token ids, e.g. 7, 100, 42');
    if (view.has_tokenizer && !typed.trim()) throw new Error('type a prompt');
    setText('ask-status', `Paying ${formatAlc(view.price || 0)} + ${formatAlc(FEE)} fee and asking ${room}…`, 'muted');
    const done = await askRoom({ room, wallet, prompt: ids ? null : typed, inputIds: ids, maxNewTokens: Number($('ask-max').value) || 32,
      price: view.price, onEvent: (e) => {
        if (e.type === 'start') record.requestId = e.request_id;
        if (e.type === 'token') {
          record.tokens.push(e.token);
          const piece = e.text !== null && e.text !== undefined ? e.text : `${e.token} `;
          record.text += piece;
          $('ask-output').textContent += piece;
        }
        if (e.type === 'failover') setText('ask-status', `${e.span} moved to another node (${e.reason})…`, 'muted');
      } });
    Object.assign(record, { requestId: done.request_id, payees: done.payees, price: view.price, finish: done.finish_reason });
    setText('ask-status', `Done: ${done.tokens.length} tokens, paid ${formatAlc((view.price || 0) + (view.price ? FEE : 0))}; ` +
      `${done.payees.length} node wallet${done.payees.length === 1 ? '' : 's'} paid (request ${done.request_id.slice(0, 12)}).`, 'ok');
  } catch (e) {
    record.error = e.message || String(e);
    record.reason = e.reason || null;
    const msg = e.reason === 'insufficient_funds' ? `Not enough ALC for this request: ${e.message}` : fail('ask', e);
    setText('ask-status', msg, 'bad');
  } finally {
    state.asks.push(record);
    asking = false;
    updateTrainButton();
    await refreshBalance();
  }
}

function showNode(st) {
  const span = st.span ? st.span.label : 'waiting for the room to form';
  const w = st.weights ? ` · weights ${mb(st.weights.totalBytes)} (${mb(st.weights.downloadedBytes)} downloaded, ${st.weights.tensors} tensors)` : '';
  setText('serve-status', `${st.status}${st.nodeId ? ` as node ${st.nodeId.slice(0, 12)}` : ''} · ${span}${w} · ` +
    `requests ${st.requests} · frames ${st.frames} · ${mb(st.bytesIn + st.bytesOut)} moved${st.error ? ` · ${st.error}` : ''}`,
  st.status === 'error' || (st.status === 'closed' && st.error) ? 'bad' : 'muted');
  state.node = { ...st };
}

async function toggleServe() {
  if (node && !['closed', 'stopped'].includes(node.state.status)) {
    node.stop();
    node = null;
    $('serve').textContent = 'Serve';
    return;
  }
  $('serve').disabled = true;
  try {
    node = new BrowserNode({ room: $('serve-room').value, wallet, memory: Number($('serve-memory').value) * 1e9, onChange: showNode });
    await node.start();
    $('serve').textContent = 'Stop serving';
  } catch (e) {
    setText('serve-status', `Could not join: ${fail('serve', e)}`, 'bad');
    node = null;
  } finally {
    updateTrainButton();
  }
}

const PHASES = { task: 'asking for work', wait: 'waiting for the next round', model: 'loading the model', train: 'training',
  sign: 'signing', submit: 'submitting', verdict: 'waiting for the verdict', backoff: 'coordinator busy: backing off', paused: 'paused (tab hidden)',
  starting: 'starting', stopped: 'stopped', finished: 'training has finished on this network', idle: '—' };

function showContinuous(st) {
  $('continuous-status').hidden = false;
  setText('cont-round', st.round ?? '—');
  setText('cont-loss', st.loss === null ? '—' : st.loss.toFixed(4));
  setText('cont-accepted', `${st.accepted}${st.refused ? ` (${st.refused} refused)` : ''}`);
  setText('cont-earned', formatAlc(Math.max(0, st.earned)));
  setText('cont-bytes', `${mb(st.bytesDown)} down, ${mb(st.bytesUp)} up`);
  setText('cont-phase', (PHASES[st.phase] || st.phase) + (st.phase === 'backoff' ? ` ${st.backoffS} s` : '') + (st.lastError ? ` — last error: ${st.lastError}` : ''));
  state.continuous = { ...st, rounds: st.rounds.slice() };
  if (st.rounds.length) refreshBalance();
}

async function toggleContinuous() {
  if ($('continuous').checked) {
    continuous = new ContinuousContributor({
      client, wallet, holder, getTokens: trainingTokens, onChange: showContinuous, pauseWhenHidden: $('pause-hidden').checked,
      onStep: ({ step, steps, loss }) => { $('train-progress').max = steps; $('train-progress').value = step; setText('loss', loss.toFixed(4)); },
    });
    continuous.start().catch((e) => fail('continuous', e)).finally(() => { $('continuous').checked = false; updateTrainButton(); });
    updateTrainButton();
  } else if (continuous) {
    await continuous.stop();
    updateTrainButton();
  }
}

async function trainingTokens() {
  tokenizer ||= await GPT2Tokenizer.load('/static/tokenizer');
  const src = $('text-source').value;
  const text = src ? await client.sample(src) : $('own-text').value;
  if (!text || text.length < 2000) throw new Error('give at least a few paragraphs of text (2,000 characters)');
  const ids = [];
  for (const para of text.split(/\n{2,}/)) { ids.push(...tokenizer.encode(para + '\n\n')); }
  return Int32Array.from(ids);
}

async function train() {
  $('train').disabled = true;
  setText('round-status', '');
  const t0 = performance.now();
  try {
    setText('train-status', 'Tokenizing your text (in this page)…', 'muted');
    const tokens = await trainingTokens();
    const out = await contributeRound({
      client, wallet, holder, tokens,
      onStatus: ({ phase, task }) => {
        const what = { task: 'Asking the coordinator for work…', wait: 'Waiting for the next round…', model: `Loading model version ${task && task.version}…`,
          train: `Training round ${task && task.round} on ${tokens.length} tokens (${backendInfo().backend})…`, sign: 'Signing the update…', submit: 'Submitting the update…',
          verdict: 'Update stored; the coordinator is validating it…' }[phase];
        setText('train-status', what, 'muted');
      },
      onStep: ({ step, steps, loss, tokens: n, seconds }) => {
        $('train-progress').max = steps;
        $('train-progress').value = step;
        setText('loss', loss.toFixed(4));
        setText('throughput', `step ${step}/${steps} · ${(n / seconds).toFixed(n / seconds < 10 ? 2 : 0)} tokens/s (${(seconds / step).toFixed(1)} s a step)`);
      },
    });
    if (out.status !== 'submitted') {
      setText('train-status', out.status === 'done' ? 'Training has finished on this network.' : `Coordinator says: ${out.status}`, 'muted');
      return;
    }
    state.rounds.push({ round: out.task.round, version: out.task.version, reply: out.reply, trainLoss: out.result.trainLoss, losses: out.result.losses,
      steps: out.result.steps, tokens: out.result.tokens, seconds: out.result.seconds, bytes: out.bytes, sha256: out.sha256, backend: out.backend,
      slice: out.result.slice || null, wallSeconds: (performance.now() - t0) / 1000 });
    setText('train-status', `Trained ${out.result.steps} steps (${out.result.tokens} tokens) in ${out.result.seconds.toFixed(1)} s on ${out.backend}; sent ${mb(out.bytes)}.`, 'muted');
    setText('round-status', `Update ${out.reply.update_id} accepted in round ${out.reply.round} ` +
      `(${out.result.steps * out.task.batch_size} sequences, ${out.result.tokens} tokens${out.result.slice ? `; slice ${out.result.slice.units.join(', ')}` : ''}).`, 'ok');
    watchReward(panel, out.reply).catch((e) => fail('reward', e));
    await verifyChain();
    await loadModel();  // the next version, if the round closed (only changed chunks download)
  } catch (e) {
    const msg = e instanceof HttpError ? `Refused (${e.reason || e.status}): ${e.message}` : fail('train', e);
    setText('round-status', msg, 'bad');
    state.rounds.push({ error: msg, reason: e.reason || null });
  } finally {
    updateTrainButton();
  }
}

const panel = { $, setText, fail, client, state, refreshBalance, getWallet: () => wallet,
  setWallet: async (w) => { wallet = w; showWallet(); await refreshBalance(); updateTrainButton(); } };

let chainRun = 0;  // only the latest verification may write the result (an older one can finish later)

async function verifyChain() {
  const run = ++chainRun;
  state.chain = null;  // in progress: nothing verified yet for this run
  setText('chain-status', 'Downloading and verifying…', 'muted');
  try {
    const r = await syncChain(client);
    if (run !== chainRun) return;
    state.chain = { ok: r.ok, height: r.height, blocks: r.blocks, txCount: r.tx_count, supply: r.supply, fetched: r.fetched, violation: r.violation || null };
    if (r.ok) {
      setText('chain-status', `Chain OK: height ${r.height}, ${r.blocks} blocks and ${r.tx_count} transactions verified in this page (${r.fetched} newly downloaded), supply ${formatAlc(r.supply)}`, 'ok');
    } else {
      const v = r.violation;
      setText('chain-status', `Chain REJECTED at block ${v.block}${v.tx !== null ? `, tx ${v.tx}` : ''}: ${v.code}: ${v.message}`, 'bad');
    }
  } catch (e) {
    if (run !== chainRun) return;
    setText('chain-status', `Chain check failed: ${fail('chain', e)}`, 'bad');
  }
}

async function main() {
  $('register').addEventListener('click', register);
  $('backup').addEventListener('click', () => backupWallet(panel));
  $('restore').addEventListener('click', () => restoreWallet(panel));
  $('train').addEventListener('click', train);
  $('verify-chain').addEventListener('click', verifyChain);
  $('continuous').addEventListener('change', toggleContinuous);
  $('serve').addEventListener('click', toggleServe);
  $('serve-room').addEventListener('change', updateTrainButton);
  $('ask').addEventListener('click', ask);
  $('ask-room').addEventListener('change', () => { showAskPrice(); updateTrainButton(); });
  $('pause-hidden').addEventListener('change', () => { if (continuous) { continuous.pauseWhenHidden = $('pause-hidden').checked; continuous._poke(); } });
  $('text-source').addEventListener('change', () => { $('own-text').hidden = !!$('text-source').value; });
  const backend = await initBackend(params.get('backend') || null);
  const info = backendInfo();
  state.backend = backend;
  state.device = deviceLabel(info);
  state.adapter = info.adapter || null;
  state.budget = holder.budget = memoryBudget(params.get('budget'), info);  // declared in every task request
  setText('backend', `${backend}${info.threads ? ` (${info.threads} thread${info.threads > 1 ? 's' : ''})` : ''}${info.adapter ? ` on ${info.adapter.vendor} ${info.adapter.architecture !== 'software' ? info.adapter.architecture : ''} ${info.adapter.device || info.adapter.description}`.replace(/ +/g, ' ') : ''}${info.software ? (backend === 'webgpu' ? ' (software)' : ' (software GL)') : ''}`);
  wallet = await Wallet.load();
  state.webcryptoEd25519 = await hasWebCryptoEd25519();
  showWallet();
  await Promise.all([Promise.race([loadModel(), asking4consent]), loadSamples(), refreshBalance(), loadRooms()]);
  $('own-text').hidden = !!$('text-source').value;
  updateTrainButton();
  await verifyChain();
  state.ready = true;
}

main().catch((e) => { fail('startup', e); setText('backend', `error: ${e.message}`, 'bad'); });
