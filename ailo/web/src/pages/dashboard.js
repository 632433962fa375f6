// The dashboard page (`/dashboard`): validation loss per round, contributors and their
// rewards (read from the chain this page verified itself), accepted/refused updates with
// reasons, chain height and supply, inference rooms. State mirrored in `window.ailoDashboard`.
import { CoordinatorClient, syncChain } from '../api.js';
import { KV } from '../idb.js';
import { formatAlc } from '../ledger/index.js';
import { roomChecksTable, roomEvents, roomNodes, roomsTable } from '../roomsview.js';

const $ = (id) => document.getElementById(id);
const client = new CoordinatorClient('');
const state = (window.ailoDashboard = { ready: false, errors: [] });

const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));
const short = (a) => (a ? `${a.slice(0, 13)}…${a.slice(-6)}` : '');

/** A small SVG line plot of validation loss against model version (no plotting library). */
function lossPlot(points) {
  const W = 900, H = 260, L = 52, R = 16, T = 14, B = 34;
  if (!points.length) return '<p class="muted">No validation loss yet.</p>';
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-6) { y0 -= 0.5; y1 += 0.5; }
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const ticks = 5;
  let grid = '';
  for (let i = 0; i <= ticks; i++) {
    const y = y0 + ((y1 - y0) * i) / ticks;
    grid += `<line x1="${L}" x2="${W - R}" y1="${py(y)}" y2="${py(y)}" stroke="#eaecf0"/><text x="${L - 6}" y="${py(y) + 4}" text-anchor="end">${y.toFixed(3)}</text>`;
  }
  for (const x of [...new Set(xs)]) grid += `<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle">${x}</text>`;
  const path = points.map((p, i) => `${i ? 'L' : 'M'}${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(' ');
  const dots = points.map((p) => `<circle cx="${px(p.x)}" cy="${py(p.y)}" r="3.5" fill="#2f6fed"><title>version ${p.x}: ${p.y.toFixed(4)}</title></circle>`).join('');
  return `<svg id="loss-svg" viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="validation loss per model version">${grid}
    <path d="${path}" fill="none" stroke="#2f6fed" stroke-width="2"/>${dots}
    <text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">model version (one per closed round)</text></svg>`;
}

async function render() {
  const [status, updates, info, rooms, releases] = await Promise.all([
    client.status(), client.updates().catch(() => ({ updates: [] })), client.ledgerInfo(), client.rooms().catch(() => null),
    client.exports().catch(() => ({ latest: null }))]);
  const chain = await syncChain(client, { dbName: 'ailo-chain-dashboard' });
  $('kpi-round').textContent = status.finished ? `${status.round} (finished)` : status.round;
  $('kpi-version').textContent = status.version;
  const left = Math.max(0, Math.round(status.deadline - Date.now() / 1000));
  const progress = status.finished ? 'finished' : `${status.accepted_in_round} of ${status.needed_in_round} accepted · closes in ≤ ${left} s`;
  $('kpi-progress').textContent = progress;
  // Contributors with an update in this round or the last one (the dashboard's list is the newest 200).
  const active = new Set(updates.updates.filter((u) => u.round >= status.round - 1).map((u) => u.address || u.client)).size;
  $('kpi-active').textContent = active;
  $('kpi-height').textContent = info.height;
  $('kpi-supply').textContent = formatAlc(info.supply);
  $('kpi-chain').innerHTML = chain.ok ? '<span class="ok">verified ✓</span>' : `<span class="bad">REJECTED: ${esc(chain.violation.code)}</span>`;

  const rel = releases.latest;
  if (rel) {
    const kind = rel.format === 'hf' ? 'Hugging Face GPT-2 folder' : 'Ailo safetensors + manifest';
    $('release').innerHTML = `<a id="release-link" href="${esc(rel.url)}export.json">model version ${esc(rel.version)}</a> ` +
      `(${esc(rel.preset)}, ${esc(kind)}): ${rel.files.map((f) => `<a href="${esc(f.url)}">${esc(f.name)}</a>`).join(' · ')}`;
  }

  const points = status.history.filter((h) => typeof h.val_loss === 'number').map((h) => ({ x: h.version, y: h.val_loss }));
  $('loss-plot').innerHTML = lossPlot(points);

  // Contributors and rewards from the verified chain: REGISTER names, MINT_* amounts.
  const people = new Map();
  const kv = await KV.open('ailo-chain-dashboard', ['blocks']);
  const blocks = (await kv.getAll('blocks')).sort((a, b) => a.height - b.height);
  kv.close();
  for (const b of blocks) {
    for (const tx of b.txs) {
      if (tx.type === 'REGISTER') people.set(tx.address, { ...(people.get(tx.address) || { rewards: 0, mints: 0 }), username: tx.username });
      if (tx.type === 'MINT_TRAINING' || tx.type === 'MINT_INFERENCE') {
        const p = people.get(tx.to) || { rewards: 0, mints: 0 };
        people.set(tx.to, { ...p, rewards: p.rewards + tx.amount, mints: p.mints + 1 });
      }
    }
  }
  const accepted = new Map();
  for (const u of updates.updates) if (u.status === 'accepted' && u.address) accepted.set(u.address, (accepted.get(u.address) || 0) + 1);
  const rows = [...people.entries()].sort((a, b) => b[1].rewards - a[1].rewards);
  const balances = chain.state ? chain.state.spendable : new Map();
  $('contributors').querySelector('tbody').innerHTML = rows.map(([addr, p]) =>
    `<tr><td>${esc(p.username || '')}</td><td class="mono" title="${esc(addr)}">${esc(short(addr))}</td><td>${accepted.get(addr) || 0}</td>` +
    `<td>${formatAlc(p.rewards)}</td><td>${formatAlc((balances.get ? balances.get(addr) : 0) || 0)}</td></tr>`).join('') ||
    '<tr><td colspan="5" class="muted">nobody yet</td></tr>';

  // Per-wallet record of accepted/refused work (GET /v1/status → reputation); refusals in a row
  // make a wallet wait before its next update is looked at.
  const reputation = status.reputation || [];
  $('reputation').querySelector('tbody').innerHTML = reputation.map((r) =>
    `<tr><td>${esc(r.username || '')}</td><td class="mono" title="${esc(r.address)}">${esc(short(r.address))}</td><td>${r.accepted}</td>` +
    `<td class="${r.refused ? 'bad' : ''}">${r.refused}</td><td>${r.streak}</td><td>${r.cooldown_s ? `${r.cooldown_s} s` : '—'}</td>` +
    `<td>${esc(Object.entries(r.reasons || {}).map(([k, v]) => `${k} ×${v}`).join(', '))}</td></tr>`).join('') ||
    '<tr><td colspan="7" class="muted">no signed updates yet</td></tr>';

  $('updates').querySelector('tbody').innerHTML = updates.updates.slice().reverse().map((u) =>
    `<tr><td>${u.id}</td><td>${u.round}</td><td>${esc(u.client)}</td><td>${esc(u.device || '')}</td><td>${u.n_samples}</td><td>${Number(u.train_loss).toFixed(4)}</td>` +
    `<td class="${u.status === 'accepted' ? 'ok' : 'bad'}">${esc(u.status)}</td><td>${esc(u.reason || '')}${u.detail ? ` <span class="muted">${esc(u.detail)}</span>` : ''}</td></tr>`).join('') ||
    '<tr><td colspan="8" class="muted">no updates yet</td></tr>';

  const list = rooms && (rooms.rooms || rooms);
  $('rooms').innerHTML = roomsTable(list);
  state.roomNodes = roomNodes(list);
  const events = roomEvents(list);
  $('rooms').innerHTML += roomChecksTable(list);
  $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  Object.assign(state, { status, progress, active, release: rel, reputation, updates: updates.updates, info, chain: { ok: chain.ok, height: chain.height, violation: chain.violation || null },
    contributors: rows.map(([address, p]) => ({ address, ...p })), points, roomEvents: events });
}

async function main() {
  try {
    await render();
  } catch (e) {
    state.errors.push(String(e.message || e));
    $('updated').textContent = `error: ${e.message}`;
  }
  state.ready = true;
  setInterval(() => render().catch((e) => state.errors.push(String(e.message || e))), 10000);
}

main();
