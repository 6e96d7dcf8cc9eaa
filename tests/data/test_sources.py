"""Data sources: fixed batches, every pass the same, or a clear error."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sharpminima.data.sources import (
    LoaderSource,
    PinnedSource,
    TensorSource,
    as_source,
    fingerprint,
    leading_size,
    pin_batches,
    select_rows,
    to_device,
    tree_leaves,
    tree_map,
)
from sharpminima.errors import ConfigError, DataError


def _data(n=10, d=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_tensor_source_cuts_fixed_chunks():
    x, y = _data(10)
    src = TensorSource(x, y, chunk_size=4)
    batches = list(src.batches())
    assert [leading_size(b) for b in batches] == [4, 4, 2]
    assert torch.equal(batches[2][0], x[8:]) and torch.equal(batches[2][1], y[8:])
    assert [leading_size(b) for b in src.chunks(1)] == [4, 2]
    assert src.describe() == {"source": "tensors", "num_samples": 10, "chunk_size": 4}
    assert [leading_size(b) for b in src.head(5).batches()] == [4, 1]
    assert [leading_size(b) for b in src.rechunk(5).batches()] == [5, 5]


def test_tensor_source_of_a_dict_and_its_subsets():
    ids = torch.arange(12).reshape(6, 2)
    src = TensorSource({"input_ids": ids, "labels": ids + 1}, chunk_size=4)
    (first, second) = src.batches()
    assert set(first) == {"input_ids", "labels"} and leading_size(second) == 2
    (got,) = src.gather(torch.tensor([5, 0]))
    assert torch.equal(got["input_ids"], ids[[5, 0]])
    sub = src.subset(torch.tensor([1, 2, 3]))
    assert isinstance(sub, TensorSource) and sub.num_samples == 3


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.ones(3, 2), torch.ones(4)), "need as many targets as inputs"),
        ((torch.ones(0, 2), torch.ones(0)), "need as many targets as inputs"),
        (({"a": torch.ones(3), "b": torch.ones(2)},), "share one non-zero leading size"),
    ],
)
def test_tensor_source_rejects_mismatched_data(args, match):
    with pytest.raises(ConfigError, match=match):
        TensorSource(*args)


def test_tensor_source_rejects_a_bad_chunk_size():
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        TensorSource(*_data(), chunk_size=0)


def test_loader_source_matches_the_loaders_batches_and_uses_the_fast_path():
    x, y = _data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    got = list(LoaderSource(loader).batches())
    ref = list(iter(loader))  # the per-sample fetch and collate
    assert len(got) == len(ref) == 3
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    dropped = list(LoaderSource(DataLoader(TensorDataset(x, y), batch_size=4, drop_last=True)).batches())
    assert len(dropped) == 2


def test_loader_source_limits():
    x, y = _data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    assert [leading_size(b) for b in LoaderSource(loader, max_batches=2).batches()] == [4, 4]
    assert [leading_size(b) for b in LoaderSource(loader, max_samples=6).batches()] == [4, 2]
    assert [leading_size(b) for b in as_source(loader, max_samples=5).batches()] == [4, 1]


def test_a_shuffling_loader_is_refused():
    x, y = _data(10)
    with pytest.raises(ConfigError, match="the DataLoader shuffles"):
        LoaderSource(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))


def test_a_one_shot_iterator_is_refused():
    x, y = _data(10)
    with pytest.raises(ConfigError, match="can be read only once"):
        LoaderSource((x[i : i + 2], y[i : i + 2]) for i in range(0, 10, 2))


class _Augmenting:
    """Re-iterable batches that change every pass, as random augmentation does."""

    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def __iter__(self):
        x, y = _data(8)
        for i in range(0, 8, 4):
            yield x[i : i + 4] + 0.1 * torch.randn(4, 3, generator=self.g), y[i : i + 4]


def test_batches_that_change_between_passes_are_caught():
    src = LoaderSource(_Augmenting())
    list(src.batches())
    with pytest.raises(DataError, match="different first batch on a later pass"):
        list(src.batches())


def test_a_source_that_grows_is_caught():
    data = [_data(4)]
    src = LoaderSource(data)
    list(src.batches())
    data.append(_data(4))
    with pytest.raises(DataError, match="2 batches, not 1"):
        list(src.batches())


def test_an_empty_source_is_an_error():
    with pytest.raises(DataError, match="yielded no batch"):
        list(LoaderSource([]).batches())
    with pytest.raises(DataError, match="yielded no batch"):
        pin_batches([])


def test_pin_batches_fixes_a_shuffling_loader():
    x, y = _data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    src = pin_batches(loader, 2, pin_memory=False)
    first, second = [list(src.batches()) for _ in range(2)]
    assert isinstance(src, PinnedSource) and len(first) == 2 and src.num_samples == 8
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    assert src.nbytes == 8 * 3 * 4 + 8 * 8
    assert pin_batches(loader, num_samples=5, pin_memory=False).num_samples == 5
    one_shot = pin_batches(iter([(x, y)]), pin_memory=False)
    assert one_shot.num_samples == 10


def test_gather_reads_rows_across_batches_in_the_order_asked():
    x, y = _data(10)
    src = LoaderSource(DataLoader(TensorDataset(x, y), batch_size=4))
    parts = src.gather(torch.tensor([9, 1, 2, 5]))
    got_x = torch.cat([p[0] for p in parts])
    assert torch.equal(got_x, x[[9, 1, 2, 5]])
    with pytest.raises(ConfigError, match="out of range"):
        src.gather(torch.tensor([10]))


def test_trees():
    batch = {"a": (torch.ones(2, 3), [torch.zeros(2)]), "n": 3}
    doubled = tree_map(lambda t: t * 2, batch)
    assert doubled["n"] == 3 and torch.equal(doubled["a"][0], torch.full((2, 3), 2.0))
    assert len(tree_leaves(batch)) == 2 and leading_size(batch) == 2
    assert leading_size(select_rows(batch, slice(0, 1))) == 1
    assert to_device(batch, torch.device("cpu"))["a"][0].device.type == "cpu"
    with pytest.raises(DataError, match="holds no tensor"):
        leading_size({"n": 3})
    assert fingerprint(batch) == fingerprint(tree_map(lambda t: t.clone(), batch))
    assert fingerprint(batch) != fingerprint(doubled)


def test_as_source_picks_the_kind_and_refuses_what_it_cannot_read():
    x, y = _data(10)
    assert isinstance(as_source(x, y), TensorSource)
    assert isinstance(as_source([(x, y)]), LoaderSource)
    assert isinstance(as_source({"input_ids": x}), TensorSource)
    with pytest.raises(ConfigError, match="needs its targets"):
        as_source(x)
    with pytest.raises(ConfigError, match="cannot read batches from a int"):
        as_source(3)
    with pytest.raises(ConfigError, match="targets are given with tensor inputs only"):
        as_source([(x, y)], y)
