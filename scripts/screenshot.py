"""Regenerate docs/app.png, the README's picture of the app: a run on the default checkpoint in headless Chromium.

    python scripts/screenshot.py [--checkpoint checkpoints/fashion-mnist] [--label "7 · Sneaker"] [--out docs/app.png]

Needs Debian's chromium (/usr/bin/chromium) and the PyPI playwright package (requirements-test.txt).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402
import ddpm  # noqa: E402
from ddpm.studio import parse_label, start_options  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/fashion-mnist")
    p.add_argument("--label", default="7 · Sneaker")
    p.add_argument("--images", default="9", choices=("1", "4", "9", "16"))
    p.add_argument("--seed", default="3")
    p.add_argument("--out", default="docs/app.png")
    args = p.parse_args(argv)

    from playwright.sync_api import expect, sync_playwright

    demo = app.build_demo(args.checkpoint)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                            headless=True, viewport={"width": 1300, "height": 900})
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#live-xt")).to_be_visible(timeout=60_000)
            page.get_by_label("Class").fill(args.label)
            page.get_by_label("Class").press("Enter")
            # the CFG slider moves to the class's recommended scale: wait for it, or Generate may send the old one
            pipe = ddpm.load(args.checkpoint)
            w = start_options(pipe).cfg_for(parse_label(pipe, args.label) if pipe.conditional else None)
            expect(page.get_by_label("number input for CFG scale (guidance)")).to_have_value(f"{w:g}")
            page.get_by_label("Seed").fill(args.seed)
            page.get_by_label(args.images, exact=True).check()
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#status")).to_contain_text("Done:", timeout=120_000)
            expect(page.locator("#video video")).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Compare guidance scales").click()
            expect(page.locator("#explorer img").first).to_be_visible(timeout=120_000)
            page.wait_for_timeout(800)
            page.screenshot(path=str(out), full_page=True)
            context.close()
    finally:
        demo.close()
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
