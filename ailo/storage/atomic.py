"""The one way this project replaces a file: a crash leaves the old file or the new one.

Write a temporary file beside the target (unique per process and thread, so concurrent writers
of the same path never share one), fsync it, then rename it over the target.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def remove_leftovers(path: Path) -> int:
    """Delete temporary files a crash left beside `path` (call at start-up, before any writer)."""
    gone = 0
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        tmp.unlink(missing_ok=True)
        gone += 1
    return gone


def atomic_write(path: str | Path, data: bytes | str, *, mode: int | None = None,
                 halfway: Callable[[], None] | None = None) -> None:
    """`mode`: file permissions of the result (the temporary file's are private by default);
    `halfway`: called with half the data written and flushed (crash-point tests)."""
    path = Path(path)
    tmp = temp_path(path)
    view = memoryview(data.encode() if isinstance(data, str) else data)  # no copy of a large chunk
    try:
        with open(tmp, "wb") as f:
            if halfway is not None:
                f.write(view[: len(view) // 2])
                f.flush()
                halfway()
                view = view[len(view) // 2:]
            f.write(view)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
