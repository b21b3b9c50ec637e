"""What a batch is: (x, y) pairs, longer tuples and dicts, normalised once; data held or
streamed; re-batching that keeps every sample, in order, so the dataset mean does not change."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from crumple.batches import Batch, load, rebatched
from crumple.errors import CrumpleError


def test_a_pair_a_loader_and_a_list_give_the_same_samples():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    for data in ((x, y), loader, list(loader)):
        batches = list(load(data))
        assert torch.equal(torch.cat([b.args[0] for b in batches]), x)
        assert load(data).n_samples == 10


def test_dicts_and_longer_tuples_call_the_model_with_all_but_the_target():
    ids, mask = torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long)
    batch = Batch.of({"input_ids": ids, "attention_mask": mask, "labels": ids})
    assert batch.inputs() == ((), {"input_ids": ids, "attention_mask": mask})
    assert batch.inputs(with_target=True)[1]["labels"] is ids
    a, b, y = torch.zeros(3, 2), torch.ones(3, 4), torch.zeros(3)
    triple = Batch.of((a, b, y))
    assert triple.args == (a, b) and triple.target is y
    assert triple.inputs(with_target=True)[0] == (a, b, y)
    assert [n for n, _ in triple.named_parts()] == ["x1", "x2", "y"]


def test_only_floating_point_tensors_are_cast():
    x, y = torch.zeros(2, 1), torch.tensor([1, 0])
    (batch,) = load((x, y)).to(dtype=torch.float64)
    assert batch.args[0].dtype == torch.float64 and batch.target.dtype == torch.int64


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (42, TypeError, "data must be an \\(x, y\\) pair"),
        ([], CrumpleError, "data holds no batches"),
        ([torch.zeros(3)], CrumpleError, "batch 0 of data is Tensor; a batch is an"),
        ([(torch.zeros(3, 1), torch.zeros(2))], CrumpleError, "batch 0's y has shape \\(2,\\)"),
        ([{"input_ids": torch.zeros(2, 3), "text": ["a", "b"]}], CrumpleError, "'s text is list"),
    ],
)
def test_bad_data_is_refused_naming_the_batch(data, error, message):
    with pytest.raises(error, match=message):
        load(data)


def pairs():
    return [
        Batch.of((torch.arange(n, n + k, dtype=torch.float64)[:, None], torch.arange(n, n + k)))
        for n, k in ((0, 5), (5, 1), (6, 4))
    ]


@pytest.mark.parametrize("size", [1, 3, 4, 7, 100])
def test_rebatching_keeps_every_sample_in_order(size):
    out = list(rebatched(pairs(), size))
    assert torch.equal(torch.cat([b.args[0] for b in out]).flatten(), torch.arange(10.0))
    assert all(b.size <= size for b in out)
    assert sum(b.size < size for b in out) <= 1  # one short batch at most, the last


def test_dict_batches_are_rebatched_key_by_key():
    ids = torch.arange(12).reshape(6, 2)
    batches = [
        Batch.of({"input_ids": ids[s], "labels": -ids[s]}) for s in (slice(0, 4), slice(4, 6))
    ]
    out = list(rebatched(batches, 3))
    assert [b.size for b in out] == [3, 3]
    assert torch.equal(torch.cat([b.kwargs["input_ids"] for b in out]), ids)
    assert torch.equal(torch.cat([b.target for b in out]), -ids)


def test_batches_of_other_shapes_are_not_merged():
    short = Batch.of((torch.zeros(3, 2, 4), torch.zeros(3)))
    long = Batch.of((torch.zeros(3, 2, 6), torch.zeros(3)))
    out = list(rebatched([short, long], 8))
    assert [tuple(b.args[0].shape) for b in out] == [(3, 2, 4), (3, 2, 6)]


def test_data_over_the_budget_is_streamed_and_read_again_for_each_pass():
    x, y = torch.arange(40.0)[:, None], torch.arange(40)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    held, streamed = load(loader, budget=10**6), load(loader, budget=100)
    assert not held.streamed and streamed.streamed
    for _ in range(2):
        a = [b.args[0] for b in held.rebatched(6)]
        b = [b.args[0] for b in streamed.rebatched(6)]
        assert len(a) == len(b) == 7 and all(torch.equal(p, q) for p, q in zip(a, b))
    assert streamed.n_samples is None  # counted on a full pass
    list(streamed)
    assert streamed.n_samples == 40


def test_an_iterator_over_the_budget_is_refused_as_it_cannot_be_read_again():
    x, y = torch.zeros(40, 1), torch.zeros(40)
    with pytest.raises(CrumpleError, match="can be read only once"):
        load(iter([(x[:20], y[:20]), (x[20:], y[20:])]), budget=100)
