"""Chunk mirrors with real processes: a coordinator listing a dead mirror and an nginx mirror
(Debian nginx serving a folder kept by `ailo mirror sync`), and native workers.

Round 1: every chunk comes from nginx; the coordinator serves 0 chunk bytes. Round 2: the
mirror lies (a corrupted file, a truncated one, a padded one, a missing one): the worker detects each,
fetches exactly those chunks from the coordinator and trains on the right weights; a
second `ailo mirror sync` finds and repairs the damage.
"""
import hashlib
import subprocess
import sys

import httpx
import pytest

from ailo.chunks import Manifest
from tests.procs import ROOT, ailo, free_port, stop, wait_healthy
from tests.servers import NGINX, nginx_mirror

pytestmark = [pytest.mark.slow, pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make setup)")]


def sync(url: str, out) -> str:
    r = subprocess.run([sys.executable, "-m", "ailo.cli.main", "mirror", "sync", "--coordinator", url,
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def run_worker(url: str, tmp_path, name: str) -> str:
    log = tmp_path / f"{name}.log"
    w = ailo("worker", "--coordinator", url, "--client-id", name, "--cache", str(tmp_path / f"cache-{name}"),
             "--rounds", "1", "--quiet", log=log)
    try:
        assert w.wait(timeout=300) == 0, log.read_text()
    finally:
        stop(w)
    return log.read_text()


def counters(url: str) -> dict:
    return httpx.get(f"{url}/v1/status").json()["counters"]


def test_round_from_nginx_mirror_and_lying_mirror_recovered(tmp_path):
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dead_mirror = f"http://127.0.0.1:{free_port()}"   # nobody listens: costs a refused connection
    with nginx_mirror(mirror_dir, tmp_path / "nginx") as (mirror_url, nginx_prefix):
        coord = ailo("coordinator", "--state", str(tmp_path / "state"), "--port", str(port), "--open",
                     "--rounds", "2", "--min-updates", "1", "--local-steps", "2", "--batch-size", "2",
                     "--mirror", dead_mirror, "--mirror", mirror_url + "/", log=tmp_path / "coord.log")
        try:
            wait_healthy(url, coord)
            manifest = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
            assert manifest.mirrors == [dead_mirror, mirror_url] and manifest.version == 0
            out = sync(url, mirror_dir)
            assert f"{len(manifest.chunks)} chunks downloaded" in out
            base = counters(url).get("chunk_bytes_served", 0)  # the sync itself used the coordinator

            # Round 1: every chunk from nginx, none from the coordinator.
            log = run_worker(url, tmp_path, "w1")
            refusals = [line for line in log.splitlines() if "mirror refused" in line]
            assert len(refusals) == 1 and f"{dead_mirror}: unreachable" in refusals[0], log
            assert httpx.get(f"{url}/v1/status").json()["version"] == 1
            assert counters(url).get("chunk_bytes_served", 0) - base == 0
            mirrored = sum(c.size for c in manifest.chunks)  # what the worker reports (X-Ailo-Mirror-Bytes)
            metrics = dict(m.split(" ") for m in httpx.get(f"{url}/metrics").text.splitlines() if m.startswith("ailo_chunk"))
            assert float(metrics["ailo_chunk_bytes_mirrors_total"]) == mirrored, metrics
            access = (nginx_prefix / "access.log").read_text()
            for c in manifest.chunks:
                assert f"GET /{c.sha256} HTTP/1.1\" 200 {c.size}" in access

            # Round 2: the mirror holds version 1, then three of its files go bad.
            manifest1 = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
            sync(url, mirror_dir)
            before = counters(url).get("chunk_bytes_served", 0)
            corrupt, short, gone, padded = manifest1.chunks[:4]
            data = bytearray((mirror_dir / corrupt.sha256).read_bytes())
            data[len(data) // 2] ^= 0xFF                          # same size, wrong hash
            (mirror_dir / corrupt.sha256).write_bytes(bytes(data))
            (mirror_dir / short.sha256).write_bytes((mirror_dir / short.sha256).read_bytes()[:-10])
            (mirror_dir / gone.sha256).unlink()
            with open(mirror_dir / padded.sha256, "ab") as f:                   # longer than the manifest says
                f.write(b"\0" * 100_000)

            log = run_worker(url, tmp_path, "w2")
            assert f"{mirror_url}/{corrupt.sha256}: sha256 mismatch" in log
            assert f"{mirror_url}/{short.sha256}: {short.size - 10} bytes" in log
            assert f"{mirror_url}/{gone.sha256}: HTTP 404" in log
            assert f"{mirror_url}/{padded.sha256}: more than the manifest's {padded.size} bytes" in log
            status = httpx.get(f"{url}/v1/status").json()
            assert status["version"] == 2                          # trained on the right weights, accepted
            served = counters(url).get("chunk_bytes_served", 0) - before
            assert served == corrupt.size + short.size + gone.size + padded.size  # only the four bad chunks

            # `ailo mirror sync` re-hashes every file: damage is found and repaired.
            manifest2 = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
            assert "0 damaged" in sync(url, mirror_dir)
            bad = manifest2.chunks[4]
            data = bytearray((mirror_dir / bad.sha256).read_bytes())
            data[0] ^= 0x01
            (mirror_dir / bad.sha256).write_bytes(bytes(data))
            out = sync(url, mirror_dir)
            assert "0 chunks downloaded, 1 damaged files replaced" in out
            assert hashlib.sha256((mirror_dir / bad.sha256).read_bytes()).hexdigest() == bad.sha256
        finally:
            stop(coord)


def test_compact_bf16_downloads_come_from_the_mirror_too(tmp_path):
    """With --compact-downloads the worker loads the bf16 served model: its manifest lists the
    mirrors as well, and `ailo mirror sync` carries its chunks."""
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with nginx_mirror(mirror_dir, tmp_path / "nginx") as (mirror_url, nginx_prefix):
        coord = ailo("coordinator", "--state", str(tmp_path / "state"), "--port", str(port), "--open",
                     "--rounds", "1", "--min-updates", "1", "--local-steps", "2", "--batch-size", "2",
                     "--compact-downloads", "--mirror", mirror_url, log=tmp_path / "coord.log")
        try:
            wait_healthy(url, coord)
            bf16 = Manifest.from_json(httpx.get(f"{url}/v1/model", params={"format": "bf16"}).content)
            assert bf16.mirrors == [mirror_url]
            fp32 = Manifest.from_json(httpx.get(f"{url}/v1/model").content)
            out = sync(url, mirror_dir)
            assert f"{len(fp32.chunks) + len(bf16.chunks)} chunks downloaded" in out
            base = counters(url).get("chunk_bytes_served", 0)
            log = run_worker(url, tmp_path, "wc")
            assert "mirror refused" not in log, log
            assert httpx.get(f"{url}/v1/status").json()["version"] == 1, (tmp_path / "coord.log").read_text()
            assert counters(url).get("chunk_bytes_served", 0) == base
            access = (nginx_prefix / "access.log").read_text()
            assert all(f"GET /{c.sha256} HTTP/1.1\" 200 {c.size}" in access for c in bf16.chunks)
        finally:
            stop(coord)


def test_a_lying_patch_and_a_lying_mirror_cost_bytes_never_a_wrong_weight(tmp_path):
    """Compact downloads attacked over HTTP (issue 25): the int8 patch to v1 that the worker
    fetches has one flipped data byte (a cache or proxy in front of the coordinator that lies:
    it still parses) and the nginx mirror holds one corrupted bf16 chunk of v1. A real
    `ailo worker` holding v0 refuses the patch (a rebuilt chunk misses its sha256), falls back
    to the bf16 chunks, refuses the mirror's bad one, takes exactly that chunk from the
    coordinator, trains on the right weights and is accepted; its cache holds only verified files."""
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    with nginx_mirror(mirror_dir, tmp_path / "nginx") as (mirror_url, _):
        coord = ailo("coordinator", "--state", str(tmp_path / "state"), "--port", str(port), "--open",
                     "--rounds", "2", "--min-updates", "1", "--local-steps", "2", "--batch-size", "2",
                     "--compact-downloads", "--mirror", mirror_url, log=tmp_path / "coord.log")
        try:
            wait_healthy(url, coord)
            sync(url, mirror_dir)
            w = ailo("worker", "--coordinator", url, "--client-id", "pat", "--cache", str(cache), "--rounds", "1",
                     "--quiet", log=tmp_path / "w1.log")
            try:
                assert w.wait(timeout=300) == 0, (tmp_path / "w1.log").read_text()
            finally:
                stop(w)
            assert httpx.get(f"{url}/v1/status").json()["version"] == 1
            sync(url, mirror_dir)
            bf16 = Manifest.from_json(httpx.get(f"{url}/v1/model", params={"format": "bf16"}).content)
            assert bf16.version == 1
            bad = bf16.chunks[1]
            data = bytearray((mirror_dir / bad.sha256).read_bytes())
            data[len(data) // 2] ^= 0x40
            (mirror_dir / bad.sha256).write_bytes(bytes(data))
            patch = tmp_path / "state" / "served" / "patch-v1.safetensors"
            body = bytearray(patch.read_bytes())
            body[-(len(body) // 3)] ^= 0x01             # one int8 step off: the patch still parses
            patch.write_bytes(bytes(body))
            before = counters(url).get("chunk_bytes_served", 0)

            log = run_worker_with_cache(url, tmp_path, "pat", cache)
            assert "patch to v1 refused" in log or "patched chunk" in log, log
            assert "fell back to the bf16 chunks" in log, log
            assert f"{mirror_url}/{bad.sha256}: sha256 mismatch" in log, log
            assert httpx.get(f"{url}/v1/status").json()["version"] == 2, (tmp_path / "coord.log").read_text()
            served = counters(url).get("chunk_bytes_served", 0) - before
            assert served == len(body) + bad.size       # the lying patch, then only the one bad chunk
            for f in (cache / "chunks").iterdir():      # nothing unverified was kept
                if not f.name.startswith("."):
                    assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name, f
        finally:
            stop(coord)


def run_worker_with_cache(url: str, tmp_path, name: str, cache) -> str:
    log = tmp_path / f"{name}-2.log"
    w = ailo("worker", "--coordinator", url, "--client-id", name, "--cache", str(cache), "--rounds", "1", log=log)
    try:
        assert w.wait(timeout=300) == 0, log.read_text()
    finally:
        stop(w)
    return log.read_text()
