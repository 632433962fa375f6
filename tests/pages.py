"""The contributor page driven by Playwright: open it until ready, register its in-page wallet,
and a coordinator process for a page to talk to (the steps every browser test repeats)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.procs import ailo, free_port, stop, wait_healthy

READY = "window.ailoPage && window.ailoPage.ready"
REGISTERED = "window.ailoPage.wallet && window.ailoPage.wallet.registered"


def open_page(ctx, url: str, errors: list[str] | None = None, query: str = "?backend=wasm"):
    """A new tab on the contributor page, ready; page errors are appended to `errors`.
    Returns (page, errors)."""
    errors = [] if errors is None else errors
    page = ctx.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/{query}")
    page.wait_for_function(READY, timeout=120_000)
    return page, errors


def register(page, username: str) -> str:
    """Create and register the in-page wallet (a REGISTER signed in the page); its address."""
    page.fill("#username", username)
    page.click("#register")
    page.wait_for_function(REGISTERED, timeout=60_000)
    return page.evaluate("window.ailoPage.wallet.address")


@contextmanager
def coordinator_process(state: Path, *flags: str, timeout: float = 120) -> Iterator[str]:
    """`ailo coordinator` on a free port with these flags; yields its URL, prints its log tail."""
    port = free_port()
    log = state / "coordinator.log"
    proc = ailo("coordinator", "--state", str(state), "--port", str(port), *flags, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=timeout)
        yield url
    finally:
        stop(proc)
        print(log.read_text()[-3000:])
