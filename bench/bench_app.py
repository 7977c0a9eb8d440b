"""Speed of the app on this machine: the figures the README quotes for app.py.

    python bench/bench_app.py                                   # checkpoints/fashion-mnist
    python bench/bench_app.py --checkpoint runs/fashion-mnist --repeats 5

Measured in ONE process, interleaved, so the ratio holds on a noisy machine:
  * click -> first streamed frame: through the HTTP API of the running app (POST /gradio_api/call/generate,
    then the server-sent events until the first one that carries an x_t image), and in-process (the handler's
    first yield with an image);
  * a 4x4 grid at 50 steps with the checkpoint's recommended sampler, spacing, guidance interval and the class's
    CFG scale (what a click on Generate runs): the app's handler
    from start to its last yield (PNG, GIF and MP4 written), the same request through the HTTP API, and the bare sampler loop (Pipeline.stream run to the end)
    with the same precision;
  * the app's overhead over the bare loop (streaming, frame recording, encoding) as a ratio.

Figures are medians over --repeats runs after a warm-up. Without the checkpoint a randomly initialised model of
the "small" preset stands in (same speed, noise images) and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import app  # noqa: E402
import ddpm  # noqa: E402
from ddpm.allocator import tune_allocator  # noqa: E402
from ddpm.samplers import run_to_end  # noqa: E402
from ddpm.studio import bf16_available, parse_run  # noqa: E402
from ddpm.torch_thread import torch_thread  # noqa: E402

FIELDS = ("cfg", "steps", "seed", "n_images", "sampler", "eta", "precision", "limit_guidance", "spacing",
          "redraws")  # the handler's order


def stand_in_checkpoint() -> str:
    """A randomly initialised 'small' model in a temporary folder (for timing only)."""
    from ddpm.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm.data import FASHION_MNIST_CLASSES
    from ddpm.model import UNet, preset_config
    from ddpm.schedule import ScheduleConfig

    folder = Path(tempfile.mkdtemp(prefix="bench_app_"))
    model_cfg = preset_config("small")
    config = CheckpointConfig(model=model_cfg, schedule=ScheduleConfig(name="cosine"), dataset="fashion-mnist",
                              class_names=FASHION_MNIST_CLASSES)
    save_checkpoint(folder, UNet(model_cfg), config)
    return str(folder)


def handler(demo, api_name: str):
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def inprocess_run(demo, model: str, label: str, request: dict) -> tuple[float, float]:
    """(seconds to the first yield carrying an image, seconds to the last yield) of the generate handler."""
    t0 = time.perf_counter()
    first = None
    for out in handler(demo, "generate")(model, label, *(request[k] for k in FIELDS)):
        if first is None and any(getattr(k, "elem_id", None) == "live-xt" for k in out):
            first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


def http_run(url: str, model: str, label: str, request: dict) -> tuple[float, float]:
    """(seconds to the first server-sent event with an image, seconds to the end) through the HTTP API."""
    data = [model, label, *(request[k] for k in FIELDS)]
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}gradio_api/call/generate", data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        event_id = json.load(r)["event_id"]
    first = None
    event = ""
    with urllib.request.urlopen(f"{url}gradio_api/call/generate/{event_id}", timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "generating" and first is None and ".png" in line:
                first = time.perf_counter() - t0
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(line)
                break
    return first, time.perf_counter() - t0


def bare_run(pipe, run) -> float:
    t0 = time.perf_counter()
    torch_thread().call(run_to_end, pipe.stream(run.labels(), **run.stream_kwargs()))  # where the app samples
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/fashion-mnist")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--redraws", type=int, default=None,
                   help="redraw rounds of the request (default: the checkpoint's recommendation)")
    args = p.parse_args(argv)
    tune_allocator()  # as app.py does
    if args.threads:
        torch.set_num_threads(args.threads)

    model = args.checkpoint
    note = ""
    if not (Path(model) / "config.json").exists():
        model = stand_in_checkpoint()
        note = f" (stand-in: {args.checkpoint} not found; random 'small' weights)"
    demo = app.build_demo(model, checkpoints_dir=str(Path(model).parent))
    pipe = torch_thread().call(ddpm.load, model)  # on the app's torch thread, like its own models
    class_index = min(7, len(pipe.label_names) - 1)
    label = app.label_choices(pipe)[class_index] if pipe.conditional else None
    # what a click on Generate uses: the checkpoint's recommended sampler, spacing, interval and this class's scale
    defaults = app._defaults(pipe)
    cfg = defaults["class_cfg"][class_index] if defaults["class_cfg"] else defaults["cfg"]
    request = dict(cfg=cfg, steps=50, seed=0, n_images=16, sampler=defaults["sampler"], eta=defaults["eta"],
                   precision="auto", limit_guidance=defaults["interval"] is not None, spacing=defaults["spacing"],
                   redraws=defaults["redraws"] if args.redraws is None else args.redraws)
    run = torch_thread().call(parse_run, pipe, label=label, **request)  # its bf16 probe runs a convolution
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"

    params = sum(t.numel() for t in pipe.model.parameters())
    print(f"model {model}{note}: {params / 1e6:.2f}M parameters, T = {pipe.T}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast "
          f"{'available' if bf16_available() else 'not available'}, load average {os.getloadavg()[0]:.2f}")
    print(f"request (the app's defaults, 16 images): {run.describe()}")

    inprocess_run(demo, model, label, request)  # warm-up (first-call costs: allocator, PNG/MP4 encoders)
    http_run(url, model, label, request)
    results: dict[str, list[float]] = {k: [] for k in ("bare", "app", "app_first", "http", "http_first")}
    for _ in range(args.repeats):
        results["bare"].append(bare_run(pipe, run))
        first, total = inprocess_run(demo, model, label, request)
        results["app_first"].append(first)
        results["app"].append(total)
        first, total = http_run(url, model, label, request)
        results["http_first"].append(first)
        results["http"].append(total)
    demo.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"click -> first streamed frame   HTTP API {med['http_first'] * 1000:6.0f} ms   "
          f"in-process {med['app_first'] * 1000:6.0f} ms")
    print(f"4x4 grid, 50 steps             bare sampler loop {med['bare']:5.2f} s   app handler {med['app']:5.2f} s   "
          f"HTTP API {med['http']:5.2f} s")
    print(f"app overhead over the bare loop  {(med['app'] / med['bare'] - 1) * 100:+.1f}% in-process, "
          f"{(med['http'] / med['bare'] - 1) * 100:+.1f}% through HTTP "
          f"(ratio {med['app'] / med['bare']:.3f} / {med['http'] / med['bare']:.3f})")
    print(f"(medians of {args.repeats}; all runs: " + ", ".join(f"{k} {[round(x, 3) for x in v]}"
                                                             for k, v in results.items()) + ")")


if __name__ == "__main__":
    main()
