"""Carry a training run to another machine through git: pack its folder into parts small enough to commit.

    python scripts/carry_run.py pack runs/fm-medium carry/fm-medium        # then git add carry/fm-medium
    python scripts/carry_run.py unpack carry/fm-medium runs/fm-medium      # on the new machine, then train.py --resume

A run's `training_state.pt` (weights, EMA, AdamW moments: 16 bytes per parameter, 66 MB for the `medium` preset)
is what `train.py --resume` needs, and `runs/` is git-ignored: a machine that starts fresh loses it. `pack` writes
the folder (without its sample grids) as a gzipped tar cut into parts of at most --part-mib MiB, plus MANIFEST.json
with every part's size and SHA-256; `unpack` checks them all before it writes anything, then extracts. Commit the
parts once per move and delete them (git rm) when the run is finished: every commit of them stays in the history.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

MANIFEST = "MANIFEST.json"
SKIP_DIRS = ("samples",)  # sample grids: large, and training does not read them back
DEFAULT_PART_MIB = 20.0


class CarryError(RuntimeError):
    """A pack or unpack that cannot be done; the message says why and what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _last_step(run: Path) -> int | None:
    """The step the run's checkpoint holds: config.json's training record (written with the state), else the
    last log line (a run stopped by a signal between log lines saved a later step than its log shows)."""
    try:
        return int(json.loads((run / "config.json").read_text())["training"]["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log = run / "log.jsonl"
    if not log.exists():
        return None
    for line in reversed(log.read_text().splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def pack(run: str | Path, dst: str | Path, *, part_mib: float = DEFAULT_PART_MIB) -> dict:
    """Write run's files as DST/part-NNN (each <= part_mib MiB) and DST/MANIFEST.json; returns the manifest.

    DST is replaced as a whole (its old parts would otherwise linger beside fewer new ones).
    """
    run, dst = Path(run), Path(dst)
    if not (run / "training_state.pt").is_file():
        raise CarryError(f"{str(run)!r} has no training_state.pt: not a run folder that --resume can continue")
    if part_mib <= 0:
        raise CarryError(f"--part-mib must be > 0, got {part_mib}")
    part_bytes = int(part_mib * 2**20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(run.rglob("*")):
            rel = path.relative_to(run)
            if path.is_file() and rel.parts[0] not in SKIP_DIRS:
                tar.add(path, arcname=str(rel))
    data = buf.getvalue()
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts = []
    for i, start in enumerate(range(0, len(data), part_bytes)):
        chunk = data[start:start + part_bytes]
        name = f"part-{i:03d}"
        (tmp / name).write_bytes(chunk)
        parts.append({"name": name, "bytes": len(chunk), "sha256": _sha256(chunk)})
    manifest = {"run": run.name, "step": _last_step(run), "format": "tar.gz", "bytes": len(data),
                "sha256": _sha256(data), "parts": parts}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return manifest


def unpack(src: str | Path, run: str | Path, *, force: bool = False) -> dict:
    """Check every part of SRC against its manifest, then extract the run into RUN; returns the manifest."""
    src, run = Path(src), Path(run)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
        parts = manifest["parts"]
    except FileNotFoundError as e:
        raise CarryError(f"{str(src)!r} has no {MANIFEST}: not a folder written by `carry_run.py pack`") from e
    except (ValueError, KeyError, TypeError) as e:
        raise CarryError(f"{src / MANIFEST} is not a valid manifest: {e}") from e
    chunks = []
    for p in parts:
        path = src / p["name"]
        if not path.is_file():
            raise CarryError(f"{path} is missing ({len(parts)} parts listed in {MANIFEST})")
        chunk = path.read_bytes()
        if len(chunk) != p["bytes"] or _sha256(chunk) != p["sha256"]:
            raise CarryError(f"{path} does not match {MANIFEST} (size or SHA-256 differs): damaged or from "
                             "another pack; pack the run again")
        chunks.append(chunk)
    data = b"".join(chunks)
    if _sha256(data) != manifest["sha256"]:
        raise CarryError(f"the parts in {str(src)!r} do not join into the packed file; pack the run again")
    if (run / "training_state.pt").exists() and not force:
        raise CarryError(f"{str(run)!r} already holds a training state; pass --force to overwrite it")
    run.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(run, filter="data")  # "data": no absolute paths, no links out of RUN
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="run folder -> committable parts")
    a.add_argument("run")
    a.add_argument("dst")
    a.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB, help="largest part, in MiB")
    b = sub.add_parser("unpack", help="parts -> run folder")
    b.add_argument("src")
    b.add_argument("run")
    b.add_argument("--force", action="store_true", help="overwrite a training state already in RUN")
    args = p.parse_args(argv)
    try:
        if args.command == "pack":
            m = pack(args.run, args.dst, part_mib=args.part_mib)
            print(f"packed {args.run} (step {m['step']}) into {len(m['parts'])} part(s) of at most "
                  f"{args.part_mib:g} MiB in {args.dst}: {m['bytes'] / 2**20:.1f} MiB")
        else:
            m = unpack(args.src, args.run, force=args.force)
            print(f"unpacked {m['run']} (step {m['step']}) into {args.run}: continue it with "
                  f"python train.py --out {args.run} --resume")
    except CarryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
