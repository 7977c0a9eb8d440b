"""The screenshots of docs/app.md's "start from an image" sections, taken against the real app on
checkpoints/fashion-mnist in headless Chromium:

    python scripts/docshots.py [--out docs]   ->  app_sketch.png, app_inpaint.png, app_interpolate.png
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic"]
# a sneaker's outline, side view, toe to the right (as the dataset has them), on the 280 x 280 canvas
SHOE = [(30, 200), (250, 200), (262, 185), (255, 165), (200, 145), (160, 120), (120, 105), (100, 120), (70, 110),
        (40, 100), (30, 150), (30, 200)]


def image_rect(locator) -> tuple[float, float, float, float]:
    """(x, y, w, h) on the page of the dark picture inside an editor's canvas (rows/columns mostly dark)."""
    im = np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("L")) < 40
    cols, rows = np.nonzero(im.mean(0) > 0.5)[0], np.nonzero(im.mean(1) > 0.5)[0]
    box = locator.bounding_box()
    return box["x"] + cols[0], box["y"] + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1


def stroke(page, rect, points, size=280):
    x, y, w, h = rect
    page.mouse.move(x + points[0][0] * w / size, y + points[0][1] * h / size)
    page.mouse.down()
    for px, py in points[1:]:
        page.mouse.move(x + px * w / size, y + py * h / size, steps=3)
    page.mouse.up()


def choose(tab, page, label, option):
    tab.get_by_role("combobox", name=label).click()
    tab.get_by_role("option", name=option, exact=True).first.click()


def set_number(tab, label, value):
    box = tab.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def shot(page, tab, path):
    page.wait_for_timeout(1500)  # the video's first frame
    top = page.get_by_role("tablist").first.bounding_box()["y"] + page.evaluate("window.scrollY")
    full = Image.open(io.BytesIO(page.screenshot(full_page=True)))
    full.crop((0, max(0, int(top) - 10), full.width, full.height - 40)).save(path, optimize=True)
    print(path)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="docs")
    p.add_argument("--only", default="sketch,inpaint,interpolate")
    args = p.parse_args()
    from playwright.sync_api import expect, sync_playwright

    demo = app.build_demo("checkpoints/fashion-mnist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    out = Path(args.out)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                                                        viewport={"width": 1300, "height": 1000})
            page = ctx.new_page()
            url = f"http://127.0.0.1:{port}/"

            def open_tab(name, tab_id, ready):
                """A fresh page on tab `name` (element #tab_id), once its element `ready` shows."""
                page.goto(url)
                expect(page.locator("#live-xt")).to_be_visible(timeout=60_000)
                page.get_by_role("tab", name=name).click()
                tab = page.locator(f"#{tab_id}")
                expect(tab.locator(ready)).to_be_visible(timeout=60_000)
                return tab

            def edit_tab():
                tab = open_tab("Start from an image", "edit-tab", "#edit-live-xt")
                page.wait_for_timeout(1000)
                return tab

            if "sketch" in args.only:
                tab = edit_tab()
                choose(tab, page, "Start from an example", "7 · Sneaker")  # to find where the canvas shows the picture
                page.wait_for_timeout(2500)
                rect = image_rect(tab.locator("#edit-image canvas").first)
                tab = edit_tab()  # a fresh page: the same layout, nothing pending
                tab.get_by_role("button", name="New sketch (white canvas)").click()
                expect(tab.get_by_label("Invert (dark on light → light on dark)")).to_be_checked(timeout=30_000)
                canvas = tab.locator("#edit-image canvas").first
                for _ in range(5):  # the editor may still be loading the canvas: draw until the outline is there
                    page.wait_for_timeout(3000)
                    stroke(page, rect, SHOE)
                    page.wait_for_timeout(2000)
                    dark = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L")) < 40
                    if dark.mean() > 0.03:
                        break
                    tab.get_by_role("button", name="New sketch (white canvas)").click()
                page.wait_for_timeout(3000)
                choose(tab, page, "Class", "7 · Sneaker")
                set_number(tab, "Strength", 0.7)
                page.wait_for_timeout(500)
                tab.get_by_role("button", name="Run from this picture").click()
                expect(tab.locator("#edit-status")).to_contain_text("Done:", timeout=300_000)
                expect(tab.locator("#edit-video video")).to_be_visible(timeout=30_000)
                shot(page, tab, out / "app_sketch.png")

            if "inpaint" in args.only:
                tab = edit_tab()
                choose(tab, page, "Start from an example", "9 · Ankle-boot")
                page.wait_for_timeout(2500)
                rect = image_rect(tab.locator("#edit-mask canvas").first)
                for y in (20, 50, 80, 110, 135):  # the top half, painted over in wide strokes
                    stroke(page, rect, [(5, y), (275, y)])
                page.wait_for_timeout(1500)
                choose(tab, page, "Class", "9 · Ankle boot")
                set_number(tab, "Strength", 1)
                tab.get_by_text("Advanced").click()
                set_number(tab, "Resampling rounds (RePaint, inpainting only)", 3)
                page.wait_for_timeout(500)
                tab.get_by_role("button", name="Run from this picture").click()
                expect(tab.locator("#edit-status")).to_contain_text("Done:", timeout=600_000)
                expect(tab.locator("#edit-video video")).to_be_visible(timeout=30_000)
                shot(page, tab, out / "app_inpaint.png")

            if "interpolate" in args.only:
                tab = open_tab("Interpolate", "interpolate-tab", "#interp-live-xt")
                choose(tab, page, "Class A", "7 · Sneaker")
                choose(tab, page, "Class B", "9 · Ankle boot")
                page.wait_for_timeout(500)
                tab.get_by_role("button", name="Interpolate").click()
                expect(tab.locator("#interp-status")).to_contain_text("Done:", timeout=300_000)
                expect(tab.locator("#interp-video video")).to_be_visible(timeout=30_000)
                shot(page, tab, out / "app_interpolate.png")
            if "forward" in args.only:
                tab = open_tab("Forward process", "forward-tab", "#forward-xt img")
                set_number(tab, "time step t", 600)
                choose(tab, page, "Class", "7 · Sneaker")
                page.wait_for_timeout(1500)
                tab.get_by_role("button", name="Denoise from here").click()
                expect(tab.locator("#denoise-status")).to_contain_text("Done:", timeout=300_000)
                shot(page, tab, out / "app_denoise.png")
            ctx.close()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def forward(port_url=None):
    pass
