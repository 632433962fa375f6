"""The in-browser ledger (ailo/web/src/ledger/, ed25519.js, wallet.js) against the Python
reference: every JSON vector of tests/vectors/ledger/ gives the same verdict, first violation
and balances in headless Chromium, on both signature paths (WebCrypto Ed25519 and
@noble/ed25519); wallets derived from the vector seeds give the same addresses and byte-equal
signatures; signatures made in the page verify with PyNaCl and the reverse.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ailo.federation.core.signing import update_message
from ailo.ledger import verify_chain
from ailo.ledger.tx import Transaction
from ailo.wallet import Wallet, verify_signature
from ailo.testing.harness import LoopbackServer, chromium, ensure_built, open_harness

pytestmark = pytest.mark.slow

VECTORS = Path(__file__).resolve().parent / "vectors" / "ledger"
CHAIN_VECTORS = sorted(p for p in VECTORS.glob("*.json") if p.stem != "primitives")


@pytest.fixture(scope="module")
def page():
    ensure_built()
    routes = {f"/vectors/{p.name}": p.read_bytes() for p in VECTORS.glob("*.json")}
    server = LoopbackServer(routes=routes)
    with chromium() as ctx:
        yield open_harness(ctx, server)
    server.close()


VERIFY_ALL_JS = """async ([names, noble]) => {
  ailo.forceNoble(noble);
  const out = {};
  for (const name of names) {
    const v = ailo.parseJson(await (await fetch('/vectors/' + name)).text());
    const r = await ailo.verifyChain(v.chain, { now: v.now_ms });
    const balances = {};
    if (r.state) for (const a of Object.keys(v.expect.balances || {})) balances[a] = r.state.balance(a);
    out[name] = { ok: r.ok, height: r.height, blocks: r.blocks, tx_count: r.tx_count, minted: r.minted,
                  burned: r.burned, supply: r.supply, violation: r.violation || null, balances };
  }
  ailo.forceNoble(false);
  return { out, webcrypto: await ailo.hasWebCryptoEd25519() };
}"""


@pytest.mark.parametrize("noble", [False, True], ids=["webcrypto", "noble"])
def test_every_vector_gives_the_python_verdict(page, noble):
    got = page.evaluate(VERIFY_ALL_JS, [[p.name for p in CHAIN_VECTORS], noble])
    if not noble:
        assert got["webcrypto"], "this Chromium should have WebCrypto Ed25519"
    assert len(CHAIN_VECTORS) >= 20
    for path in CHAIN_VECTORS:
        vector = json.loads(path.read_text())
        expect, js = vector["expect"], got["out"][path.name]
        py = verify_chain(vector["chain"], now=vector["now_ms"]).to_json()
        assert js["ok"] is expect["ok"] is py["ok"], path.stem
        if expect["ok"]:
            for key in ("height", "blocks", "tx_count", "minted", "burned", "supply"):
                assert js[key] == expect[key] == py[key], (path.stem, key)
            for address, bal in expect["balances"].items():
                assert js["balances"][address] == {"spendable": bal["spendable"], "pending": bal["pending"]}, path.stem
        else:
            v = js["violation"]
            assert (v["block"], v["tx"], v["code"]) == (expect["block"], expect["tx"], expect["code"]), path.stem
            # Same totals after the last fully verified block as the Python report.
            assert (js["height"], js["blocks"], js["minted"]) == (py["height"], py["blocks"], py["minted"]), path.stem


def test_edits_to_a_valid_chain_are_reported(page):
    """Beyond the vectors: flip each field of a valid chain's transactions and headers in
    the page; the JS verifier must reject every edit exactly where the Python one does."""
    vector = json.loads((VECTORS / "valid_basic.json").read_text())
    edits = []
    for i, block in enumerate(vector["chain"]):
        for field in ("timestamp", "merkle_root", "prev"):
            edits.append((i, None, field))
        for j, tx in enumerate(block["txs"]):
            for field in tx:
                if field not in ("type",):
                    edits.append((i, j, field))
    results = page.evaluate("""async ([text, edits, now]) => {
      const out = [];
      for (const [i, j, field] of edits) {
        const chain = ailo.parseJson(text).chain;
        const obj = j === null ? chain[i] : chain[i].txs[j];
        const v = obj[field];
        obj[field] = typeof v === 'number' ? v + 1 : (v[0] === 'a' ? 'b' : 'a') + v.slice(1);
        const r = await ailo.verifyChain(chain, { now });
        out.push(r.ok ? null : [r.violation.block, r.violation.tx, r.violation.code]);
      }
      return out;
    }""", [json.dumps(vector), edits, vector["now_ms"]])
    for (i, j, field), js in zip(edits, results):
        chain = json.loads(json.dumps(vector["chain"]))
        obj = chain[i] if j is None else chain[i]["txs"][j]
        v = obj[field]
        obj[field] = v + 1 if isinstance(v, int) else ("b" if v[0] == "a" else "a") + v[1:]
        py = verify_chain(chain, now=vector["now_ms"])
        assert js is not None, (i, j, field)
        assert js == [py.violation.block, py.violation.tx, py.violation.code], (i, j, field)


def test_primitives_and_deterministic_signatures(page):
    p = json.loads((VECTORS / "primitives.json").read_text())
    got = page.evaluate("""async (p) => {
      const out = { wallets: [], bad: p.bad_addresses.map((a) => ailo.isValidAddress(a)) };
      for (const useWebCrypto of [true, false]) {
        for (const w of p.wallets) {
          const key = await ailo.keyFromSeed(ailo.fromHex(w.seed), { useWebCrypto });
          const wallet = new ailo.Wallet(key);
          out.wallets.push({ kind: key.kind, address: wallet.address, pub: ailo.toHex(key.publicKey) });
        }
        const alice = new ailo.Wallet(await ailo.keyFromSeed(ailo.fromHex(p.wallets[0].seed), { useWebCrypto }));
        const { signature, ...body } = p.transfer.tx;
        const signed = await ailo.signTx(body, alice);
        out['sig_' + (useWebCrypto ? 'webcrypto' : 'noble')] = signed.signature;
      }
      const tx = ailo.Transaction.fromJson(p.transfer.tx);
      out.canonical = tx.bodyJson;
      out.txid = tx.txid;
      out.leaf = ailo.toHex(tx.leaf());
      out.roots = p.merkle.map((c) => ailo.merkleRoot(c.leaves.map(ailo.fromHex)));
      return out;
    }""", p)
    for k, w in enumerate(got["wallets"]):
        ref = p["wallets"][k % len(p["wallets"])]
        assert (w["address"], w["pub"]) == (ref["address"], ref["public_key"])
    assert {w["kind"] for w in got["wallets"]} == {"webcrypto", "noble"}
    assert got["bad"] == [False] * len(p["bad_addresses"])
    assert got["sig_webcrypto"] == got["sig_noble"] == p["transfer"]["tx"]["signature"]
    assert got["canonical"] == p["transfer"]["canonical_body"]
    assert got["txid"] == p["transfer"]["txid"] and got["leaf"] == p["transfer"]["merkle_leaf"]
    assert got["roots"] == [c["root"] for c in p["merkle"]]


def test_page_signatures_verify_in_python_and_back(page):
    py_wallet = Wallet.from_label("browser-test/python")
    msg = update_message(3, 2, "ab" * 32, 16, 1234567, 1700000000123, "browser-1")
    py_sig = py_wallet.sign(msg)
    got = page.evaluate("""async ([pyAddress, msg, pySig]) => {
      const out = {};
      for (const noble of [false, true]) {
        ailo.forceNoble(noble);
        const w = await ailo.Wallet.generate();
        const reg = await w.registerTx('page_' + (noble ? 'noble' : 'webcrypto'), 1700000000000);
        out[noble ? 'noble' : 'webcrypto'] = {
          kind: w.kind, address: w.address, register: reg,
          update: await w.signHex(ailo.updateMessage(3, 2, 'ab'.repeat(32), 16, 1234567, 1700000000123, 'browser-1')),
          pyOk: await ailo.ed25519Verify(pyAddress, msg, pySig),
          pyTampered: await ailo.ed25519Verify(pyAddress, msg + ' ', pySig),
        };
      }
      ailo.forceNoble(false);
      return out;
    }""", [py_wallet.address, msg.decode(), py_sig])
    for kind, r in got.items():
        assert r["kind"] == kind
        tx = Transaction.from_json(r["register"])
        assert tx.signature_valid(coordinator=py_wallet.address)  # REGISTER is signed by its own address
        assert verify_signature(r["address"], msg, r["update"])
        assert not verify_signature(r["address"], msg + b"x", r["update"])
        assert r["pyOk"] is True and r["pyTampered"] is False
