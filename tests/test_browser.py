"""The demo page in a real headless Chromium, with the network cut off."""

import io
import os
import shutil

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


def test_demo_page_renders_offline(browser, tmp_path):
    from PIL import Image

    page_path, _ = seed.write(seed.run(epochs=3, progress=False), tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors, remote = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "request",
        lambda r: None if r.url.startswith(("file:", "data:", "blob:")) else remote.append(r.url),
    )
    page.goto(page_path.as_uri())
    page.wait_for_selector(".gl-container canvas", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('.main-svg').length >= 2", timeout=60_000)
    page.wait_for_timeout(1500)
    box = page.locator(".gl-container canvas").first.bounding_box()
    assert box["width"] > 200 and box["height"] > 200
    legend = page.locator(".legendtext").all_text_contents()
    assert "SGD" in legend and "data" in legend and "model" in legend
    shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    colours = shot.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 500, "the screenshot is nearly blank"
    (tmp_path / "screenshot.png").write_bytes(page.screenshot())
    assert errors == []
    assert remote == []
    page.close()
