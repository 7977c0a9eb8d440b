"""The user's path in a real browser: Playwright drives Debian's headless Chromium against the app on 127.0.0.1.

Records every request the page makes and fails on any that leaves 127.0.0.1 (the app must work offline).
Set DDPM_ARTIFACTS=/some/dir to keep the screenshots.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

PER_CLASS = [1.0, 3.0, 1.5]  # the tiny model's classes: Horizontal, Vertical, Square
PLAIN_CFG = 2.25
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                                 reason="needs Debian's chromium at /usr/bin/chromium")]

# Collects, in the page, every src the live x_t image gets and whether the final image was there yet; p is the
# tab's elem_id prefix ("" for Generate, "edit-" for Start from an image).
WATCH_LIVE_FRAMES = """(p) => {
  window.__live = [];
  const seen = () => {
    const img = document.querySelector(`#${p}live-xt img`);
    const final = document.querySelector(`#${p}final img`);
    if (img && img.src && (window.__live.length === 0 || window.__live.at(-1).src !== img.src)) {
      window.__live.push({src: img.src, finalShown: !!(final && final.src),
                          status: document.querySelector(`#${p}status`)?.innerText || ''});
    }
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     attributeFilter: ['src']});
}"""

# Delays every fetch the page makes by a second (the order of requests is kept).
SLOW_FETCH = """() => {
  const fetch = window.fetch;
  window.fetch = (...args) => new Promise(resolve => setTimeout(() => resolve(fetch(...args)), 1000));
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint, tmp_path_factory, with_sampling):
    import app

    # a model that recommends one guidance scale per class: the slider follows the chosen class
    folder = with_sampling(tiny_checkpoint, tmp_path_factory.mktemp("ckpt") / "per-class", {"class_cfg": PER_CLASS})
    # and a second model with one recommended scale for every class
    others = tmp_path_factory.mktemp("checkpoints")
    with_sampling(tiny_checkpoint, others / "plain", {"cfg": PLAIN_CFG})
    demo = app.build_demo(str(folder), checkpoints_dir=str(others))
    port = _free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def browser(p, profile: Path):
    """Debian's Chromium, headless, on a fresh profile."""
    return p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                headless=True, viewport={"width": 1300, "height": 1000})


def artifacts_dir(tmp_path: Path) -> Path:
    """Where a browser test leaves its screenshots: $DDPM_ARTIFACTS (CI keeps them), else the test's tmp_path."""
    artifacts = Path(os.environ.get("DDPM_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    return artifacts


def test_generate_in_the_browser(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    artifacts = artifacts_dir(tmp_path)
    requests: list[str] = []
    with sync_playwright() as p:
        context = browser(p, tmp_path / "profile")
        try:
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            page.on("websocket", lambda ws: requests.append(ws.url))
            page.goto(app_url)
            expect(page.locator("#live-xt")).to_be_visible(timeout=60_000)

            # picking a class moves the CFG slider to that class's recommended scale
            cfg = page.get_by_label("number input for CFG scale (guidance)")
            expect(cfg).to_have_value(f"{PER_CLASS[0]:g}")
            page.get_by_role("combobox", name="Class").click()
            page.get_by_role("option", name="1 · Vertical").click()
            expect(cfg).to_have_value(f"{PER_CLASS[1]:g}")

            # the controls: sliders through their number boxes, seed, image count, the sampler
            steps = page.get_by_label("number input for Steps")
            steps.fill("300")
            steps.press("Enter")
            cfg.fill("2.5")
            cfg.press("Enter")
            page.get_by_label("Seed", exact=True).fill("7")
            page.get_by_label("4", exact=True).check()
            page.get_by_text("Advanced").click()
            page.get_by_label("DDPM (ancestral)").check()
            expect(steps).to_have_value("300")

            page.evaluate(WATCH_LIVE_FRAMES, "")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#status")).to_contain_text("Done:", timeout=120_000)

            live = page.evaluate("window.__live")
            before_end = [f for f in live if not f["finalShown"] and not f["status"].startswith("Done")]
            assert len({f["src"] for f in before_end}) >= 3, live
            assert all(f["src"].startswith("data:image/png;base64,") for f in live)  # lossless PNG, inline
            assert all(f["status"].startswith(("Step", "Sampling")) for f in before_end), live

            final = page.locator("#final img")
            expect(final).to_be_visible(timeout=30_000)
            assert final.get_attribute("src").endswith(".png")
            video = page.locator("#video video")
            expect(video).to_be_visible(timeout=30_000)
            assert ".mp4" in video.get_attribute("src")
            expect(page.locator("#files")).to_contain_text(".gif")
            expect(page.locator("#run-info")).to_contain_text("seed 7")
            page.wait_for_timeout(500)  # let the video show its first frame
            page.screenshot(path=str(artifacts / "app_generate.png"), full_page=True)

            # the scrubber moves through the recorded steps without sampling again
            box = page.get_by_label("number input for Scrub the finished run (recorded steps)")
            box.fill("0")
            box.press("Enter")
            expect(page.locator("#status")).to_contain_text("Recorded step 1/300", timeout=30_000)

            # the page states the server's limits, and a request over them is refused with the reason in the status
            expect(page.locator("#limits")).to_contain_text("up to 8,000 image-steps")
            page.get_by_label("16", exact=True).check()
            steps.fill("1000")
            steps.press("Enter")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#status")).to_contain_text("16 images x 1000 steps = 16,000 image-steps; this server "
                                                            "allows 8,000 per request", timeout=30_000)
            expect(page.get_by_text("use fewer steps or images").first).to_be_visible()
            page.get_by_label("4", exact=True).check()
            steps.fill("300")
            steps.press("Enter")

            # the slider moves in the browser: a Generate clicked at once after picking a class samples at its scale,
            # even when every request to the server takes a second (a busy Space)
            page.evaluate(SLOW_FETCH)
            page.get_by_role("combobox", name="Class").click()
            page.get_by_role("option", name="2 · Square").click()
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#run-info")).to_contain_text("label 2 ", timeout=120_000)
            expect(page.locator("#run-info")).to_contain_text(f"CFG {PER_CLASS[2]:g} ")
            expect(cfg).to_have_value(f"{PER_CLASS[2]:g}")
            page.evaluate("() => location.reload()")
            expect(page.locator("#live-xt")).to_be_visible(timeout=60_000)

            # switching models: each model's own recommendation, also when the class resets with it
            page.get_by_role("combobox", name="Model").click()
            note = page.get_by_text("this model recommends a scale per class")
            expect(note).to_be_visible()
            page.get_by_role("option", name="plain").click()
            expect(cfg).to_have_value(f"{PLAIN_CFG:g}")
            expect(note).to_have_count(0)  # the per-class note goes with the model
            page.get_by_role("combobox", name="Class").click()
            page.get_by_role("option", name="1 · Vertical").click()
            page.wait_for_timeout(300)
            expect(cfg).to_have_value(f"{PLAIN_CFG:g}")  # one scale for every class: the slider stays
            page.get_by_role("combobox", name="Model").click()
            page.get_by_role("option", name="per-class").click()
            expect(cfg).to_have_value(f"{PER_CLASS[0]:g}")
            expect(note).to_be_visible()
            page.get_by_role("combobox", name="Class").click()
            page.get_by_role("option", name="1 · Vertical").click()
            expect(cfg).to_have_value(f"{PER_CLASS[1]:g}")

            # the forward-process tab draws its plot
            page.get_by_role("tab", name="Forward process").click()
            expect(page.locator("#schedule-plot img")).to_be_visible(timeout=30_000)
            page.screenshot(path=str(artifacts / "app_forward.png"), full_page=True)
        finally:
            context.close()

    outside = [u for u in requests if urlsplit(u).scheme not in ("data", "blob")
               and urlsplit(u).hostname != "127.0.0.1"]
    assert requests and not outside, outside


def test_a_drawing_becomes_an_image_in_the_browser(app_url, tmp_path):
    """Start from an image: draw on a new sketch, run image-to-image, and watch it stream to a final image."""
    from playwright.sync_api import expect, sync_playwright

    artifacts = artifacts_dir(tmp_path)
    errors: list[str] = []
    with sync_playwright() as p:
        context = browser(p, tmp_path / "profile")
        try:
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(app_url)
            page.get_by_role("tab", name="Start from an image").click()
            tab = page.locator("#edit-tab")
            expect(tab.locator("#edit-live-xt")).to_be_visible(timeout=60_000)

            # a new white canvas: Invert ticks itself, the tiny model's images being light on black
            tab.get_by_role("button", name="New sketch (white canvas)").click()
            expect(tab.get_by_label("Invert (dark on light → light on dark)")).to_be_checked(timeout=30_000)
            canvas = tab.locator("#edit-image canvas").first
            expect(canvas).to_be_visible()
            page.wait_for_timeout(500)
            box = canvas.bounding_box()
            for x in (0.45, 0.55):  # a vertical bar, in two dark strokes
                page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * 0.15)
                page.mouse.down()
                for k in range(1, 5):  # few moves: each one repaints the editor (slow in headless Chromium)
                    page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * (0.15 + 0.175 * k))
                page.mouse.up()
            page.wait_for_timeout(500)

            strength = tab.get_by_label("number input for Strength")
            strength.fill("0.8")
            strength.press("Enter")
            steps = tab.get_by_label("number input for Steps")
            steps.fill("1000")  # 800 steps from t = 799: long enough for the tiny model to stream several frames
            steps.press("Enter")
            tab.get_by_label("1", exact=True).check()
            page.evaluate(WATCH_LIVE_FRAMES, "edit-")
            tab.get_by_role("button", name="Run from this picture").click()
            expect(tab.locator("#edit-status")).to_contain_text("Done: 800 steps", timeout=120_000)

            live = page.evaluate("window.__live")
            before_end = [f for f in live if not f["finalShown"] and not f["status"].startswith("Done")]
            assert len({f["src"] for f in before_end}) >= 3, live  # x_t streamed while it ran
            # (the status line may render a moment after the first frame)
            statuses = [f["status"] for f in live]
            assert all(s.startswith(("Step", "Sampling")) for s in statuses[1:len(before_end)]), statuses
            expect(tab.locator("#edit-view img")).to_be_visible()  # what the model starts from
            notes = tab.locator("#edit-notes")
            expect(notes).to_contain_text("inverted")
            expect(notes).to_contain_text("to the model's 12x12")
            final = tab.locator("#edit-final img")
            expect(final).to_be_visible(timeout=30_000)
            assert final.get_attribute("src").endswith(".png")
            expect(tab.locator("#edit-video video")).to_be_visible(timeout=30_000)
            expect(tab.locator("#edit-run-info")).to_contain_text("strength 0.8: from t = 799")
            page.wait_for_timeout(500)
            page.screenshot(path=str(artifacts / "app_edit.png"), full_page=True)
        finally:
            context.close()
    assert not errors, errors
