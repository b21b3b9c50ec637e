"""crumple.examples.resnet20: ResNet-20 as He et al. 2016 count it, and crumple's surface on
it equal to the reference loop's."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.examples.resnet20 import resnet20
from tests.cases import assert_close

# 3x3 convolutions 3->16, 6 x 16->16, 16->32, 5 x 32->32, 32->64, 5 x 64->64 (267,696),
# 19 BatchNorms of 688 channels in all (1,376), the head 64 x 10 + 10 (650)
RESNET20_PARAMETERS = 269_722


def test_resnet20_has_resnet20s_parameters_and_layers():
    model = resnet20()
    assert sum(p.numel() for p in model.parameters()) == RESNET20_PARAMETERS
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19  # with the head: 20 layers with weights, no 1x1 shortcut
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 1
    assert model.training
    out = model.eval()(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 10)
    assert resnet20(num_classes=100).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_resnet20_seed_fixes_the_weights_and_leaves_the_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = resnet20(seed=0), resnet20(seed=0), resnet20(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)


@pytest.fixture()
def one_thread():
    """One thread: on a shared 2-core machine two threads wait on each other at every small
    elementwise op, and the float64 convolutions here took 2-4 times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("strategy", ["auto", "vmap"])
def test_surface_on_resnet20_equals_the_reference_loop(strategy, one_thread):
    model = resnet20(seed=0).double()
    g = torch.Generator().manual_seed(0)
    # 16 x 16 images (the network takes any size from 4 x 4 up): a quarter of the 32 x 32
    # work, which float64 convolutions on the CPU would otherwise make take a minute
    x = torch.randn(24, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (24,), generator=g)
    data = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 24, 10)]  # 10, 10, 4
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-0.5, 0.5, 3))
    fast = cr.surface(model, F.cross_entropy, data, plane, grid, strategy=strategy)
    slow = cr.reference.surface(model, F.cross_entropy, data, plane, grid)
    assert np.isfinite(slow.loss.values).all()
    assert_close(fast.loss.values, slow.loss.values, rtol=1e-9, label=strategy)
