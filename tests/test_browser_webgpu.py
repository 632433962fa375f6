"""The contributor page on a browser that has WebGPU picks it by default and trains a round.

Debian's Chromium with `--enable-unsafe-webgpu --use-webgpu-adapter=swiftshader` exposes a
WebGPU adapter (SwiftShader's Vulkan on the CPU) even headless; the page, opened with no
`?backend=`, selects WebGPU, names the adapter in its header, trains one round against a real
coordinator on it, and the update is accepted; the dashboard lists the update with the device
that trained it. (A Chromium with a real GPU is not available to CI; tests/test_webgpu.py runs
the same modules through the Node runner on Dawn.)
"""
from __future__ import annotations

import httpx
import pytest

from ailo.testing.harness import chromium, ensure_built
from tests.pages import coordinator_process, open_page, register

pytestmark = pytest.mark.slow

WEBGPU_FLAGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    ensure_built()
    with coordinator_process(tmp_path_factory.mktemp("coord"), "--min-updates", "1", "--local-steps", "2",
                             "--batch-size", "2", "--seq-len", "32", "--chunks", "4", "--round-seconds", "600") as url:
        yield url


def test_page_picks_webgpu_by_default_and_trains_a_round(coordinator):
    url = coordinator
    with chromium(extra_args=WEBGPU_FLAGS) as ctx:
        page, errors = open_page(ctx, url, query="")  # no ?backend=: the page chooses
        assert page.evaluate("window.ailoPage.backend") == "webgpu"
        device = page.evaluate("window.ailoPage.device")
        assert device.startswith("webgpu - google swiftshader"), device
        assert "webgpu on google swiftshader" in page.inner_text("#backend"), page.inner_text("#backend")
        register(page, "gpu_page")
        page.click("#train")
        page.wait_for_function("window.ailoPage.rounds.length >= 1", timeout=600_000)
        r = page.evaluate("window.ailoPage.rounds[0]")
        assert "error" not in r, (r, page.evaluate("window.ailoPage.errors"))
        assert r["backend"] == "webgpu" and r["reply"]["status"] == "accepted", r
        assert not errors, errors
        ups = httpx.get(f"{url}/v1/dashboard/updates").json()["updates"]
        assert [u["device"] for u in ups if u["client"] == "gpu_page"] == [device]
        dash = ctx.new_page()
        dash.goto(f"{url}/dashboard")
        dash.wait_for_function("window.ailoDashboard && window.ailoDashboard.updates && window.ailoDashboard.updates.length > 0",
                               timeout=120_000)
        assert device in dash.inner_text("#updates")
