"""Critical points of gridded surfaces whose answer is known analytically."""

import numpy as np
import pytest
import xarray as xr

from crumple.analysis import CriticalPoints, critical_points

A = np.linspace(-1, 1, 21)  # the centre, index 10, is the grid node at 0


def on_grid(f, alpha=A, beta=A):
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    return xr.Dataset({"loss": (("alpha", "beta"), f(a, b))}, coords={"alpha": alpha, "beta": beta})


@pytest.mark.parametrize(
    ("f", "minima", "maxima", "saddles"),
    [
        (lambda a, b: a**2 + b**2, [(10, 10)], [], []),  # bowl
        (lambda a, b: -(a**2) - 2 * b**2, [], [(10, 10)], []),  # cap
        (lambda a, b: a**2 - b**2, [], [], [(10, 10)]),  # saddle
        (lambda a, b: a * b, [], [], [(10, 10)]),  # level along both axes
        (lambda a, b: a**2 - b**2 + 0.5 * a * b, [], [], [(10, 10)]),
        (lambda a, b: a + 2 * b, [], [], []),  # a tilted plane has none
    ],
    ids=["bowl", "cap", "saddle", "rotated-saddle", "tilted-saddle", "plane"],
)
def test_critical_points_of_analytic_surfaces(f, minima, maxima, saddles):
    found = critical_points(on_grid(f))
    assert (found.minima, found.maxima, found.saddles) == (minima, maxima, saddles)


def test_indices_run_along_alpha_then_beta():
    alpha, beta = np.linspace(-1, 1, 21), np.linspace(0, 3, 31)
    ds = on_grid(lambda a, b: (a - 0.5) ** 2 + (b - 2.0) ** 2, alpha, beta)
    found = critical_points(ds)
    assert found.minima == [(15, 20)] and found.global_min == (15, 20)
    i, j = found.minima[0]
    assert (alpha[i], beta[j]) == pytest.approx((0.5, 2.0))


def test_global_minimum_of_a_saddle_is_on_the_edge():
    found = critical_points(on_grid(lambda a, b: a**2 - b**2))
    assert found.global_min == (10, 0)  # a = 0, b = -1 (the first of the two)


def test_points_next_to_nan_or_inf_are_left_out():
    bowl = on_grid(lambda a, b: a**2 + b**2)
    for bad in (np.nan, np.inf):
        ds = bowl.copy(deep=True)
        ds.loss.values[9, 11] = bad  # a neighbour of the centre
        found = critical_points(ds)
        assert found.minima == [] and found.global_min == (10, 10)


def test_all_nan_and_small_grids():
    assert critical_points(on_grid(lambda a, b: a * np.nan)).global_min is None
    line = xr.Dataset({"loss": ("alpha", [3.0, 1.0, 2.0])})
    assert critical_points(line) == CriticalPoints([], [], [], (1,))
    thin = on_grid(lambda a, b: a**2 + b**2, A, np.array([0.0, 1.0]))
    found = critical_points(thin)
    assert found.counts() == {"minima": 0, "maxima": 0, "saddles": 0}
    assert found.global_min == (10, 0)


def test_other_variables_and_plateaus():
    ds = on_grid(lambda a, b: a**2 + b**2).assign(accuracy=lambda d: -d.loss)
    assert critical_points(ds, var="accuracy").maxima == [(10, 10)]
    flat = on_grid(lambda a, b: np.zeros_like(a))
    assert critical_points(flat).counts() == {"minima": 0, "maxima": 0, "saddles": 0}
