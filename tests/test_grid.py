"""Grids: checked axes, and tiles that cover every point exactly once."""

import numpy as np
import pytest

from crumple.errors import CrumpleError
from crumple.grid import Grid, blocks


def coverage(shape, max_points):
    """How many tiles hold each point, and the tiles."""
    count = np.zeros(shape, dtype=int)
    tiles = list(blocks(shape, max_points))
    for tile in tiles:
        count[tile] += 1
    return count, tiles


@pytest.mark.parametrize("shape", [(1,), (7,), (1, 1), (3, 5), (5, 3), (80, 80), (13, 1)])
@pytest.mark.parametrize("max_points", [1, 2, 3, 4, 5, 7, 16, 100, 10_000])
def test_tiles_cover_the_grid_exactly_once_within_the_budget(shape, max_points):
    count, tiles = coverage(shape, max_points)
    assert (count == 1).all(), f"points covered {np.unique(count)} times"
    for tile in tiles:
        size = int(np.prod([s.stop - s.start for s in tile]))
        assert 1 <= size <= max_points, tile
    # as few tiles as whole rows (or pieces of one row) allow
    cols = min(shape[-1], max_points)
    rows = max(1, max_points // cols)
    expected = int(np.prod([-(-n // rows) for n in shape[:-1]])) * -(-shape[-1] // cols)
    assert len(tiles) == expected


def test_tiles_run_row_by_row():
    tiles = list(Grid(np.arange(4), np.arange(6)).tiles(3))
    starts = [(r.start, c.start) for r, c in tiles]
    assert starts == sorted(starts) and starts[:3] == [(0, 0), (0, 3), (1, 0)]


@pytest.mark.parametrize("max_points", [0, -3])
def test_tiles_refuse_an_empty_budget(max_points):
    with pytest.raises(
        CrumpleError, match=f"chunk_size must be a positive number of points, got {max_points}"
    ):
        list(Grid(np.arange(3)).tiles(max_points))


def test_grid_shape_size_dims_and_repr():
    line = Grid([0.0, 0.5, 1.0])
    assert (line.dims, line.shape, line.size) == (("alpha",), (3,), 3)
    plane = Grid(np.arange(-2, 2, 0.05), np.linspace(0, 1, 11))
    assert (plane.dims, plane.shape, plane.size) == (("alpha", "beta"), (80, 11), 880)
    assert repr(plane) == "Grid(alpha=[-2 .. 1.95] (80), beta=[0 .. 1] (11))"
    assert plane.axes[0].dtype == np.float64


@pytest.mark.parametrize(
    ("axis", "message"),
    [
        ([], "grid axis 'beta' must be a non-empty 1-D sequence of numbers, got shape (0,)"),
        ([[0.0, 1.0]], "got shape (1, 2)"),
        ([0.0, np.nan], "grid axis 'beta' holds inf or nan; give finite coordinates"),
        ([0.0, np.inf], "holds inf or nan"),
    ],
)
def test_bad_axes_are_refused_by_name(axis, message):
    with pytest.raises(CrumpleError) as error:
        Grid([0.0, 1.0], axis)
    assert message in str(error.value)


def test_text_is_not_an_axis():
    with pytest.raises(
        CrumpleError, match="grid axis 'alpha' must hold numbers, got \\['a', 'b'\\]"
    ):
        Grid(["a", "b"])
