"""Speed of the app on this machine: the figures the README quotes for app.py.

    python bench/bench_app.py                                   # checkpoints/fashion-mnist
    python bench/bench_app.py --checkpoint runs/fashion-mnist --repeats 5
    python bench/bench_app.py --repeats 1 --steps 5                # a quick check that it runs

Measured in ONE process, interleaved, so the ratio holds on a noisy machine:
  * click -> first streamed frame: through the HTTP API of the running app (POST /gradio_api/call/generate,
    then the server-sent events until the first one that carries an x_t image), and in-process (the handler's
    first yield with an image);
  * a 4x4 grid at 50 steps with the checkpoint's recommended sampler, spacing, guidance interval and the class's
    CFG scale (what a click on Generate runs): the app's handler
    (ddpm.handlers.generate on the torch thread) from start to its last update (PNG, GIF and MP4 written), the same
    request through the HTTP API, and the bare sampler loop (Pipeline.stream run to the end) with the same precision;
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
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import app  # noqa: E402
from ddpm import handlers  # noqa: E402
from ddpm.allocator import tune_allocator  # noqa: E402
from ddpm.checkpoint import CheckpointConfig, save_checkpoint  # noqa: E402
from ddpm.data import FASHION_MNIST_CLASSES  # noqa: E402
from ddpm.device import bf16_supported  # noqa: E402
from ddpm.model import UNet, preset_config  # noqa: E402
from ddpm.registry import ModelRegistry  # noqa: E402
from ddpm.schedule import ScheduleConfig  # noqa: E402
from ddpm.samplers import run_to_end  # noqa: E402
from ddpm.studio import parse_request  # noqa: E402
from ddpm.torch_thread import torch_thread  # noqa: E402

FIELDS = ("label", "cfg", "steps", "seed", "n_images", "sampler", "eta", "precision", "limit_guidance", "spacing",
          "redraws")  # the /generate endpoint's order after the model
RUNS_DIR = Path(tempfile.gettempdir()) / "ddpm-bench-app-runs"


def stand_in_checkpoint() -> str:
    """A randomly initialised 'small' model in a temporary folder (for timing only)."""
    folder = Path(tempfile.mkdtemp(prefix="bench_app_"))
    model_cfg = preset_config("small")
    config = CheckpointConfig(model=model_cfg, schedule=ScheduleConfig(name="cosine"), dataset="fashion-mnist",
                              class_names=FASHION_MNIST_CLASSES)
    save_checkpoint(folder, UNet(model_cfg), config)
    return str(folder)


def inprocess_run(registry: ModelRegistry, model: str, request: dict) -> tuple[float, float]:
    """(seconds to the first update carrying an image, seconds to the last) of ddpm.handlers.generate, run on the
    torch thread as the app runs it (without the app's mapping onto components, which costs next to nothing)."""
    tt = torch_thread()
    t0 = time.perf_counter()
    first = None
    for u in tt.iterate(tt.call(handlers.generate, registry, model, **request, runs_dir=RUNS_DIR)):
        if first is None and isinstance(u, handlers.Live) and u.x_t is not None:
            first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


SESSION = uuid.uuid4().hex  # one session for every HTTP run, as a page (its load event) or a gradio_client has


def http_run(url: str, model: str, request: dict) -> tuple[float, float]:
    """(seconds to the first server-sent event with an image, seconds to the end) through the HTTP API. Without a
    session_hash gradio would build a new session per call (~20 ms before the run starts here), which neither the
    page nor gradio_client does."""
    data = [model, *(request[k] for k in FIELDS)]
    t0 = time.perf_counter()
    req = urllib.request.Request(f"{url}gradio_api/call/generate",
                                 data=json.dumps({"data": data, "session_hash": SESSION}).encode(),
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
            elif line.startswith("data:") and event == "generating" and first is None and "data:image/png" in line:
                first = time.perf_counter() - t0
            elif line.startswith("data:") and event in ("complete", "error"):
                if event == "error":
                    raise RuntimeError(line)
                break
    return first, time.perf_counter() - t0


def bare_run(pipe, request) -> float:
    t0 = time.perf_counter()
    torch_thread().call(run_to_end, request.stream(pipe))  # where the app samples
    return time.perf_counter() - t0


def idle_load(demo, *, seconds: float) -> tuple[float, float]:
    """(% of a core this process uses while the app waits for requests, the same with gradio's own 1 ms queue poll):
    what a hosted app costs with nobody there."""
    out = []
    for poll in (app.QUEUE_POLL_S, 0.001):
        app.calm_queue(demo, poll)
        time.sleep(0.2)
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(seconds)
        out.append(100 * (time.process_time() - c0) / (time.perf_counter() - t0))
    app.calm_queue(demo)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/fashion-mnist")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=50, help="denoising steps of the request (fewer: a quick check)")
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
    registry = ModelRegistry([model])  # the in-process runs' own, loaded on the torch thread like the app's
    view = torch_thread().call(handlers.select_model, registry, model, fallback=model)
    pipe = registry.get(model)
    # what a click on Generate uses: the controls' start (the checkpoint's recommendation) at this class's scale
    class_index = min(7, len(view.labels) - 1) if view.conditional else None
    o = view.options
    request = dict(label=view.labels[class_index] if view.conditional else None, cfg=o.cfg_for(class_index),
                   steps=args.steps, seed=0, n_images=16, sampler=o.sampler, eta=o.eta, precision=o.precision,
                   limit_guidance=view.interval is not None, spacing=o.spacing,
                   redraws=o.redraws if args.redraws is None else args.redraws)
    checked = torch_thread().call(parse_request, pipe, **request)  # its bf16 probe runs a convolution
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"

    params = sum(t.numel() for t in pipe.model.parameters())
    print(f"model {model}{note}: {params / 1e6:.2f}M parameters, T = {pipe.T}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast "
          f"{'available' if bf16_supported(torch.device('cpu')) else 'not available'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"request (the app's defaults, 16 images): {checked.describe()}")

    idle_cpu = idle_load(demo, seconds=3.0)
    inprocess_run(registry, model, request)  # warm-up (first-call costs: allocator, PNG/MP4 encoders)
    http_run(url, model, request)
    results: dict[str, list[float]] = {k: [] for k in ("bare", "app", "app_first", "http", "http_first")}
    for _ in range(args.repeats):
        results["bare"].append(bare_run(pipe, checked))
        first, total = inprocess_run(registry, model, request)
        results["app_first"].append(first)
        results["app"].append(total)
        first, total = http_run(url, model, request)
        results["http_first"].append(first)
        results["http"].append(total)
    demo.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    # each round's own ratios (bare, handler and HTTP run back to back): their median follows the machine's drift
    paired = {k: statistics.median(a / b for a, b in zip(results[k], results["bare"])) for k in ("app", "http")}
    print()
    print(f"click -> first streamed frame   HTTP API {med['http_first'] * 1000:6.0f} ms   "
          f"in-process {med['app_first'] * 1000:6.0f} ms")
    print(f"{f'4x4 grid, {args.steps} steps':<31}bare sampler loop {med['bare']:5.2f} s   app handler {med['app']:5.2f} s   "
          f"HTTP API {med['http']:5.2f} s")
    print(f"app overhead over the bare loop  {(med['app'] / med['bare'] - 1) * 100:+.1f}% in-process, "
          f"{(med['http'] / med['bare'] - 1) * 100:+.1f}% through HTTP "
          f"(ratio {med['app'] / med['bare']:.3f} / {med['http'] / med['bare']:.3f})")
    best = {k: min(v) for k, v in results.items()}
    print(f"best of {args.repeats} (the machine at its quietest): first frame HTTP {best['http_first'] * 1000:.0f} ms; "
          f"bare {best['bare']:.2f} s, handler {best['app']:.2f} s, HTTP {best['http']:.2f} s "
          f"(ratio {best['app'] / best['bare']:.3f} / {best['http'] / best['bare']:.3f})")
    print(f"idle app (no requests): {idle_cpu[0]:.1f}% of a core (queue poll {app.QUEUE_POLL_S * 1000:.0f} ms; "
          f"gradio's 1 ms poll: {idle_cpu[1]:.1f}%)")
    print(f"median of each round's own ratio: {paired['app']:.3f} in-process, {paired['http']:.3f} through HTTP")
    print(f"(medians of {args.repeats}; all runs: " + ", ".join(f"{k} {[round(x, 3) for x in v]}"
                                                             for k, v in results.items()) + ")")


if __name__ == "__main__":
    main()
