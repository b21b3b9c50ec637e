"""Pictures that cannot lie: a surface with no finite value says so instead of drawing a
plane, a few huge values do not set the colour cap, every clipped value is counted on the
figure and the page, the data is never changed, and meaningless plot options are refused."""

import html as htmllib
import json
import re

import numpy as np
import pytest
import xarray as xr

import crumple as cr
from crumple.cli import main
from crumple.errors import CrumpleError
from crumple.plot.scale import Scale
from tests.test_browser import browser, opened  # noqa: F401  (the fixture)
from tests.test_plot import bumps, path_on_nodes, traces

A = np.linspace(-1, 1, 21)
NOTHING = "no finite loss value: nothing to draw"


def grid(loss) -> xr.Dataset:
    return xr.Dataset(
        {"loss": (("alpha", "beta"), loss, {"long_name": "mse_loss"})},
        coords={"alpha": A, "beta": A},
    )


def bowl() -> xr.Dataset:
    """Values 0..10 over a 21 x 21 grid, minimum 0 at the origin."""
    return grid(5.0 * (A[:, None] ** 2 + A[None, :] ** 2))


def overflowing(corners=((0, 0), (0, 20), (20, 0))) -> xr.Dataset:
    """The bowl with 1e36 at a few points far from the origin."""
    loss = bowl().loss.values.copy()
    for i, j in corners:
        loss[i, j] = 1e36
    return grid(loss)


def everywhere(value: float) -> xr.Dataset:
    return grid(np.full((21, 21), value))


def page_text(path) -> str:
    """The page's visible text (facts and notes) and its figures' titles and annotations."""
    text = path.read_text()
    body = htmllib.unescape(re.sub(r"<[^>]+>", " ", text.split('<script id="plotly-gz"')[0]))
    figures = json.loads(re.search(r'<script id="figures"[^>]*>(.*?)</script>', text, re.S)[1])
    said = [f["layout"].get("title", {}).get("text", "") for f in figures]
    said += [a["text"] for f in figures for a in f["layout"].get("annotations", [])]
    return " ".join(body.split()) + "\n" + "\n".join(said)


def same_data(a: xr.Dataset, b: xr.Dataset) -> bool:
    return a.identical(b) and np.array_equal(a.loss.values, b.loss.values, equal_nan=True)


# -- no finite value: say so, draw nothing ---------------------------------------------------


@pytest.mark.parametrize(
    "value, counts", [(np.nan, "(441 nan, 0 inf)"), (np.inf, "(0 nan, 441 inf)")], ids=str
)
def test_a_surface_without_a_finite_value_says_so_and_draws_no_plane(value, counts):
    ds = everywhere(value)
    before = ds.copy(deep=True)
    for fig in (cr.plot.surface(ds), cr.plot.contour(ds), cr.plot.surface(ds, log=True)):
        assert f"{NOTHING} {counts}" in fig.layout.title.text
        assert [a.text for a in fig.layout.annotations] == [f"{NOTHING} {counts}"]
        assert "clipped at" not in fig.to_json()
    # no plane at 1, or anywhere: the 3-D view has no surface (a surface of nan only stops
    # plotly's WebGL scene), the contour view only nan
    assert not traces(cr.plot.surface(ds), "surface")
    flat = cr.plot.contour(ds)
    assert np.isnan(np.array(flat.data[0].z, dtype=float)).all()
    assert list(flat.layout.xaxis.range) == list(flat.layout.yaxis.range) == [-1.0, 1.0]
    assert not [t for t in traces(cr.plot.surface(ds), "scatter3d", "clipped") if t.visible]
    assert same_data(ds, before)  # nan and inf stay in the data as they are


def test_a_log_scale_of_a_surface_with_no_positive_value_says_so():
    fig = cr.plot.surface(everywhere(0.0), log=True)
    assert "no positive finite loss value: nothing to draw on a log scale" in (
        fig.layout.title.text
    )
    assert "441 at or below 0" in fig.layout.annotations[0].text


def test_partly_nan_surfaces_keep_their_nan_as_gaps():
    loss = bowl().loss.values.copy()
    loss[:5, :] = np.nan
    ds = grid(loss)
    surf = traces(cr.plot.surface(ds), "surface")[0]
    z = np.array(surf.z, dtype=float)  # rows run along beta
    assert np.isnan(z[:, :5]).all() and np.isfinite(z[:, 5:]).all()
    assert np.nanmin(z) == 0 and surf.cmin == 0
    assert "105 nan left as gaps" in cr.plot.surface(ds).layout.title.text
    flat = cr.plot.contour(ds)
    assert np.isnan(np.array(flat.data[0].z, dtype=float)[:, :5]).all()


# -- a few huge values do not set the cap --------------------------------------------------


def test_a_few_huge_values_do_not_flatten_the_basin():
    ds = overflowing()
    before = ds.copy(deep=True)
    fig = cr.plot.surface(ds)
    surf = traces(fig, "surface")[0]
    assert surf.cmax < 100 and surf.cmax == 10.0 and surf.cmin == 0.0  # the bowl's own range
    z = np.array(surf.z, dtype=float)
    assert z.max() == 10.0 and np.count_nonzero(z == 10.0) == 4  # 3 clipped + the last corner
    assert "3 of 441 values above 10 drawn at 10" in fig.layout.title.text
    marked = traces(fig, "scatter3d", "clipped")[0]
    assert marked.name == "clipped at 10 (3)" and list(marked.text) == ["1e+36"] * 3
    assert list(marked.z) == [10.0] * 3
    flat = cr.plot.contour(ds)
    assert flat.data[0].zmax == 10.0 and "3 of 441 values above 10" in flat.layout.title.text
    assert same_data(ds, before)


def test_the_cap_holds_until_a_quarter_of_the_grid_overflows():
    far = [(i, j) for i in range(21) for j in range(21) if A[i] ** 2 + A[j] ** 2 > 1.2]
    assert 0.15 < len(far) / 441 < 0.25  # the previous cap gave way at 5%
    surf = traces(cr.plot.surface(overflowing(far)), "surface")[0]
    assert surf.cmax <= 10.0


def test_inf_and_huge_values_are_counted_apart_and_the_path_is_drawn_at_the_cap():
    ds = overflowing()
    loss = ds.loss.values.copy()
    loss[20, 20] = np.inf
    ds = grid(loss)
    path = path_on_nodes(ds, [(10, 10), (20, 20)])
    fig = cr.plot.surface(ds, {"SGD": path})
    cap = 5.0 * (1 + 0.9**2)  # the largest value left: next to a corner
    assert f"4 of 441 values above {cap:.4g} drawn at {cap:.4g} (1 inf)" in fig.layout.title.text
    assert np.allclose(list(traces(fig, "scatter3d", "SGD")[0].z), [0.0, cap])


def test_log_scale_says_what_it_clipped():
    loss = bowl().loss.values.copy()
    loss[0, 0] = 1e36
    fig = cr.plot.surface(grid(loss), log=True)
    title = fig.layout.title.text
    # the minimum 0 has no log10: drawn at the smallest positive value and said so
    assert "1 of 441 values below 0.05 drawn at 0.05 (1 at or below 0, which log10" in title
    assert "1 of 441 values above 10 drawn at 10" in title
    surf = traces(fig, "surface")[0]
    assert np.isclose(surf.cmax, 1.0) and np.isclose(surf.cmin, np.log10(0.05))
    assert fig.layout.scene.zaxis.title.text == "log10 mse_loss"


def test_a_surface_drawn_as_it_is_has_no_note():
    fig = cr.plot.surface(bowl())
    assert fig.layout.title.text == "Loss Surface" and not fig.layout.annotations
    assert Scale(bowl().loss.values).note() is None


# -- the page says it too --------------------------------------------------------------------


def test_the_page_says_there_is_nothing_to_draw(tmp_path):
    page = cr.plot.report(tmp_path / "nan.html", everywhere(np.nan))
    text = page_text(page)
    assert f"drawn: {NOTHING} (441 nan, 0 inf)" in text  # the facts line
    assert text.count(NOTHING) >= 5  # and both figures' titles and annotations
    assert "clipped at" not in page.read_text()


def test_the_page_counts_the_clipped_values(tmp_path):
    ds = overflowing()
    page = cr.plot.report(tmp_path / "big.html", ds, {"SGD": path_on_nodes(ds, [(10, 10)])})
    text = page_text(page)
    assert "drawn: 3 of 441 values above 10 drawn at 10" in text
    above = int((bowl().loss.values > 5).sum())
    assert cr.plot.facts(ds, zmax=5.0)["drawn"] == f"{above} of 441 values above 5 drawn at 5"
    assert "drawn" not in cr.plot.facts(bowl())


def test_the_command_line_page_of_a_nan_run_says_so(tmp_path, capsys):
    run = cr.store.save_run(tmp_path / "run", everywhere(np.nan))
    main(["plot", str(run), "--html", str(tmp_path / "p.html")])
    assert NOTHING in page_text(tmp_path / "p.html")
    capsys.readouterr()


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(zmax=-1.0, log=True), ["zmax=-1.0", "log=True needs a zmax above 0"]),
        (dict(zmax=0, log=True), ["zmax=0", "log scale"]),
        (dict(zmax=float("nan")), ["zmax=nan", "not finite"]),
        (dict(zmax=float("inf")), ["zmax=inf", "not finite"]),
        (dict(zmax="3"), ["zmax='3'", "not a number", "zmax=10.0"]),
        (dict(zmax=True), ["zmax=True", "not a number"]),
        (dict(zmax=-1), ["zmax=-1", "below the surface's smallest loss 0", "nothing would be"]),
        (dict(zmax=0.01, log=True), ["zmax=0.01", "smallest positive loss 0.05"]),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_meaningless_zmax_is_refused_everywhere(tmp_path, kwargs, words):
    ds = bowl()
    attempts = [
        lambda: cr.plot.surface(ds, **kwargs),
        lambda: cr.plot.contour(ds, **kwargs),
        lambda: cr.plot.facts(ds, **kwargs),
        lambda: cr.plot.report(tmp_path / "page.html", ds, **kwargs),
        lambda: cr.plot.save_static(ds, tmp_path / "fig.png", **kwargs),
    ]
    for attempt in attempts:
        with pytest.raises(CrumpleError) as e:
            attempt()
        for word in words:
            assert word in str(e.value), str(e.value)
        assert "leave it out" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_zmax_at_or_above_the_minimum_is_drawn():
    surf = traces(cr.plot.surface(bowl(), zmax=0.0), "surface")[0]
    assert np.nanmax(np.array(surf.z, dtype=float)) == 0.0
    logged = traces(cr.plot.surface(bowl(), zmax=0.05, log=True), "surface")[0]
    assert np.isclose(logged.cmax, np.log10(0.05))


def test_line_refuses_a_surface_and_draws_a_cut_of_it():
    ds = bowl()
    with pytest.raises(CrumpleError) as e:
        cr.plot.line(ds)
    message = str(e.value)
    assert "('alpha', 'beta')" in message and "crumple.plot.surface(ds)" in message
    assert "ds.sel(beta=0, method='nearest')" in message
    cut = cr.plot.line(ds.sel(beta=0, method="nearest"))
    assert list(cut.data[0].x) == list(A) and cut.layout.xaxis.title.text == "alpha"
    across = cr.plot.line(ds.sel(alpha=0.5, method="nearest"))  # a cut along beta
    assert list(across.data[0].x) == list(A) and across.layout.xaxis.title.text == "beta"
    with pytest.raises(CrumpleError, match="has no variable var='accuracy'"):
        cr.plot.line(ds.sel(beta=0, method="nearest"), var="accuracy")


def test_paths_without_alpha_beta_or_loss_are_refused():
    ds = bowl()
    path = path_on_nodes(ds, [(0, 0), (10, 10)])
    for missing in ("alpha", "beta", "loss"):
        for draw in (cr.plot.surface, cr.plot.contour, cr.plot.animate):
            with pytest.raises(CrumpleError) as e:
                draw(ds, {"SGD": path.drop_vars(missing)})
            assert f"paths['SGD'] has no {missing!r}" in str(e.value)
            assert "crumple.project" in str(e.value)
    with pytest.raises(CrumpleError, match=r"paths\['SGD'\] has no 'loss'"):
        cr.plot.losses({"SGD": path.drop_vars("loss")})
    with pytest.raises(CrumpleError, match=r"give paths=\{'SGD': path\}"):
        cr.plot.surface(ds, path)  # one dataset, not a mapping
    with pytest.raises(CrumpleError, match=r"paths\['SGD'\]=.* is not an xarray Dataset"):
        cr.plot.contour(ds, {"SGD": [0, 1]})
    with pytest.raises(CrumpleError, match="'step' dimension"):
        cr.plot.surface(ds, {"SGD": path.rename(step="time")})


@pytest.mark.parametrize(
    "name, words",
    [
        ("noext", ["path=", "noext'", "has no suffix", ".png or .pdf or .svg", "noext.png'"]),
        ("figure.jpg", ["ends in '.jpg'", ".png or .pdf or .svg", "figure.png'"]),
        ("out/", ["has no suffix"]),
    ],
)
def test_save_static_refuses_a_file_name_without_a_format(tmp_path, name, words):
    with pytest.raises(CrumpleError) as e:
        cr.plot.save_static(bowl(), tmp_path / name)
    for word in words:
        assert word in str(e.value), str(e.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CrumpleError, match="is not a file name"):
        cr.plot.save_static(bowl(), 3)


def test_save_static_draws_nan_gaps_and_says_when_there_is_nothing(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    assert matplotlib
    gappy = overflowing().loss.values.copy()
    gappy[:3] = np.nan
    assert cr.plot.save_static(grid(gappy), tmp_path / "gaps.SVG").exists()
    svg = cr.plot.save_static(everywhere(np.nan), tmp_path / "nan.svg").read_text()
    assert "no finite loss value" in svg or "nothing to draw" in svg.replace("\n", " ")


@pytest.mark.parametrize(
    "option, name, words",
    [
        ("--pdf", "noext", ["--pdf='", "noext' has no suffix", "ending in .pdf"]),
        ("--pdf", "x.png", ["--pdf='", "x.png' ends in '.png', not .pdf", "x.pdf'"]),
        ("--png", "x.pdf", ["--png='", "x.pdf' ends in '.pdf', not .png"]),
        ("--png", "x", ["--png='", "has no suffix"]),
    ],
)
def test_cli_plot_refuses_a_file_name_that_is_not_its_format(tmp_path, capsys, option, name, words):
    run = cr.store.save_run(tmp_path / "run", bowl())
    target, page = tmp_path / name, tmp_path / "page.html"
    with pytest.raises(SystemExit) as e:
        main(["plot", str(run), "--html", str(page), option, str(target)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    assert not target.exists() and not page.exists()  # nothing written, not even the page


def test_cli_plot_refuses_a_zmax_that_shows_nothing(tmp_path, capsys):
    run = cr.store.save_run(tmp_path / "run", bowl())
    page = tmp_path / "page.html"
    for extra, word in (
        (["--zmax", "-1"], "below the surface's smallest loss"),
        (
            ["--zmax", "-1", "--log"],
            "log=True needs a zmax above 0",
        ),
    ):
        with pytest.raises(SystemExit):
            main(["plot", str(run), "--html", str(page), *extra])
        assert word in capsys.readouterr().err
    assert not page.exists()


def test_bumps_with_divergent_corner_keeps_its_saddles_visible():
    ds, _ = bumps()
    loss = ds.loss.values.copy()
    loss[:4, :4] = 1e30  # 16 of 1681 points overflow in one corner
    fig = cr.plot.surface(ds.assign(loss=(("alpha", "beta"), loss)))
    assert traces(fig, "surface")[0].cmax < 20
    assert "16 of 1681 values above" in fig.layout.title.text


# -- in a real browser -------------------------------------------------------------------------


def gappy_overflowing() -> xr.Dataset:
    loss = overflowing().loss.values.copy()
    loss[:, 5] = np.nan
    return grid(loss)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize(
    "make, said",
    [
        (lambda: everywhere(np.nan), NOTHING),
        (gappy_overflowing, "3 of 441 values above 10 drawn at 10; 21 nan left as gaps"),
    ],
    ids=["all-nan", "overflowing-with-gaps"],
)
def test_the_browser_shows_what_was_not_drawn(browser, tmp_path, make, said):  # noqa: F811
    page, errors = opened(browser, cr.plot.report(tmp_path / "page.html", make()), height=900)
    assert said in page.locator(".facts").inner_text()
    for k in (0, 1):  # the 3-D and contour views say it in their titles
        title = page.locator(f"#figure-{k} .gtitle").text_content()
        assert said in " ".join(title.split()), title
    shown = " ".join(page.locator("#figure-0 .annotation").all_text_contents())
    assert (NOTHING in shown) == (said == NOTHING), shown
    assert errors == [], errors
    page.close()
