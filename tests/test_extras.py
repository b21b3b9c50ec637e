"""A per-point quantity of one's own flows through the engine, the run driver, a stored
run and its resume as the curvature map does, through the extras protocol alone."""

import dataclasses
import json

import numpy as np
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.batches import load
from crumple.evaluation import Extra, Settings
from crumple.landscape import Landscape
from crumple.run.driver import RunOptions, evaluate_grid


@dataclasses.dataclass(frozen=True)
class Norm:
    """The weights' norm at each point."""

    key = "norm"
    names = ("norm",)
    long_names = {"norm": "weight norm"}

    def options(self):
        return {}

    def bind(self, task, settings):
        return NormAt()


class NormAt:
    def __call__(self, points):
        out = torch.empty(points.shape, dtype=torch.float64)
        for index, args in points.each():
            out[index] = float(
                torch.cat([t.reshape(-1) for t in points.params_at(*args).values()]).norm()
            )
        return {"norm": out}

    def facts(self):
        return {"norm_facts": "said"}


def test_an_extra_of_ones_own_is_computed_stored_and_resumed(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    data = load((torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))))
    plane = cr.Plane.random(net, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 3))
    assert isinstance(Norm(), Extra)
    options = RunOptions(store=tmp_path / "run", extras=(Norm(),))
    settings = Settings(tile_size=4, points_per_call=4)
    fns = {"loss": F.cross_entropy}
    outcome = evaluate_grid(net, fns, data, plane, grid, settings, options)
    want = np.array(
        [
            [
                float(torch.cat([t.reshape(-1) for t in plane.at(a, b).values()]).norm())
                for b in grid.axes[1]
            ]
            for a in grid.axes[0]
        ]
    )
    np.testing.assert_allclose(outcome.values["norm"], want, rtol=1e-12)
    assert outcome.facts["norm_facts"] == "said"
    stored = outcome.run.attrs
    assert json.loads(stored["fingerprint"])["norm"] == "{}"
    again = evaluate_grid(net, fns, data, plane, grid, settings, options)  # resumed: all done
    assert again.finished is not None and again.tiles_computed == 0
    np.testing.assert_array_equal(again.finished["norm"].values, outcome.values["norm"])
    loss = Landscape(net, F.cross_entropy, data.held[0].parts(), progress=False).surface(
        plane, grid
    )
    np.testing.assert_allclose(again.finished["loss"].values, loss.loss.values, rtol=1e-12)
