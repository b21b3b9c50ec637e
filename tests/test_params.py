"""Named parameter sets: entries by name, copies, casts, state dicts, the eval-mode guard."""

import pytest
import torch
from torch import nn

from crumple.errors import CrumpleError
from crumple.params import (
    cast,
    evaluation_mode,
    flatten,
    parameters_from,
    parameters_of,
    parse_entry,
)

PARAMS = {"w": torch.zeros(2, 3), "b": torch.zeros(3), "s": torch.zeros(1, 1)}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("w[1, 2]", ("w", (1, 2))),
        (" w[0,0] ", ("w", (0, 0))),
        ("b[2]", ("b", (2,))),
        ("s", ("s", (0, 0))),  # one entry: the bare name is enough
    ],
)
def test_parse_entry_resolves_a_full_index(spec, expected):
    assert parse_entry(spec, PARAMS) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("w[1", "is not understood; write 'name' or 'name[i, j]'"),
        ("w[a, b]", "is not understood"),
        (3, "is not understood"),
        ("v[0]", "the model has no parameter 'v'; it has: w, b, s"),
        ("w", "has shape (2, 3), so one entry must be chosen: write e.g. 'w[0, 0]'"),
        ("w[2, 0]", "index [2, 0] does not address one entry of 'w', whose shape is (2, 3)"),
        ("w[0]", "index [0] does not address one entry"),
        ("b[0, 0]", "index [0, 0] does not address one entry of 'b'"),
    ],
)
def test_parse_entry_refuses_with_the_fix(spec, message):
    with pytest.raises(CrumpleError) as error:
        parse_entry(spec, PARAMS)
    assert message in str(error.value)


def test_parameters_of_copies_and_detaches():
    net = nn.Linear(2, 1)
    params = parameters_of(net)
    params["weight"].add_(1.0)
    assert not torch.equal(params["weight"], net.weight)
    assert not params["bias"].requires_grad


def test_cast_changes_floats_only():
    assert cast(torch.zeros(2), dtype=torch.float64).dtype == torch.float64
    assert cast(torch.zeros(2, dtype=torch.float16), dtype=torch.float32).dtype == torch.float32
    for t in (torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool)):
        assert cast(t, "cpu", torch.float64).dtype == t.dtype
    assert cast(torch.zeros(1), "cpu").device.type == "cpu"


def test_flatten_follows_the_order_of_names():
    params = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([3.0])}
    assert flatten(params, ["b", "a"]).tolist() == [3.0, 1.0, 2.0]


def mixed_flags():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(2)))
    net.train()
    net[1].eval()  # one module left in eval mode on purpose
    return net


def test_evaluation_mode_runs_in_eval_without_grad_and_restores_each_flag():
    net = mixed_flags()
    before = [m.training for m in net.modules()]
    with evaluation_mode(net):
        assert not any(m.training for m in net.modules())
        assert not torch.is_grad_enabled()
    assert [m.training for m in net.modules()] == before
    assert torch.is_grad_enabled()


def test_evaluation_mode_restores_flags_when_the_body_raises():
    net = mixed_flags()
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="inside"), evaluation_mode(net):
        raise RuntimeError("inside")
    assert [m.training for m in net.modules()] == before
    assert torch.is_grad_enabled()


class TiedNorm(nn.Module):
    """An embedding tied to the output layer, with BatchNorm buffers between."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x):
        return self.head(self.norm(self.embed(x)))


def test_parameters_from_reads_a_state_dict_by_the_models_names():
    net, other = TiedNorm(), TiedNorm()
    state = other.state_dict()
    assert {"head.weight", "norm.running_mean", "norm.num_batches_tracked"} <= state.keys()
    params = parameters_from(state, net)
    assert list(params) == [n for n, _ in net.named_parameters()]  # each tied tensor once
    assert torch.equal(params["embed.weight"], other.embed.weight)
    params["embed.weight"].add_(1.0)  # a copy
    assert not torch.equal(params["embed.weight"], other.embed.weight)
    # the tied tensor may come under any of its names
    state.pop("embed.weight")
    assert torch.equal(parameters_from(state, net)["embed.weight"], other.embed.weight)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("norm.weight"), "missing ['norm.weight']"),
        (lambda s: s.update(extra=torch.zeros(1)), "unknown ['extra']"),
        (lambda s: s.update({"norm.bias": torch.zeros(5)}), "of another shape ['norm.bias']"),
        (
            lambda s: s.update({"head.weight": s["head.weight"] + 1}),
            "tied in the model but different here ['embed.weight']",
        ),
    ],
)
def test_parameters_from_refuses_what_does_not_fit(change, message):
    state = TiedNorm().state_dict()
    change(state)
    with pytest.raises(CrumpleError, match="checkpoint does not fit the model") as error:
        parameters_from(state, TiedNorm(), "checkpoint")
    assert message in str(error.value)
