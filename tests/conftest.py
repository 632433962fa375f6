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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: intra-op threads only add contention."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
