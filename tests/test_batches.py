"""What a batch is: (x, y) pairs normalised once, and re-batching that keeps every sample,
in order, so the dataset mean does not change."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from crumple.batches import as_batches, number_of_samples, rebatched
from crumple.errors import CrumpleError


def test_a_pair_a_loader_and_a_list_give_the_same_samples():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    for data in ((x, y), loader, list(loader)):
        batches = as_batches(data)
        assert torch.equal(torch.cat([b[0] for b in batches]), x)
        assert number_of_samples(batches) == 10


def test_only_floating_point_tensors_are_cast():
    x, y = torch.zeros(2, 1), torch.tensor([1, 0])
    ((bx, by),) = as_batches((x, y), dtype=torch.float64)
    assert bx.dtype == torch.float64 and by.dtype == torch.int64


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (42, TypeError, "data must be an \\(x, y\\) pair"),
        ([], CrumpleError, "data holds no batches"),
        ([torch.zeros(3)], CrumpleError, "batch 0 of data is Tensor, not an \\(x, y\\) pair"),
        ([(torch.zeros(3, 1), torch.zeros(2))], CrumpleError, "3 inputs and 2 targets"),
    ],
)
def test_bad_data_is_refused_naming_the_batch(data, error, message):
    with pytest.raises(error, match=message):
        as_batches(data)


@pytest.mark.parametrize("size", [1, 3, 4, 7, 100])
def test_rebatching_keeps_every_sample_in_order(size):
    batches = [
        (torch.arange(n, n + k, dtype=torch.float64)[:, None], torch.arange(n, n + k))
        for n, k in ((0, 5), (5, 1), (6, 4))
    ]
    out = rebatched(batches, size)
    assert torch.equal(torch.cat([x for x, _ in out]).flatten(), torch.arange(10.0))
    assert all(len(x) <= size for x, _ in out)
    assert sum(len(x) < size for x, _ in out) <= 1  # one short batch at most, the last


def test_batches_of_other_shapes_are_not_merged():
    short = (torch.zeros(3, 2, 4), torch.zeros(3))
    long = (torch.zeros(3, 2, 6), torch.zeros(3))
    out = rebatched([short, long], 8)
    assert [tuple(x.shape) for x, _ in out] == [(3, 2, 4), (3, 2, 6)]
