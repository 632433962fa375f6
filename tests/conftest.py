import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AILO_HOME", str(ROOT))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    from ailo.paths import corpus_dir as cd
    d = cd()
    assert (d / ".fetched").exists(), "run `make setup` first (fetches the corpus)"
    return d
