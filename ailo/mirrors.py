"""Chunk mirrors: any static HTTP server can serve the model's chunks, because they are
immutable and named by their sha256.

A mirror is a flat folder of chunk files (`<base>/<sha256>`) kept in step by `sync_mirror`
(`ailo mirror sync`) and served by e.g. nginx (`nginx_conf`). The coordinator lists mirror
base URLs in the manifest it serves; clients try them first and fall back to the
coordinator. Mirrors are not trusted: every byte is checked against the manifest (size cap
while streaming, then sha256), so a lying or broken mirror costs one retry elsewhere, never
a wrong weight.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ailo.chunks import ChunkError, ChunkIntegrityError, ChunkSource, Manifest
from ailo.storage.atomic import atomic_write


class MirrorError(ChunkError):
    """A mirror did not deliver a chunk (HTTP error, oversize, wrong hash)."""


def valid_mirror_url(url: str) -> str:
    """Normalise a mirror base URL (http/https, no trailing slash); raises ValueError."""
    u = httpx.URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        raise ValueError(f"mirror {url!r} must be an http:// or https:// URL")
    return str(u).rstrip("/")


def with_mirrors(manifest_json: str, mirrors: list[str] | tuple[str, ...]) -> str:
    """A served manifest (any format) with the mirror list added; the stored text stays as is."""
    d = json.loads(manifest_json)
    d["mirrors"] = list(mirrors)
    return json.dumps(d, sort_keys=True)


def fetch_verified(client: httpx.Client, url: str, sha256: str, size: int) -> bytes:
    """GET `url`, refusing more than `size` bytes as they arrive, then check the sha256."""
    with client.stream("GET", url) as r:
        if r.status_code != 200:
            raise MirrorError(f"GET {url}: HTTP {r.status_code}")
        parts, got = [], 0
        for piece in r.iter_bytes(1 << 16):
            got += len(piece)
            if got > size:
                raise ChunkIntegrityError(f"{url}: more than the manifest's {size} bytes")
            parts.append(piece)
    data = b"".join(parts)
    if len(data) != size:
        raise ChunkIntegrityError(f"{url}: {len(data)} bytes, expected {size}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ChunkIntegrityError(f"{url}: sha256 mismatch")
    return data


@dataclass
class MirrorStats:
    bytes_by_origin: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)   # one line per refused mirror answer


@dataclass
class MirroredSource:
    """Tries each mirror in order, verified; falls back to `fallback` (the coordinator).

    Errors from the fallback propagate unchanged, so the caller's retry policy for the
    coordinator (and ChunkStore's own verification) still apply.
    """
    manifest: Manifest
    mirrors: list[str]
    fallback: ChunkSource
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)))
    stats: MirrorStats = field(default_factory=MirrorStats)
    progress: Any = None  # a tqdm bar (or anything with .update(n)) for mirror bytes

    def __post_init__(self) -> None:
        self._sizes = {c.sha256: c.size for c in self.manifest.chunks}
        self._down: set[str] = set()

    def _count(self, origin: str, n: int) -> None:
        self.stats.bytes_by_origin[origin] = self.stats.bytes_by_origin.get(origin, 0) + n

    def fetch(self, sha256: str) -> bytes:
        size = self._sizes.get(sha256)
        if size is not None:
            for base in self.mirrors:
                if base in self._down:
                    continue
                try:
                    data = fetch_verified(self.client, f"{base}/{sha256}", sha256, size)
                except httpx.TransportError as exc:  # unreachable: skip it for the rest of this load
                    self._down.add(base)
                    self.stats.failures.append(f"{base}: unreachable ({exc!r}); skipped from now on")
                    continue
                except (httpx.HTTPError, ChunkError) as exc:  # a bad answer for this chunk only
                    self.stats.failures.append(f"{base}: {exc}")
                    continue
                self._count(base, len(data))
                if self.progress is not None:
                    self.progress.update(len(data))
                return data
        data = self.fallback.fetch(sha256)
        self._count("coordinator", len(data))
        return data


# -- keeping a mirror folder in step ------------------------------------------------------------
@dataclass
class SyncReport:
    version: int
    downloaded: list[str] = field(default_factory=list)   # chunk files fetched this time
    repaired: list[str] = field(default_factory=list)     # damaged files found and replaced
    kept: int = 0
    pruned: list[str] = field(default_factory=list)
    bytes: int = 0


def _file_ok(path: Path, sha256: str, size: int, verify: bool) -> bool:
    if not path.is_file() or path.stat().st_size != size:
        return False
    if not verify:
        return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest() == sha256



def sync_mirror(coordinator: str, out: Path, *, verify: bool = True, prune: bool = False,
                client: httpx.Client | None = None) -> SyncReport:
    """Make `out` hold every chunk of the coordinator's current manifest (and of its compact
    bf16 manifest when it serves one, and every piece of the room checkpoints it serves to
    browser nodes), each verified.

    Existing files are re-hashed (`verify`) and replaced when damaged; files are written
    atomically, so nginx never serves half a chunk. `prune` drops files the current
    manifest does not name (clients on an older version then fall back to the coordinator).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    own = client is None
    client = client or httpx.Client(base_url=coordinator.rstrip("/"), timeout=120.0)
    try:
        r = client.get("/v1/model")
        if r.status_code != 200:
            raise MirrorError(f"GET {coordinator}/v1/model: HTTP {r.status_code}")
        manifest = Manifest.from_json(r.content)
        report = SyncReport(manifest.version)
        chunks = list(manifest.chunks)
        compact = client.get("/v1/model", params={"format": "bf16"})  # served only with --compact-downloads
        if compact.status_code == 200:
            chunks += Manifest.from_json(compact.content).chunks
        files = [(c.sha256, c.size, f"/v1/chunks/{c.sha256}") for c in chunks] + room_pieces(client)
        for sha256, size, url in files:
            path = out / sha256
            if _file_ok(path, sha256, size, verify):
                report.kept += 1
                continue
            damaged = path.exists()
            data = fetch_verified(client, url, sha256, size)
            atomic_write(path, data, mode=0o644)
            report.bytes += len(data)
            (report.repaired if damaged else report.downloaded).append(sha256)
        atomic_write(out / "manifest.json", r.content, mode=0o644)   # informational: what this folder holds
        if prune:
            keep = {f[0] for f in files} | {"manifest.json"}
            for f in out.iterdir():
                if f.is_file() and f.name not in keep and not f.name.startswith("."):
                    f.unlink()
                    report.pruned.append(f.name)
        return report
    finally:
        if own:
            client.close()


def room_pieces(client: httpx.Client) -> list[tuple[str, int, str]]:
    """(sha256, size, URL path) of every piece of the room checkpoints the coordinator serves to
    browser nodes (`GET /v1/rooms/{id}/weights`, issue 16); rooms without one are skipped."""
    from urllib.parse import quote

    r = client.get("/v1/rooms")
    if r.status_code != 200:
        return []
    out: dict[str, tuple[str, int, str]] = {}
    for room in r.json():
        rid = quote(str(room.get("id", "")), safe="")
        m = client.get(f"/v1/rooms/{rid}/weights")
        if m.status_code != 200:
            continue
        for c in m.json().get("chunks", []):
            out.setdefault(c["sha256"], (c["sha256"], int(c["size"]), f"/v1/rooms/{rid}/chunks/{c['sha256']}"))
    return list(out.values())


def watch_mirror(coordinator: str, out: Path, every: float, **kw) -> None:
    """Sync forever, every `every` seconds; a failed pass is reported and retried."""
    while True:
        try:
            rep = sync_mirror(coordinator, out, **kw)
            print(f"version {rep.version}: +{len(rep.downloaded)} chunks, {len(rep.repaired)} repaired, "
                  f"{rep.kept} kept, {len(rep.pruned)} pruned", flush=True)
        except (httpx.HTTPError, ChunkError) as exc:
            print(f"sync failed (will retry): {exc}", flush=True)
        time.sleep(every)


def nginx_conf(root: Path, port: int, prefix: Path, host: str = "127.0.0.1", user: str | None = None) -> str:
    """A self-contained nginx config serving `root` as a chunk mirror.

    CORS and Cross-Origin-Resource-Policy headers let the browser client (a cross-origin
    isolated page on the coordinator's origin) fetch from the mirror.
    """
    p = Path(prefix)
    user_line = f"user {user};\n" if user else ""
    temp = "\n".join(f"    {k}_temp_path {p / (k + '_temp')};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user_line}worker_processes 1;
pid {p / 'nginx.pid'};
error_log {p / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
    access_log {p / 'access.log'};
{temp}
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen {host}:{port};
        root {Path(root).resolve()};
        location / {{
            limit_except GET HEAD {{ deny all; }}
            add_header Access-Control-Allow-Origin "*" always;
            add_header Cross-Origin-Resource-Policy "cross-origin" always;
            add_header Cache-Control "public, max-age=31536000, immutable";
            try_files $uri =404;
        }}
    }}
}}
"""
