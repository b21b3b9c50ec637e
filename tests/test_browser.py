"""The demo and comparison pages in a real headless Chromium, with the network cut off."""

import io
import os
import shutil
from pathlib import Path

import pytest

from crumple.examples import seed

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--proxy-server=127.0.0.1:9",  # anything that tries the network fails
]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def opened(browser, file, height: int = 1000):
    """A page of ``browser`` showing ``file`` once its figures are drawn, and the list that
    its errors (uncaught, and the console's) are added to."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(Path(file).as_uri())
    page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=120_000)
    return page, errors


@pytest.fixture(
    scope="module", params=[("sgd",), ("sgd", "momentum", "adam")], ids=["demo", "compare"]
)
def page_file(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("page")
    result = seed.run(epochs=25, optimizers=request.param, progress=False)
    page_path, _ = seed.write(result, folder)
    return page_path, list(result.paths)


def test_page_renders_offline_with_every_path_and_a_working_slider(browser, page_file):
    from PIL import Image

    page_path, names = page_file
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    errors, remote = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "request",
        lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else remote.append(r.url),
    )
    page.goto(page_path.as_uri())
    page.wait_for_function("document.body.dataset.ready === 'yes'", timeout=120_000)
    page.wait_for_selector(".gl-container canvas", timeout=60_000)
    page.wait_for_timeout(1000)
    box = page.locator(".gl-container canvas").first.bounding_box()
    assert box["width"] > 200 and box["height"] > 200

    # the 3-D view's legend lists every path (plus critical-point entries)
    legend = page.locator("#figure-0 .legendtext").all_text_contents()
    assert all(name in legend for name in names), legend

    # the slider drives the animation: the paths shrink to the chosen step
    def lengths():
        return page.evaluate(
            "(names) => names.map((n) => document.getElementById('figure-0')._fullData"
            ".find((t) => t.name === n).x.length)",
            names,
        )

    assert lengths() == [26] * len(names)
    rail = page.locator("#figure-0 .slider-rail-rect").bounding_box()
    page.mouse.click(rail["x"] + 0.2 * rail["width"], rail["y"] + rail["height"] / 2)
    page.wait_for_timeout(1500)
    shrunk = lengths()
    assert all(1 < n < 26 for n in shrunk), shrunk
    page.locator("#figure-0 .updatemenu-button").first.click()  # play
    page.wait_for_function(
        "(names) => names.every((n) => document.getElementById('figure-0')._fullData"
        ".find((t) => t.name === n).x.length === 26)",
        arg=names,
        timeout=30_000,
    )

    # the contour view drives a cursor in the 3-D view
    contour = page.locator("#figure-1 .nsewdrag").first.bounding_box()
    page.mouse.move(contour["x"] + contour["width"] * 0.7, contour["y"] + contour["height"] * 0.4)
    page.wait_for_timeout(500)
    cursor = page.evaluate(
        "document.getElementById('figure-0')._fullData.find((t) => t.name === 'cursor').x.length"
    )
    assert cursor == 1

    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 500, "the screenshot is nearly blank"
    assert errors == []
    assert remote == []
    page.close()


# texts that would run code or hide the page's own script if a page embedded them raw
HOSTILE = {
    "comment": "<!--<script>",
    "img": "<img src=x onerror=\"window.pwned='img'; document.title='pwned'\">",
    "close": "</script><script>window.pwned='script'; document.title='pwned'</script>",
    "lines": "line\u2028and\u2029para",
}


def test_hostile_names_are_drawn_as_text_and_run_nothing(browser, tmp_path):
    import torch
    import torch.nn.functional as F

    import crumple as cr
    from crumple import report
    from crumple.run.store import open_run, save_run

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    x = torch.randn(8, 2)
    data = (x, x[:, :1])
    plane = cr.Plane.random(net, seed=0)
    metrics = {HOSTILE["comment"]: F.l1_loss, HOSTILE["img"]: F.l1_loss}
    grid = cr.Grid([-1.0, 0.0, 1.0], [0.0, 1.0])
    ds = cr.surface(net, F.mse_loss, data, plane, grid, metrics=metrics, progress=False)
    rec = cr.Recorder(net)
    rec.record(loss=1.0)
    rec.record(loss=0.5)
    path = cr.project(rec.trajectory, plane, net, F.mse_loss, data)
    # path names may not hold "/" (a run folder could not store them): the rest may; one is
    # called as the page's hover cursor
    names = [HOSTILE["comment"], HOSTILE["img"], HOSTILE["lines"], "cursor"]
    for var in ("alpha", "beta", "loss"):
        ds[var].attrs["long_name"] = f"{var} {HOSTILE['close']} {HOSTILE['comment']}"
    ds.attrs |= {"loss_name": HOSTILE["close"], "grid_chosen": HOSTILE["img"]}
    ds.attrs["strategy"] = HOSTILE["lines"] + HOSTILE["comment"]
    save_run(tmp_path, ds, {name: path for name in names}, plane)
    run = open_run(tmp_path)
    surface = run.pop("surface")
    file = report.write_page(tmp_path, surface, run)

    page, errors = opened(browser, file)
    assert page.evaluate("window.pwned") is None
    assert page.title() == f"crumple: {HOSTILE['close']} landscape"
    assert page.locator("img").count() == 0
    legend = page.locator("#figure-0 .legendtext").all_text_contents()
    assert all(name in legend for name in names), legend
    facts = page.locator(".facts").inner_text()
    assert HOSTILE["img"] in facts and HOSTILE["comment"] in facts, facts
    axis = page.locator("#figure-1 .xtitle").text_content()
    assert HOSTILE["close"] in axis and HOSTILE["comment"] in axis, axis
    # hovering the contour view moves the cursor, not the path called "cursor"
    contour = page.locator("#figure-1 .nsewdrag").first.bounding_box()
    page.mouse.move(contour["x"] + contour["width"] * 0.5, contour["y"] + contour["height"] * 0.5)
    page.wait_for_timeout(500)
    points = page.evaluate(
        "document.getElementById('figure-0')._fullData.filter((t) => t.name === 'cursor')"
        ".map((t) => [t.meta || 'path', t.x.length])"
    )
    # the path: the Recorder's initial weights and its two records
    assert sorted(points) == [["cursor", 1], ["path", 3]], points
    assert errors == []
