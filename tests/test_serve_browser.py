"""The web page of ``zoo serve`` in a real headless browser (Debian's chromium, driven by
Playwright): pick a model, upload a CIFAR-style image, read the top-1 label off the page."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from serve_support import Running, pixels, thread_server

from zoo.deploy import OnnxClassifier

#: Chromium flags for a closed network: no sandbox (root in CI), no background traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("the browser test needs Debian's chromium: apt-get install -y chromium "
                    "(.ci/run installs it)")
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    with thread_server(["Net", "res=NetRes"]) as running:
        yield running


def test_the_page_classifies_an_uploaded_image(server: Running, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    image = tmp_path / "bird.png"
    Image.fromarray(pixels(3)).save(image)
    expected = {name: OnnxClassifier(bundle).predict([image])[0]
                for name, bundle in (("Net", "Net"), ("res", "NetRes"))}
    card = server.models["Net"].card()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 640})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]", timeout=15_000)
            assert page.locator("#model option").all_inner_texts() == [
                "Net (Net)", "res (NetRes)"]
            fields = page.inner_text("#card-fields")
            assert f"{card['accuracy']:.2%} on {card['accuracy_split']}" in fields.replace(
                "\t", " ")
            assert "imagefolder" in fields and "airplane, bird" in fields

            page.set_input_files("#file", str(image))
            top1 = page.wait_for_selector("#top1", timeout=15_000)
            assert top1 is not None
            assert top1.get_attribute("data-label") == expected["Net"].label
            shown = float(top1.get_attribute("data-probability") or "nan")
            assert abs(shown - expected["Net"].probability) < 1e-6
            assert page.locator("#results li").count() == 2

            page.select_option("#model", "res")
            expect(page.locator("#status")).to_have_text(re.compile(r"^res "), timeout=15_000)
            assert page.inner_text("#card-title") == "res"
            label = page.get_attribute("#top1", "data-label")
            assert label == expected["res"].label

            page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                  "buffer": b"not an image"}])
            page.wait_for_selector("#error:not([hidden])", timeout=15_000)
            assert "not an image upload" in page.inner_text("#error")
            assert page.locator("#results li").count() == 0
            page.screenshot(path=str(tmp_path / "page.png"))
            assert not [p for p in problems if "415" not in p], problems
        finally:
            browser.close()
