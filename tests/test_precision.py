"""GPU-minded settings checked on the CPU: bfloat16 autocast, TF32 refused off CUDA, and an
out-of-memory error that halves the points per call and goes on."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.evaluation import Points, Settings, build
from crumple.evaluation.strategies import Vmap
from tests.cases import MLP, digits


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = MLP()
    x, y = digits(128, dtype=torch.float32)
    plane = cr.Plane.random(model, seed=0)
    return model, (x, y), plane


def test_bf16_is_close_to_float32_and_said(case):
    model, data, plane = case
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    full = cr.surface(model, F.cross_entropy, data, plane, grid)
    bf16 = cr.surface(model, F.cross_entropy, data, plane, grid, precision="bf16")
    assert bf16.attrs["precision"] == "bf16"
    rel = np.abs(bf16.loss.values - full.loss.values) / full.loss.values
    assert 0 < rel.max() < 0.05  # bfloat16 differs, by about its 8 bits of mantissa


def test_tf32_off_cuda_and_unknown_precisions_are_refused(case):
    model, data, plane = case
    with pytest.raises(cr.CrumpleError, match="tf32.*CUDA"):
        cr.line(model, F.cross_entropy, data, plane, [0.0], precision="tf32")
    with pytest.raises(cr.CrumpleError, match="precision must be one of"):
        cr.line(model, F.cross_entropy, data, plane, [0.0], precision="fp8")


def test_out_of_memory_halves_the_points_per_call_and_goes_on(case, monkeypatch):
    model, data, plane = case
    calls = []
    original = Vmap.__call__

    def limited(self, points):
        calls.append(points.size)
        if points.size > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, points)

    monkeypatch.setattr(Vmap, "__call__", limited)
    evaluate = build(model, {"loss": F.cross_entropy}, data, plane, Settings(strategy="vmap"))
    evaluate.settings = evaluate.settings.replace(points_per_call=16)
    axes = [torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 4)]
    with pytest.warns(UserWarning, match="out of memory with 16 points"):
        values = evaluate(Points.grid(plane, axes))
    assert evaluate.settings.points_per_call == 4 and evaluate.halvings == 2
    assert calls[:3] == [16, 8, 4]
    monkeypatch.setattr(Vmap, "__call__", original)
    expected = build(model, {"loss": F.cross_entropy}, data, plane, Settings(strategy="loop"))
    np.testing.assert_allclose(
        values["loss"], expected(Points.grid(plane, axes))["loss"], rtol=1e-5
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_surface_equals_the_cpu_reference(case):
    model, data, plane = case
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    gpu = cr.surface(model, F.cross_entropy, data, plane, grid, device="cuda", dtype="float64")
    ref = cr.reference.surface(model, F.cross_entropy, data, plane, grid, dtype=torch.float64)
    np.testing.assert_allclose(gpu.loss.values, ref.loss.values, rtol=1e-9)
    assert gpu.attrs["device"].startswith("cuda")
