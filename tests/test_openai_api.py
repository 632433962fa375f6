"""`ailo api` (issue 31) driven by the official `openai` Python package, in front of a real
`ailo coordinator` (ledger + rooms) and two `ailo node` processes serving an `ailo` GPT room
(GPT-2 BPE tokenizer, so prompts are text): same tokens as `ailo ask` at temperature 0, one
PAY_INFERENCE per request and the nodes paid on the chain, OpenAI-shaped errors (402 for an
unfunded wallet, 404, 503 + Retry-After, 400, 401), stop strings and max_tokens. Then the
coordinator's /metrics after a training round and a room request."""
from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
import torch

from ailo.api.app import build_api_app
from ailo.federation.client.worker import Worker
from ailo.inference.chat import TRANSCRIPT_TEMPLATE
from ailo.inference.loader import save_ailo_checkpoint
from ailo.inference.requester import RoomRequester
from ailo.inference.serving import ThreadedServer
from ailo.ledger.params import FEE, UNIT
from ailo.ledger.service import LedgerService
from ailo.ledger.tx import register_tx
from ailo.model import build_model
from ailo.server.services import coordinator_wallet
from ailo.storage.ledger_store import SQLiteLedgerStore
from ailo.wallet import Wallet
from tests.paid_room import run_cli
from tests.procs import ailo, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow
PROMPT = "To be, or not to be"
N = 12
CHAT = [{"role": "system", "content": "You are a player."}, {"role": "user", "content": "Speak the speech."}]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("openai")
    state, ckpt = base / "state", base / "gpt"
    save_ailo_checkpoint(build_model("ailo-tiny", seed=3).eval(), ckpt)
    wallets = {n: Wallet.from_label(f"openai-{n}") for n in ("asker", "broke", "n0", "n1")}
    keys = {n: w.save(base / f"{n}.json") for n, w in wallets.items()}
    state.mkdir()
    ledger = LedgerService(SQLiteLedgerStore(state / "ledger.db"), coordinator_wallet(state))
    for n, w in wallets.items():
        ledger.register(register_tx(w, f"oa_{n}", ledger.clock()).to_json())
    for k in range(3):  # 3 ALC: every request below costs 0.11 ALC
        ledger.mint_training(wallets["asker"].address, UNIT, f"update:openai-fund-{k}")
    ledger.store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = [ailo("coordinator", "--state", str(state), "--port", str(port), "--min-updates", "1",
                  "--local-steps", "2", "--batch-size", "2", "--seq-len", "32", log=base / "coordinator.log")]
    http = httpx.Client(base_url=url, timeout=60)
    try:
        wait_healthy(url, procs[0], 120)
        token = state / "operator-token"
        for room, slots in (("gpt", 2), ("later", 1)):
            out = run_cli("room", "create", "--room", room, "--slots", str(slots), "--model-dir", str(ckpt),
                          "--coordinator", url, "--operator-token-file", str(token))
            assert out.returncode == 0, out.stderr
        for i in range(2):
            procs.append(ailo("node", "--room", "gpt", "--model-dir", str(ckpt), "--coordinator", url,
                              "--memory", "1GB", "--wallet", str(keys[f"n{i}"]), log=base / f"node{i}.log"))
        api_port = free_port()
        procs.append(ailo("api", "--wallet", str(keys["asker"]), "--coordinator", url, "--port", str(api_port),
                          log=base / "api.log"))
        deadline = time.monotonic() + 120
        while http.get("/v1/rooms/gpt").json()["state"] != "ready":
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in base.glob("*.log")))
            time.sleep(0.2)
        api = f"http://127.0.0.1:{api_port}"
        wait_healthy(api, procs[-1], 60, path="/v1/models")
        client = openai.OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0, timeout=60)
        yield {"url": url, "http": http, "client": client, "wallets": wallets, "keys": keys, "base": base,
               "api": api}
    finally:
        http.close()
        for p in reversed(procs):
            stop(p)


def build_tokenizer():
    from ailo.tokenizer import load_tokenizer
    return load_tokenizer()


def ask(net, prompt: str, n: int = N) -> str:
    out = run_cli("ask", "--room", "gpt", "--coordinator", net["url"], "--wallet", str(net["keys"]["asker"]),
                  "--max-tokens", str(n), prompt)
    assert out.returncode == 0, out.stderr
    return out.stdout[:-1]  # `ailo ask` ends the answer with a newline


def alc(net, name: str) -> int:
    b = net["http"].get(f"/v1/balance/{net['wallets'][name].address}").json()
    return b["spendable"] + b["pending"]


def chain_txs(net, want, timeout: float = 15) -> list[dict]:
    """Sealed transactions, once `want(txs)` holds (blocks are sealed every second or so)."""
    deadline = time.monotonic() + timeout
    while True:
        txs = [tx for b in net["http"].get("/v1/chain").json()["blocks"] for tx in b["txs"]]
        if want(txs) or time.monotonic() > deadline:
            return txs
        time.sleep(0.3)


def test_models_lists_rooms_that_can_serve_now_with_their_price(net):
    models = net["client"].models.list().data
    assert [m.id for m in models] == ["gpt"]  # "later" is still forming
    m = models[0].model_dump()
    assert m["owned_by"] == net["url"].removeprefix("http://") and m["price"] == 2 * 5_000_000
    assert m["chat_template"] == "transcript"


def test_completions_streamed_and_not_give_the_tokens_of_ailo_ask_and_pay_once_each(net):
    client, asker = net["client"], net["wallets"]["asker"].address
    expected = ask(net, PROMPT)
    before = alc(net, "asker")
    raw = client.completions.with_raw_response.create(model="gpt", prompt=PROMPT, max_tokens=N, temperature=0)
    full = raw.parse()
    assert full.choices[0].text == expected and full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == N
    assert full.usage.prompt_tokens == len(build_tokenizer().encode(PROMPT).ids)
    rid, price = raw.headers["x-request-id"], int(raw.headers["x-ailo-price"])
    assert full.id == f"cmpl-{rid}" and price == 2 * 5_000_000 and int(raw.headers["x-ailo-fee"]) == FEE
    chunks = list(client.completions.create(model="gpt", prompt=PROMPT, max_tokens=N, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == N and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert alc(net, "asker") == before - 2 * (price + FEE)  # two requests, two payments

    # On the chain: this request's one PAY_INFERENCE, from the API's wallet, and both nodes paid for it.
    nodes = {net["wallets"]["n0"].address, net["wallets"]["n1"].address}

    def settled(txs):
        return nodes <= {t["to"] for t in txs if t["type"] == "MINT_INFERENCE" and
                         t.get("ref", "").startswith(f"request:{rid}:")}
    txs = chain_txs(net, settled)
    pays = [t for t in txs if t["type"] == "PAY_INFERENCE" and t["request"] == rid]
    assert len(pays) == 1 and pays[0]["from"] == asker and pays[0]["amount"] == price
    assert settled(txs), [t for t in txs if t["type"] == "MINT_INFERENCE"]


def test_chat_goes_through_the_template_and_matches_ailo_ask(net):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), chat_template=TRANSCRIPT_TEMPLATE)
    rendered = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("USER:\nSpeak the speech.\n\nASSISTANT:\n")
    expected = ask(net, rendered)
    client = net["client"]
    full = client.chat.completions.create(model="gpt", messages=CHAT, max_tokens=N, temperature=0)
    assert full.choices[0].message.content == expected and full.choices[0].message.role == "assistant"
    assert full.usage.prompt_tokens == len(build_tokenizer().encode(rendered).ids)
    chunks = list(client.chat.completions.create(model="gpt", messages=CHAT, max_tokens=N, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_end_the_answer_before_them_with_finish_reason_stop(net):
    client = net["client"]
    full = client.completions.create(model="gpt", prompt=PROMPT, max_tokens=N, temperature=0).choices[0].text
    stop = next(full[i:i + 3] for i in range(2, len(full) - 3) if full[i:i + 3].strip())
    cut = full[:full.index(stop)]
    before = alc(net, "asker")
    got = client.completions.create(model="gpt", prompt=PROMPT, max_tokens=N, temperature=0, stop=[stop])
    assert got.choices[0].text == cut and got.choices[0].finish_reason == "stop"
    assert got.usage.completion_tokens < N  # the room stopped generating, it did not run to max_tokens
    chunks = list(client.completions.create(model="gpt", prompt=PROMPT, max_tokens=N, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut and stop not in "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    price = net["http"].get("/v1/rooms/gpt").json()["price"]
    assert alc(net, "asker") == before - 2 * (price + FEE)


def test_openai_shaped_errors(net):
    client = net["client"]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    assert e.value.code == "model_not_found" and e.value.status_code == 404
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model="later", prompt=PROMPT, max_tokens=2)
    assert e.value.status_code == 503 and int(e.value.response.headers["retry-after"]) >= 1
    for bad in ({"n": 2}, {"temperature": 3}, {"max_tokens": 0}, {"stop": ["a"] * 5}, {"logprobs": 2}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="gpt", prompt=PROMPT, **{"max_tokens": 2, **bad})
        assert e.value.status_code == 400 and e.value.type == "invalid_request_error", bad
    r = httpx.post(f"{net['api']}/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "code"}


def test_an_unfunded_wallet_gets_402_insufficient_quota_and_an_api_key_is_enforced(net):
    requester = RoomRequester(net["url"], net["wallets"]["broke"])
    server = ThreadedServer(build_api_app(requester, api_key="s3cret")).start()
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0, timeout=60)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="gpt", messages=CHAT, max_tokens=2)
        assert e.value.status_code == 402 and e.value.code == "insufficient_quota" \
            and e.value.type == "insufficient_quota"
        assert alc(net, "broke") == 0
    finally:
        server.stop()
        requester.close()


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_move_after_a_round_and_a_room_request(net, corpus_dir, tmp_path):
    http = net["http"]
    before = samples(http.get("/metrics").text)
    trainer = Worker(net["url"], "metrics-trainer", corpus_dir, 0, 1, progress=False, cache_dir=tmp_path / "w",
                     wallet=Wallet.from_label("openai-trainer").with_username("oa_trainer"))
    trainer.ensure_registered()
    report = trainer.run_round()
    assert report.response["status"] == "accepted"
    net["client"].completions.create(model="gpt", prompt=PROMPT, max_tokens=2, temperature=0)
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = samples(r.text)

    def moved(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)
    assert moved("ailo_rounds_closed_total") == 1 and moved("ailo_model_version") == 1
    assert moved("ailo_updates_accepted_total") == 1 and moved("ailo_update_validation_seconds_count") == 1
    assert moved("ailo_chunk_bytes_served_total") > 0 and moved("ailo_update_bytes_received_total") > 0
    generate = 'ailo_http_requests_total{method="POST",route="/v1/rooms/{room_id}/generate",status="200"}'
    assert moved(generate) == 1
    assert after['ailo_rooms{state="ready"}'] == 1 and after['ailo_rooms{state="forming"}'] == 1
    assert after['ailo_room_nodes{state="ready"}'] == 2
    assert moved("ailo_ledger_height") >= 1 and after["ailo_ledger_supply_units"] > 0
    labels = " ".join(re.findall(r"\{(.*)\}", r.text))
    secrets = [w.address for w in net["wallets"].values()] + ["oa_", "metrics-trainer", "gpt\""]
    assert not [s for s in secrets if s in labels]
