"""The page's back-off (ailo/web/src/backoff.js, api.js, upload.js), run by Node: a real
coordinator restarted while a call waits; re-signing on a consumed nonce; 202 → polled verdict."""
import json
import signal
import subprocess
import time

import pytest

from tests.procs import ROOT, ailo, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow  # Node.js clients against `ailo coordinator` processes


SRC = ROOT / "ailo" / "web" / "src"


def _node(script: str, tmp_path, name="t.mjs") -> subprocess.Popen:
    path = tmp_path / name
    path.write_text(script)
    return subprocess.Popen(["node", "--no-warnings", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_delays_match_the_python_policy(tmp_path):
    out = _node(f"""
import {{ delaySeconds, DEFAULT_POLICY, isTransientStatus }} from '{SRC}/backoff.js';
const seq = [0, 1, 2, 3, 4, 5, 6, 10].map((n) => [delaySeconds(n, null, DEFAULT_POLICY, () => 0), delaySeconds(n, null, DEFAULT_POLICY, () => 1)]);
console.log(JSON.stringify({{ seq, ra: delaySeconds(0, 7), cap: delaySeconds(0, 500),
  transient: [500, 503, 429, 408, 400, 404, 409, 422].map(isTransientStatus) }}));
""", tmp_path).communicate(timeout=60)[0]
    got = json.loads(out)
    from ailo.backoff import DEFAULT, is_transient
    for n, (hi, lo) in zip([0, 1, 2, 3, 4, 5, 6, 10], got["seq"]):
        assert hi == pytest.approx(min(DEFAULT.cap, DEFAULT.base * 2 ** n))
        assert lo == pytest.approx(hi * (1 - DEFAULT.jitter))
    assert 7 <= got["ra"] <= DEFAULT.cap and got["cap"] == pytest.approx(DEFAULT.cap)
    assert got["transient"] == [is_transient(s) for s in (500, 503, 429, 408, 400, 404, 409, 422)]


def test_a_page_call_rides_out_a_coordinator_restart(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("coordinator", "--state", str(tmp_path / "c"), "--port", str(port), "--open", "--min-updates", "2")
    coord = ailo(*args, log=tmp_path / "c.log")
    try:
        wait_healthy(url, coord)
        stop(coord, signal.SIGKILL)                          # down when the page asks
        page = _node(f"""
import {{ CoordinatorClient }} from '{SRC}/api.js';
const c = new CoordinatorClient('{url}', {{ policy: {{ baseS: 0.2, factor: 2, capS: 1, jitter: 0.5, maxElapsedS: 120, maxAttempts: Infinity }} }});
const s = await c.status();
const m = await c.manifest();
console.log(JSON.stringify({{ round: s.round, version: m.version, retries: c.retries }}));
""", tmp_path)
        time.sleep(3)
        assert page.poll() is None                            # still retrying, not failed
        coord = ailo(*args, log=tmp_path / "c.log")
        out, err = page.communicate(timeout=120)
        assert page.returncode == 0, err
        got = json.loads(out)
        assert got["round"] == 1 and got["version"] == 0 and got["retries"] >= 2
    finally:
        stop(coord)


def test_upload_is_re_signed_on_replay_and_a_queued_verdict_is_polled(tmp_path):
    out, err = _node(f"""
import {{ HttpError }} from '{SRC}/api.js';
import {{ submitSigned }} from '{SRC}/upload.js';
let nonce = 100;
const wallet = {{ address: 'ailo1x', nextNonce: async () => ++nonce, signHex: async (m) => 'sig:' + m }};
const sent = [];
const replayOnce = {{
  submitUpdate: async (body, meta) => {{ sent.push(meta.nonce);
    if (sent.length === 1) throw new HttpError(409, 'nonce 101 was already used', 'replay');
    return {{ status: 'accepted', update_id: 7 }}; }},
}};
const a = await submitSigned(replayOnce, wallet, new Uint8Array(4), 'ab', {{ round: 1, baseVersion: 0, nSamples: 8 }});
let polls = 0;
const queued = {{
  submitUpdate: async () => ({{ status: 'pending', update_id: 9 }}),
  request: async (path) => (++polls < 3 ? {{ status: 'validating' }} : {{ status: 'accepted', update_id: 9, path }}),
}};
const b = await submitSigned(queued, wallet, new Uint8Array(4), 'ab', {{ round: 1, baseVersion: 0, nSamples: 8 }}, {{ pollS: 0.01 }});
let refused = null;
try {{ await submitSigned({{ submitUpdate: async () => {{ throw new HttpError(409, 'stale', 'stale_round'); }} }}, wallet,
  new Uint8Array(4), 'ab', {{ round: 1, baseVersion: 0, nSamples: 8 }}); }} catch (e) {{ refused = e.reason; }}
console.log(JSON.stringify({{ a, sent, b, polls, refused }}));
""", tmp_path).communicate(timeout=60)
    got = json.loads(out)
    assert got["a"]["status"] == "accepted" and got["a"]["resigned"] == 1 and got["sent"] == [101, 102]
    assert got["b"]["status"] == "accepted" and got["b"]["path"] == "/v1/updates/9" and got["polls"] == 3
    assert got["refused"] == "stale_round"                    # a verdict is not retried
