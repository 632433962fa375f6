// Contributor page panels for a newcomer (issue 30): consent before a large model download,
// readable sample names, a reward shown as pending until its round is paid, and the wallet's passphrase-encrypted backup and restore. `page` is the contributor
// page's context: {$, setText, fail, client, state, getWallet, setWallet, refreshBalance, onWallet}.
import { Wallet } from '../wallet.js';
import { formatAlc } from '../ledger/index.js';

const mb = (n) => `${(n / 1e6).toFixed(2)} MB`;

/** Resolves once the visitor agreed to download the model: at once for a model of at most
 *  `askAbove` bytes or one this browser already agreed to (later versions fetch only changed
 *  chunks or a patch). `onAsk` is called when the question is shown. */
export async function modelConsent(page, askAbove, onAsk) {
  const { $, setText, client, state } = page;
  const manifest = await client.manifest('fp32');
  const size = manifest.chunks.reduce((n, c) => n + c.size, 0);
  const key = `ailo-model-consent:${manifest.preset}`;
  if (size <= askAbove || localStorage.getItem(key)) return;
  state.modelConsent = { asked: true, bytes: size, preset: manifest.preset };
  setText('model-status', `${manifest.preset} version ${manifest.version}: up to ${mb(size)} to download (once; later ` +
    'versions fetch only what changed). Training needs it.', 'muted');
  $('model-download').hidden = false;
  $('model-download').textContent = `Download the model (${mb(size)})`;
  onAsk();
  await new Promise((resolve) => $('model-download').addEventListener('click', resolve, { once: true }));
  $('model-download').hidden = true;
  localStorage.setItem(key, String(Date.now()));
  state.modelConsent.given = true;
}

/** "alls_well_that_ends_well_gut.txt" → "Alls Well That Ends Well". */
export function sampleTitle(name) {
  const stem = name.replace(/\.[a-z0-9]+$/i, '').replace(/(_gut)?(_f)?$/i, '').replace(/[_-]+/g, ' ').trim();
  return stem.replace(/\b\w/g, (c) => c.toUpperCase()) || name;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rewards are minted when a round closes, not when an update is accepted: show the update as
 *  pending with its round's progress (accepted of needed, deadline) until it is paid. */
export async function watchReward(page, reply) {
  const { setText, client, state } = page;
  const rec = { updateId: reply.update_id, round: reply.round, status: 'pending', progress: null, earned: null };
  state.rewards.push(rec);
  const before = state.balance ? state.balance.spendable : 0;
  for (let v = reply; !v.settled; v = await client.verdict(reply.update_id, 0)) {
    if (v.aggregated) {
      setText('reward-status', `Round ${reply.round} closed; its rewards are being minted…`, 'muted');
    } else if (v.needed_in_round) {
      rec.progress = { accepted: v.accepted_in_round, needed: v.needed_in_round, deadline: v.round_deadline };
      const left = Math.max(0, Math.round(v.round_deadline - Date.now() / 1000));
      setText('reward-status', `Reward pending: paid when round ${reply.round} closes — ${v.accepted_in_round} of ` +
        `${v.needed_in_round} updates accepted so far, or at its deadline in ${left} s.`, 'muted');
    }
    await sleep(2000);
  }
  const b = await page.refreshBalance();
  rec.status = 'paid';
  rec.earned = b ? b.spendable - before : null;
  setText('reward-status', `Paid: round ${reply.round} closed and your reward ${rec.earned !== null ? `of ${formatAlc(rec.earned)} ` : ''}` +
    'is on the chain.', 'ok');
}

export async function backupWallet(page) {
  const { $, setText, fail } = page;
  try {
    const wallet = page.getWallet();
    if (!wallet) throw new Error('there is no wallet in this browser yet');
    const backup = await wallet.backup($('backup-pass').value);
    const blob = new Blob([JSON.stringify(backup, null, 1)], { type: 'application/json' });
    const a = Object.assign(document.createElement('a'), { href: URL.createObjectURL(blob),
      download: `ailo-wallet-${wallet.username || wallet.address.slice(0, 12)}.json` });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setText('backup-status', 'Backup downloaded. Keep it and its passphrase somewhere safe.', 'ok');
  } catch (e) {
    setText('backup-status', `Backup failed: ${fail('backup', e)}`, 'bad');
  }
}

export async function restoreWallet(page) {
  const { $, setText, fail, client } = page;
  try {
    const file = $('restore-file').files[0];
    if (!file) throw new Error('choose a backup file first');
    let backup;
    try { backup = JSON.parse(await file.text()); } catch { throw new Error('that file is not JSON'); }
    const restored = await Wallet.restore(backup, $('restore-pass').value);
    const b = await client.balance(restored.address);
    restored.username = b.username || restored.username;
    restored.registered = !!b.username;
    await restored.save();
    await page.setWallet(restored);
    setText('backup-status', `Restored ${restored.username ? `“${restored.username}”` : 'the wallet'} (${restored.address.slice(0, 16)}…).`, 'ok');
  } catch (e) {
    setText('backup-status', `Restore failed: ${fail('restore', e)}`, 'bad');
  }
}
