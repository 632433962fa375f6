import pytest
import torch

from ailo.data import TokenDataset, shard_files, text_files


def test_corpus_is_real_and_large(corpus_dir):
    files = text_files(corpus_dir)
    assert len(files) >= 50
    assert sum(f.stat().st_size for f in files) > 1_000_000


def test_shards_are_disjoint_and_cover(corpus_dir):
    files = text_files(corpus_dir)
    shards = [set(shard_files(files, k, 3)) for k in range(3)]
    assert not (shards[0] & shards[1] or shards[1] & shards[2] or shards[0] & shards[2])
    assert set().union(*shards) == set(files)
    with pytest.raises(ValueError):
        shard_files(files, 3, 3)


def test_splits_are_disjoint_regions(tmp_path):
    (tmp_path / "a.txt").write_text("".join(f"line {i}\n" for i in range(2000)))
    train = TokenDataset.from_dir(tmp_path, "train")
    val = TokenDataset.from_dir(tmp_path, "val")
    hold = TokenDataset.from_dir(tmp_path, "holdout")
    assert len(train) > 10 * len(val) > 0 and len(hold) > 0
    from ailo.tokenizer import decode
    assert "line 1999" in decode(hold.tokens.tolist()) and "line 1999" not in decode(train.tokens.tolist())


def test_batches_shift_by_one_and_are_reproducible(tmp_path):
    (tmp_path / "a.txt").write_text("to be or not to be " * 200)
    ds = TokenDataset.from_dir(tmp_path, "train")
    (x1, y1), (x2, y2) = next(ds.random_batches(4, 16, seed=5)), next(ds.random_batches(4, 16, seed=5))
    assert torch.equal(x1, x2) and torch.equal(x1[:, 1:], y1[:, :-1])
    epoch = list(ds.epoch_batches(4, 16))
    assert sum(x.shape[0] for x, _ in epoch) == (len(ds) - 1) // 16


def test_too_short_dataset_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(ValueError, match="shorter than one window"):
        next(TokenDataset.from_dir(tmp_path, "train").random_batches(1, 64))
