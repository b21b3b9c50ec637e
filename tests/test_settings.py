"""Settings: one typed value with a JSON round trip, clear refusals, old plans read."""

import pytest
import torch

import crumple as cr
from crumple.evaluation import Settings


def test_round_trip_and_torch_types():
    s = Settings(
        strategy="vmap",
        batch_size=64,
        points_per_call=8,
        tile_size=32,
        dtype=torch.float64,
        device="cpu",
        batching="user",
    )
    assert Settings.from_json(s.to_json()) == s
    assert s.dtype == "float64" and s.torch_dtype is torch.float64
    assert s.torch_device == torch.device("cpu")


def test_chunk_size_sets_tiles_and_calls_and_old_plans_read():
    s = Settings.from_options(chunk_size=12, max_memory=None)
    assert (s.tile_size, s.points_per_call) == (12, 12)
    old = Settings.from_json('{"chunk_size": 40, "points_per_call": 5, "strategy": "loop"}')
    assert (old.tile_size, old.points_per_call, old.strategy) == (40, 5, "loop")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chunk_size": 2.5}, "chunk_size must be a positive whole number, got 2.5"),
        ({"max_memory": 0}, "max_memory must be a positive whole number"),
        ({"dtype": "float16"}, "dtype 'float16' is not supported"),
        ({"device": "gpu"}, "device 'gpu' is not a device"),
        ({"batching": "mine"}, "batching must be one of"),
        ({"chunks": 3}, "unknown option 'chunks'"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, message):
    with pytest.raises(cr.CrumpleError, match=message):
        Settings.from_options(**options)


def test_an_unknown_strategy_names_the_registered_ones():
    net = torch.nn.Linear(2, 1)
    x = torch.zeros(3, 2), torch.zeros(3, 1)
    with pytest.raises(cr.CrumpleError, match="loop, expanded, vmap"):
        cr.line(
            net,
            torch.nn.functional.mse_loss,
            x,
            cr.Plane.random(net, ndim=1),
            [0.0],
            strategy="fast",
        )
