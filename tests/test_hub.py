"""ddpm.hub end to end against tests/fake_hub.py: push, pull, pinned revisions, offline, hostile repos, downloads
verified against the Hub's digests, train.py --push-to-hub and deploy-space. No internet: every request goes to a
server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import SpaceCard, snapshot_download
from PIL import Image
from safetensors.torch import load as safetensors_load
from safetensors.torch import load_file, save_file

import ddpm
from ddpm.card import prepare_for_hub
from ddpm.checkpoint import CheckpointError, load_config
from ddpm.model import parameter_count
from ddpm.hub import (
    MAX_HUB_PARAMETERS,
    HubError,
    deploy_space,
    parse_hub_id,
    pinned_version,
    preload_entry,
    push_checkpoint,
    resolve_checkpoint,
    space_files,
    space_requirements,
)

sys.path.insert(0, str(Path(__file__).parent))
from fake_hub import FakeHub, corrupted, front_matter, git_blob_sha1  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_TEST_secret_token_4f2a9c"  # must never show up in an output or an uploaded file
CHECKPOINT_FILES = {"config.json", "model.safetensors", "README.md", "samples.png"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def hub():
    with FakeHub(token=TOKEN) as server:
        yield server


def examples(folder: Path) -> set[str]:
    """The example images training writes beside a checkpoint (examples/*.png), as repo paths."""
    return {p.relative_to(folder).as_posix() for p in (folder / "examples").rglob("*") if p.is_file()}


def pull(source: str, hub: FakeHub, cache: Path) -> Path:
    return resolve_checkpoint(source, endpoint=hub.url, cache_dir=cache, timeout=5)


def push(folder: Path, repo: str, hub: FakeHub, **kwargs) -> str:
    """What `python -m ddpm.hub push` does: the card for the repo (ddpm.card), then the upload (ddpm.hub)."""
    prepare_for_hub(folder, repo)
    return push_checkpoint(folder, repo, endpoint=hub.url, token=TOKEN, **kwargs)


def downloads(hub: FakeHub, name: str) -> list[str]:
    """The GET requests for a file's bytes."""
    return [path for method, path in hub.requests if method == "GET" and "/resolve/" in path and path.endswith(name)]


def subprocess_env(hub_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", **extra)
    return env


def assert_no_token(*texts: str | bytes) -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        assert TOKEN.encode() not in data


# -- ids -------------------------------------------------------------------------------------------
def test_parse_hub_id():
    assert parse_hub_id("user/repo") == ddpm.hub.HubId("user/repo", None)
    assert parse_hub_id("user/repo@v1.0") == ddpm.hub.HubId("user/repo", "v1.0")
    assert str(parse_hub_id("user/repo@refs/pr/1")) == "user/repo@refs/pr/1"
    for bad in ("repo", "user/repo/extra", "/repo", "user/..", "user/re po", "user/repo@"):
        with pytest.raises(ValueError, match="is not a Hub id"):
            parse_hub_id(bad)
    with pytest.raises(ValueError, match="revision"):
        parse_hub_id("user/repo@main", allow_revision=False)


def test_missing_local_folder_is_not_sent_to_the_hub():
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint("no/such/folder/here")


# -- push and pull -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_push_then_pull_into_a_fresh_cache_gives_the_same_model(checkpoint, hub, tmp_path):
    (checkpoint / "evaluation.json").write_text(json.dumps({"accuracy": 0.5}))
    url = push(checkpoint, "user/tiny", hub)
    assert url.startswith(f"{hub.url}/user/tiny/commit/")
    files = hub.files("user/tiny")
    # everything a checkpoint needs, nothing else (no training_state.pt, train_config.json, log.jsonl)
    assert set(files) == CHECKPOINT_FILES | examples(checkpoint) | {"evaluation.json", ".gitattributes"}
    meta = front_matter(files["README.md"].decode())
    assert meta["library_name"] == "ddpm-studio" and meta["license"] == "mit"
    assert meta["tags"] == ["ddpm", "diffusion", "class-conditional-image-generation"]
    assert "![Samples from this model](samples.png)" in files["README.md"].decode()
    assert files["samples.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert all(a == f"Bearer {TOKEN}" for a in hub.authorizations)

    folder = pull("user/tiny", hub, tmp_path / "cache")
    assert folder.is_relative_to(tmp_path / "cache") and folder.name == hub.repo("user/tiny").branches["main"]
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == \
        CHECKPOINT_FILES | examples(checkpoint)
    original, pulled = load_file(checkpoint / "model.safetensors"), load_file(folder / "model.safetensors")
    assert original.keys() == pulled.keys() and all(torch.equal(original[k], pulled[k]) for k in original)
    kwargs = dict(labels=[0, 1, 2], sampler="ddim", steps=10, cfg=2.0, seed=7)
    assert torch.equal(ddpm.load(checkpoint).sample(**kwargs), ddpm.load(folder).sample(**kwargs))
    assert load_config(folder) == load_config(checkpoint)


@pytest.mark.slow
def test_pull_a_pinned_revision_and_a_branch(checkpoint, hub, tmp_path):
    push(checkpoint, "user/tiny", hub)
    first = hub.repo("user/tiny").branches["main"]
    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v + 0.5 for k, v in weights.items()}, checkpoint / "model.safetensors", metadata={"format": "ddpm-studio"})
    push(checkpoint, "user/tiny", hub)
    push(checkpoint, "user/tiny", hub, revision="experiment")  # a branch, created from main
    second = hub.repo("user/tiny").branches["main"]
    assert first != second and hub.repo("user/tiny").branches["experiment"] == second

    cache = tmp_path / "cache"
    old = load_file(pull(f"user/tiny@{first}", hub, cache) / "model.safetensors")
    new = load_file(pull("user/tiny", hub, cache) / "model.safetensors")
    assert all(torch.equal(old[k], weights[k]) for k in weights)
    assert all(torch.equal(new[k], weights[k] + 0.5) for k in weights)
    assert pull("user/tiny@experiment", hub, cache).name == second
    with pytest.raises(CheckpointError, match="no revision 'nope'"):
        pull("user/tiny@nope", hub, cache)


def test_wrong_repo_id_gives_a_clear_error(hub, tmp_path):
    with pytest.raises(CheckpointError, match="the Hub has no model repo 'user/missing'"):
        pull("user/missing", hub, tmp_path / "cache")


# -- offline -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_server_stopped_warm_cache_works_cold_cache_fails_fast(checkpoint, hub, tmp_path):
    push(checkpoint, "user/tiny", hub)
    commit = hub.repo("user/tiny").branches["main"]
    warm = tmp_path / "warm"
    pulled = pull("user/tiny", hub, warm)
    url = hub.url
    hub.stop()

    for source in ("user/tiny", f"user/tiny@{commit}"):
        assert resolve_checkpoint(source, endpoint=url, cache_dir=warm, timeout=5) == pulled
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="cannot reach the Hugging Face Hub .* not in the local cache"):
        resolve_checkpoint("user/tiny", endpoint=url, cache_dir=tmp_path / "cold", timeout=5)
    print(f"cold cache, Hub down: CheckpointError after {time.perf_counter() - start:.3f} s")


@pytest.mark.slow
def test_a_hub_that_never_answers_is_time_boxed(checkpoint, hub, tmp_path):
    """A silent server (connections accepted by the kernel, no reply): the timeout, then the cache or an error."""
    push(checkpoint, "user/tiny", hub)
    warm = tmp_path / "warm"
    pulled = pull("user/tiny", hub, warm)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert resolve_checkpoint("user/tiny", endpoint=url, cache_dir=warm, timeout=1) == pulled
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match="cannot reach the Hugging Face Hub .*Timeout"):
            resolve_checkpoint("user/tiny", endpoint=url, cache_dir=tmp_path / "cold", timeout=1)
        print(f"cold cache, silent Hub, timeout=1: CheckpointError after {time.perf_counter() - start:.2f} s")


@pytest.mark.slow
def test_offline_mode_env_in_a_fresh_process(checkpoint, hub, tmp_path):
    """HF_HUB_OFFLINE=1 / HF_ENDPOINT / HF_HOME are read at import: set them before, in a subprocess."""
    push(checkpoint, "user/tiny", hub)
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    pull("user/tiny", hub, warm / "hub")  # HF_HOME/hub is the default cache
    code = "import ddpm; print(ddpm.load('user/tiny').sample([1], steps=3).shape)"
    ok = subprocess.run([sys.executable, "-c", code], env=subprocess_env(hub.url, warm, HF_HUB_OFFLINE="1"),
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "torch.Size([1, 1, 12, 12])" in ok.stdout and "using the cached copy" in ok.stderr
    start = time.perf_counter()
    bad = subprocess.run([sys.executable, "-m", "ddpm.hub", "pull", "user/tiny"],
                         env=subprocess_env(hub.url, cold, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=120)
    print(f"cold cache, HF_HUB_OFFLINE=1: `python -m ddpm.hub pull` failed after {time.perf_counter() - start:.1f} s")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "error: cannot reach the Hugging Face Hub" in bad.stderr and "not in the local cache" in bad.stderr


# -- hostile or broken repos -------------------------------------------------------------------------
def test_repo_without_config_json(hub, tmp_path):
    hub.add_commit("user/not-ddpm", {"model.safetensors": b"\0" * 64, "README.md": b"# hi\n"})
    with pytest.raises(CheckpointError, match="has no config.json: it is not a ddpm-studio checkpoint"):
        pull("user/not-ddpm", hub, tmp_path / "cache")
    assert not downloads(hub, "model.safetensors")


def test_pickle_weights_are_never_loaded(hub, tmp_path, tiny_checkpoint):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    config = (tiny_checkpoint / "config.json").read_bytes()
    hub.add_commit("user/bin-only", {"config.json": config, "pytorch_model.bin": pickle.dumps(Payload())})
    with pytest.raises(CheckpointError, match=r"no model.safetensors; pickle files \(pytorch_model.bin\) are never loaded"):
        pull("user/bin-only", hub, tmp_path / "cache")
    assert not downloads(hub, "pytorch_model.bin")

    hub.add_commit("user/pickle", {"config.json": config, "model.safetensors": pickle.dumps(Payload())})
    folder = pull("user/pickle", hub, tmp_path / "cache")  # small enough to download, but never unpickled:
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        ddpm.load(folder)
    assert not marker.exists()


def test_tampered_config_is_rejected_before_the_weights_are_downloaded(hub, tmp_path, tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["model"]["base_channels"] = 1_000_000
    weights = (tiny_checkpoint / "model.safetensors").read_bytes()
    hub.add_commit("user/tampered", {"config.json": json.dumps(config).encode(), "model.safetensors": weights})
    with pytest.raises(CheckpointError, match=r"not a usable ddpm-studio checkpoint: .*base_channels=1000000 is not allowed"):
        pull("user/tampered", hub, tmp_path / "cache")
    assert downloads(hub, "config.json") and not downloads(hub, "model.safetensors")


def test_a_valid_but_huge_config_is_rejected_before_the_weights_are_downloaded(hub, tmp_path, tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["model"].update(base_channels=512, channel_mult=[1, 2], num_res_blocks=8, norm_groups=8)
    assert parameter_count(ddpm.ModelConfig.from_dict(config["model"])) > MAX_HUB_PARAMETERS
    hub.add_commit("user/huge-config", {"config.json": json.dumps(config).encode(), "model.safetensors": b"\0" * 64})
    with pytest.raises(CheckpointError, match="-parameter UNet; more than the 200,000,000 accepted from the Hub"):
        pull("user/huge-config", hub, tmp_path / "cache")
    assert not downloads(hub, "model.safetensors")


def test_oversized_files_are_not_downloaded(hub, tmp_path, tiny_checkpoint, monkeypatch):
    config = (tiny_checkpoint / "config.json").read_bytes()
    n = parameter_count(load_config(tiny_checkpoint).model)
    hub.add_commit("user/huge", {"config.json": config, "model.safetensors": b"\0" * (4 * n + (2 << 20))})
    with pytest.raises(CheckpointError, match="model.safetensors; more than the"):
        pull("user/huge", hub, tmp_path / "cache")
    assert not downloads(hub, "model.safetensors")

    monkeypatch.setattr(ddpm.hub.download, "MAX_CARD_FILES_BYTES", 1000)  # the card files are bounded together
    weights = (tiny_checkpoint / "model.safetensors").read_bytes()
    hub.add_commit("user/many-examples", {"config.json": config, "model.safetensors": weights, "other.bin": b"\0" * 5000,
                                          **{f"examples/{i}.png": b"\0" * 300 for i in range(4)}})
    with pytest.raises(CheckpointError, match="1,200-byte set of card files"):
        pull("user/many-examples", hub, tmp_path / "cache")
    assert not downloads(hub, ".png") and not downloads(hub, "other.bin")


# -- verified downloads ------------------------------------------------------------------------------
def commit_checkpoint(hub: FakeHub, repo: str, folder: Path) -> dict[str, bytes]:
    """Commit a checkpoint's files straight to the fake hub (no card drawn: fast): config and weights (LFS), a
    README (a git blob) and an example image (LFS). Returns them."""
    files = {"config.json": (folder / "config.json").read_bytes(),
             "model.safetensors": (folder / "model.safetensors").read_bytes(),
             "README.md": b"---\nlicense: mit\n---\n# tiny\n", "examples/Square/final.png": b"\x89PNG fake" * 8}
    hub.add_commit(repo, files)
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_fake_hub_serves_the_hubs_file_metadata(hub, tiny_checkpoint):
    """LFS files (weights, images) are recorded by sha256 and size, text files by git blob id: as on the real Hub,
    and read back through huggingface_hub's own classes."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    files = commit_checkpoint(hub, "user/tiny", tiny_checkpoint)
    api = HfApi(endpoint=hub.url)
    siblings = {s.rfilename: s for s in api.model_info("user/tiny", files_metadata=True).siblings}
    tree = {f.path: f for f in api.list_repo_tree("user/tiny", recursive=True) if hasattr(f, "blob_id")}
    for name in ("model.safetensors", "examples/Square/final.png"):
        for entry in (siblings[name], tree[name]):
            assert entry.lfs.sha256 == sha256(files[name]) and entry.lfs.size == entry.size == len(files[name])
        head = get_hf_file_metadata(hf_hub_url("user/tiny", name, endpoint=hub.url))
        assert head.etag == sha256(files[name]) and head.size == len(files[name])
    for name in ("config.json", "README.md"):
        assert siblings[name].lfs is None and siblings[name].size == len(files[name])
        assert siblings[name].blob_id == tree[name].blob_id == git_blob_sha1(files[name])


def test_a_tampered_download_of_the_weights_is_refused_and_not_kept(hub, tmp_path, tiny_checkpoint):
    files = commit_checkpoint(hub, "user/tiny", tiny_checkpoint)
    commit = hub.repo("user/tiny").branches["main"]
    bad = hub.tamper("user/tiny", "model.safetensors")
    # the same size and a valid safetensors file of finite weights, only other values: only the digest tells
    good_tensors, bad_tensors = safetensors_load(files["model.safetensors"]), safetensors_load(bad)
    assert len(bad) == len(files["model.safetensors"]) and good_tensors.keys() == bad_tensors.keys()
    assert all(torch.isfinite(t).all() for t in bad_tensors.values())
    assert not all(torch.equal(good_tensors[k], bad_tensors[k]) for k in good_tensors)

    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError) as refused:
        pull("user/tiny", hub, cache)
    assert str(refused.value) == (
        f"the Hub repo 'user/tiny' (commit {commit[:10]}): the downloaded model.safetensors does not match the Hub's "
        f"record of it (sha256 expected {sha256(files['model.safetensors'])[:12]}, got {sha256(bad)[:12]}), so it is "
        "not used: the download was corrupted or the repo changed while downloading. The bad copy was removed from "
        "the cache; run again.")
    print(refused.value)
    assert not [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == bad]

    url = hub.url
    hub.stop()  # nor is the bad copy used offline
    with pytest.raises(CheckpointError, match="not in the local cache"):
        resolve_checkpoint("user/tiny", endpoint=url, cache_dir=cache, timeout=5)
    hub.start()
    hub.tampered.clear()  # the Hub (or the network) is fixed: the same cache downloads the weights again
    folder = pull("user/tiny", hub, cache)
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert ddpm.load(folder).sample([0], steps=2, seed=0).isfinite().all()


@pytest.mark.parametrize("name, digest", [("README.md", "git blob id"), ("examples/Square/final.png", "sha256")])
def test_a_tampered_card_file_is_refused(hub, tmp_path, tiny_checkpoint, name, digest):
    files = commit_checkpoint(hub, "user/tiny", tiny_checkpoint)
    bad = hub.tamper("user/tiny", name)
    cache = tmp_path / "cache"
    expected = git_blob_sha1(files[name]) if digest == "git blob id" else sha256(files[name])
    actual = git_blob_sha1(bad) if digest == "git blob id" else sha256(bad)
    with pytest.raises(CheckpointError, match=re.escape(
            f"the downloaded {name} does not match the Hub's record of it ({digest} expected {expected[:12]}, "
            f"got {actual[:12]})")):
        pull("user/tiny", hub, cache)
    hub.tampered.clear()
    assert (pull("user/tiny", hub, cache) / name).read_bytes() == files[name]


def test_a_bad_file_that_cannot_be_removed_is_named_with_its_cache_entry(hub, tmp_path, tiny_checkpoint, monkeypatch):
    """A read-only cache: the message says which files to delete."""
    commit_checkpoint(hub, "user/tiny", tiny_checkpoint)
    hub.tamper("user/tiny", "README.md")
    monkeypatch.setattr(ddpm.hub.download, "_discard", lambda path: "PermissionError: [Errno 13] Permission denied")
    with pytest.raises(CheckpointError) as refused:
        pull("user/tiny", hub, tmp_path / "cache")
    snapshot = tmp_path / "cache" / "models--user--tiny" / "snapshots" / hub.repo("user/tiny").branches["main"]
    blob = (snapshot / "README.md").resolve()
    assert blob.parent.name == "blobs"
    assert str(refused.value).endswith(
        "The bad copy could not be removed (PermissionError: [Errno 13] Permission denied): clear the cache entry at "
        f"{snapshot / 'README.md'} and {blob}, the blob it links to, then run again.")


def test_a_cached_file_corrupted_on_disk_is_refused_while_online(hub, tmp_path, tiny_checkpoint):
    """Every online pull checks the cached files too (e.g. fetched by an older version or damaged on disk)."""
    files = commit_checkpoint(hub, "user/tiny", tiny_checkpoint)
    cache = tmp_path / "cache"
    weights = pull("user/tiny", hub, cache) / "model.safetensors"
    assert pull("user/tiny", hub, cache) == weights.parent  # a clean warm cache passes
    weights.resolve().write_bytes(corrupted(files["model.safetensors"], "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors does not match the Hub's record of it"):
        pull("user/tiny", hub, cache)
    assert (pull("user/tiny", hub, cache) / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_a_branch_that_moves_during_the_pull_is_verified_against_the_commit_downloaded(hub, tmp_path, tiny_checkpoint,
                                                                                       monkeypatch):
    files = commit_checkpoint(hub, "user/tiny", tiny_checkpoint)
    new_weights = corrupted(files["model.safetensors"], "model.safetensors")  # a legitimate new commit this time
    download = ddpm.hub.download._Snapshots.download

    moved: list[str] = []

    def push_first(self, revision, patterns, **kwargs):  # a push lands between model_info and the first download
        if not moved:
            moved.append(hub.add_commit("user/tiny", {"model.safetensors": new_weights}))
        return download(self, revision, patterns, **kwargs)

    monkeypatch.setattr(ddpm.hub.download._Snapshots, "download", push_first)
    folder = pull("user/tiny", hub, tmp_path / "cache")
    assert folder.name == moved[0] and (folder / "model.safetensors").read_bytes() == new_weights


def test_weights_with_nan_or_inf_from_the_hub_are_refused(hub, tmp_path, nan_checkpoint):
    """The file matches its record (nothing was tampered), so it downloads, and loading refuses it as it refuses the
    local folder (test_checkpoint.py)."""
    name = sorted(load_file(nan_checkpoint / "model.safetensors"))[1]  # the tensor nan_checkpoint broke
    message = f"tensor {name!r} has 3 NaN / inf values; the weights are broken"
    hub.add_commit("user/nan", {"config.json": (nan_checkpoint / "config.json").read_bytes(),
                                "model.safetensors": (nan_checkpoint / "model.safetensors").read_bytes()})
    with pytest.raises(CheckpointError, match=re.escape(message)):
        ddpm.load(pull("user/nan", hub, tmp_path / "cache"))


# -- push errors -------------------------------------------------------------------------------------
def test_push_errors_are_clear(checkpoint, hub, tmp_path):
    with pytest.raises(HubError, match="pushing .* failed: .*401"):
        push_checkpoint(checkpoint, "user/tiny", endpoint=hub.url, token="hf_wrong")
    with pytest.raises(ValueError, match="is not a Hub id"):
        push(checkpoint, "not-an-id", hub)
    with pytest.raises(CheckpointError, match="has no config.json"):
        push(tmp_path, "user/tiny", hub)
    assert not hub.repos


@pytest.mark.slow
def test_a_hand_written_card_is_pushed_as_it_is(checkpoint, hub):
    (checkpoint / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My own card\n")
    push(checkpoint, "user/tiny", hub)
    assert hub.files("user/tiny")["README.md"] == (checkpoint / "README.md").read_bytes()
    assert b"My own card" in hub.files("user/tiny")["README.md"]



def test_push_checkpoint_only_moves_files(checkpoint, hub):
    """The library's push uploads the folder as it is: no card or grid is written into it or the repo."""
    for name in ("README.md", "samples.png"):
        (checkpoint / name).unlink(missing_ok=True)
    push_checkpoint(checkpoint, "user/bare", endpoint=hub.url, token=TOKEN)
    assert not (checkpoint / "README.md").exists() and not (checkpoint / "samples.png").exists()
    assert set(hub.files("user/bare")) == {"config.json", "model.safetensors", ".gitattributes"} | examples(checkpoint)


@pytest.mark.slow
def test_the_push_command_writes_the_card_first(checkpoint, hub, monkeypatch, capsys):
    from ddpm.hub.__main__ import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(sys.modules["ddpm.hub.__main__"], "push_checkpoint",
                        lambda *a, **kw: push_checkpoint(*a, endpoint=hub.url, **kw))
    assert main(["push", str(checkpoint), "user/cli"]) == 0
    card = hub.files("user/cli")["README.md"].decode()
    assert 'ddpm.load("user/cli")' in card and "pushed" in capsys.readouterr().out


@pytest.mark.slow
def test_a_pushed_card_keeps_the_hand_given_rows(checkpoint, hub):
    from ddpm.card import write_model_card

    write_model_card(checkpoint, extra={"compute time": "3 h", "reproduce": "python train.py --out r --resume"})
    push(checkpoint, "user/tiny", hub)
    files = hub.files("user/tiny")
    card = files["README.md"].decode()
    assert "| compute time | 3 h |" in card and "python train.py --out r --resume" in card
    assert 'ddpm.load("user/tiny")' in card  # regenerated for the repo
    assert "card_notes.json" not in files  # the card carries them; the Hub copy needs no notes file

# -- train.py --push-to-hub --------------------------------------------------------------------------
def write_image_folder(root: Path) -> Path:
    """Two classes of 8 tiny grayscale PNGs: a dataset train.py reads as folder:PATH."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 100, (12, 12)) + 150 * c
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_train_py_push_to_hub_end_to_end(hub, tmp_path):
    data, out = write_image_folder(tmp_path / "images"), tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--dataset", f"folder:{data}", "--image-size", "12", "--channels", "1",
           "--preset", "tiny", "--timesteps", "50", "--steps", "4", "--batch-size", "8", "--warmup-steps", "1",
           "--precision", "fp32", "--device", "cpu", "--threads", "1", "--sample-every", "0", "--checkpoint-every", "2",
           "--log-every", "2", "--no-progress", "--out", str(out),
           "--push-to-hub", "user/trained", "--private", "--hub-revision", "v1", "--push-every-checkpoint"]
    run = subprocess.run(cmd, env=subprocess_env(hub.url, tmp_path / "home", HF_TOKEN=TOKEN), capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "pushed" in run.stderr
    repo = hub.repo("user/trained")
    assert repo.private and set(repo.branches) == {"main", "v1"}
    files = hub.files("user/trained", "v1")
    assert set(files) == CHECKPOINT_FILES | examples(out) | {".gitattributes"}
    assert json.loads(files["config.json"])["training"]["steps"] == 4
    messages = [c.message for c in repo.commits.values()]
    assert "Checkpoint at step 2" in messages and "Upload checkpoint at step 4" in messages
    card = files["README.md"].decode()
    assert front_matter(card)["tags"][-1] == "class-conditional-image-generation" and "| steps | 4 |" in card
    assert_no_token(run.stdout, run.stderr, *files.values(), *(p.read_bytes() for p in out.rglob("*") if p.is_file()))

    # pulled in a fresh process through the same env vars the app uses
    code = "import ddpm; p = ddpm.load('user/trained@v1'); print(p.class_names)"
    pulled = subprocess.run([sys.executable, "-c", code], env=subprocess_env(hub.url, tmp_path / "home2", HF_TOKEN=TOKEN),
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert "('dark', 'light')" in pulled.stdout


@pytest.mark.slow
def test_train_py_without_a_token_fails_before_training(hub, tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "--dataset", "mnist-5k", "--out", str(tmp_path / "run"),
           "--push-to-hub", "user/x"]
    run = subprocess.run(cmd, env=subprocess_env(hub.url, tmp_path / "empty-home"), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and "needs a token with write access: set HF_TOKEN" in run.stderr
    assert not (tmp_path / "run").exists() and not hub.requests


# -- deploy-space ------------------------------------------------------------------------------------
def fake_project(root: Path, checkpoint: Path) -> Path:
    """A project tree with the files a Space needs and the clutter it must not get."""
    shutil.copytree(ROOT / "ddpm", root / "ddpm", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "ddpm" / "__pycache__").mkdir()
    (root / "ddpm" / "__pycache__" / "hub.cpython-311.pyc").write_bytes(b"junk")
    (root / "app.py").write_text("import os\nprint(os.environ.get('DDPM_HUB_REPO'))\n")
    (root / "app_layout.py").write_text("LAYOUT = 1\n")
    shutil.copy(ROOT / "requirements.txt", root / "requirements.txt")
    ckpt = root / "checkpoints" / "fashion-mnist"
    ckpt.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "training_state.pt", "train_config.json", "log.jsonl"):
        shutil.copy(checkpoint / name, ckpt / name)
    (ckpt / "README.md").write_text("# card\n")
    (ckpt / "samples.png").write_bytes(b"\x89PNG fake")
    (ckpt / "examples" / "sneaker").mkdir(parents=True)
    (ckpt / "examples" / "sneaker" / "final.png").write_bytes(b"\x89PNG fake")
    (ckpt / "samples").mkdir()
    (ckpt / "samples" / "step_0000001.png").write_bytes(b"\x89PNG fake")
    for clutter in ("tests/test_x.py", "runs/a/log.jsonl", ".pytest_cache/x", "checkpoints/other/config.json",
                    ".gradio/cache.bin", "notes.md"):
        (root / clutter).parent.mkdir(parents=True, exist_ok=True)
        (root / clutter).write_text("clutter")
    return root


@pytest.mark.slow
def test_deploy_space_uploads_exactly_the_space_files(checkpoint, hub, tmp_path):
    push(checkpoint, "user/tiny", hub)
    root = fake_project(tmp_path / "project", checkpoint)
    ddpm_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ddpm").rglob("*.py") if "__pycache__" not in p.parts}
    expected = {"README.md", "app.py", "app_layout.py", "requirements.txt", *ddpm_files,
                *(f"checkpoints/fashion-mnist/{n}" for n in ("config.json", "model.safetensors", "README.md",
                                                             "samples.png", "examples/sneaker/final.png"))}
    assert set(space_files(root)) | {"README.md"} == expected

    cmd = [sys.executable, "-m", "ddpm.hub", "deploy-space", "user/studio", "--model", "user/tiny@v1", "--root", str(root)]
    env = subprocess_env(hub.url, tmp_path / "home", HF_TOKEN=TOKEN)
    hub.repo("user/tiny").branches["v1"] = hub.repo("user/tiny").branches["main"]  # deploy checks the revision exists
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    space = hub.repo("user/studio", "space")
    files = hub.files("user/studio", repo_type="space")
    assert set(files) == expected | {".gitattributes"}
    assert hub.pushed_paths("user/studio", "space") == expected
    assert files["app.py"] == (root / "app.py").read_bytes()
    assert files["checkpoints/fashion-mnist/model.safetensors"] == (checkpoint / "model.safetensors").read_bytes()
    meta = front_matter(files["README.md"].decode())
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["python_version"] == "3.11"
    assert meta["sdk_version"] == pinned_version((ROOT / "requirements.txt").read_text(), "gradio")
    assert meta["models"] == ["user/tiny"] and meta["colorFrom"] and meta["colorTo"] and meta["title"] and meta["emoji"]
    commit = hub.repo("user/tiny").branches["v1"]  # the branch given is pinned to its commit
    assert meta["preload_from_hub"][0].endswith(f" {commit}")
    assert space.sdk == "gradio" and space.variables["DDPM_HUB_REPO"]["value"] == f"user/tiny@{commit}"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in files["requirements.txt"].decode()
    assert_no_token(run.stdout, run.stderr, *files.values())

    # a second deploy makes the tree exact again: files gone locally are deleted from the Space
    shutil.rmtree(root / "checkpoints" / "fashion-mnist" / "examples")
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert set(hub.files("user/studio", repo_type="space")) == (expected | {".gitattributes"}) - {
        "checkpoints/fashion-mnist/examples/sneaker/final.png"}


def test_deploy_space_checks_its_inputs(checkpoint, hub, tmp_path):
    root = fake_project(tmp_path / "project", checkpoint)
    with pytest.raises(HubError, match="the Hub has no model 'user/missing'"):
        deploy_space("user/studio", model="user/missing", root=root, endpoint=hub.url, token=TOKEN)
    hub.add_commit("user/pickles", {"README.md": b"# card\n", "pytorch_model.bin": b"pickle"})
    with pytest.raises(HubError, match="'user/pickles' is not a ddpm-studio checkpoint on the Hub"):
        deploy_space("user/studio", model="user/pickles", root=root, endpoint=hub.url, token=TOKEN)
    (root / "app.py").unlink()
    with pytest.raises(ValueError, match="app.py' not found"):
        deploy_space("user/studio", model="user/tiny", root=root, endpoint=hub.url, token=TOKEN)
    with pytest.raises(ValueError, match="pins no gradio version"):
        pinned_version("torch==2.0\ngradio>=6\n", "gradio")
    assert ("space", "user/studio") not in hub.repos


def test_the_deployed_space_preloads_the_pinned_model_and_starts_from_the_cache(checkpoint, hub, tmp_path):
    """deploy-space pins the model to its commit: the README (read with huggingface_hub's SpaceCard) preloads that
    commit's checkpoint files, and the app's DDPM_HUB_REPO then resolves from the cache with no request to the Hub."""
    model = {p.relative_to(checkpoint).as_posix(): p.read_bytes() for p in checkpoint.rglob("*")
             if p.is_file() and (p.name in ("config.json", "model.safetensors") or "examples" in p.parts)}
    assert any(name.startswith("examples/") for name in model)
    commit = hub.add_commit("user/tiny", {**model, "README.md": b"# card\n", "notes.txt": b"not preloaded"})
    root = fake_project(tmp_path / "project", checkpoint)
    deploy_space("user/studio", model="user/tiny", root=root, endpoint=hub.url, token=TOKEN)
    files = hub.files("user/studio", repo_type="space")
    card = SpaceCard(files["README.md"].decode())
    assert card.data.sdk == "gradio" and card.data.models == ["user/tiny"]
    assert card.data.tags == ["diffusion", "ddpm", "image-generation", "education", "gradio"]
    assert card.data.get("suggested_hardware") == "cpu-basic"
    preload = sorted([*model, "README.md"])
    assert card.data.get("preload_from_hub") == [f"user/tiny {','.join(preload)} {commit}"]
    variable = hub.repo("user/studio", "space").variables["DDPM_HUB_REPO"]["value"]
    assert variable == f"user/tiny@{commit}"

    # the Space's build: "repo_id files commit" downloaded into the Hugging Face cache (HF_HOME of the Space)
    repo_id, names, revision = card.data.get("preload_from_hub")[0].split(" ")
    cache = tmp_path / "space-cache"
    snapshot_download(repo_id, revision=revision, allow_patterns=names.split(","), cache_dir=cache, endpoint=hub.url)
    hub.add_commit("user/tiny", {"config.json": b"{}"})  # a later push does not change what the Space shows
    before = len(hub.requests)
    folder = resolve_checkpoint(variable, endpoint=hub.url, cache_dir=cache, timeout=5)  # what app.py's load runs
    assert len(hub.requests) == before and folder.name == commit
    assert load_config(folder) == load_config(checkpoint)


def test_the_spaces_requirements_use_cpu_only_torch():
    """The Space installs PyTorch's CPU-only wheels (not install-tested here: no route to that index)."""
    project = (ROOT / "requirements.txt").read_text()
    text = space_requirements(project)
    lines = text.splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert lines.index("--extra-index-url https://download.pytorch.org/whl/cpu") < lines.index(
        f"torch=={pinned_version(project, 'torch')}+cpu")
    assert pinned_version(text, "torch") == pinned_version(project, "torch") + "+cpu"
    assert pinned_version(text, "torchvision") == pinned_version(project, "torchvision") + "+cpu"
    for package in ("gradio", "huggingface_hub", "numpy"):  # everything else as pinned
        assert pinned_version(text, package) == pinned_version(project, package)
    assert space_requirements("torch == 2.3.0  # the network\npillow==10.0\n").splitlines()[-2:] == [
        "torch == 2.3.0+cpu  # the network", "pillow==10.0"]
    with pytest.raises(ValueError, match="pins no torch version"):
        space_requirements("torch>=2\n")


def test_preload_entries_name_files_and_a_commit():
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert preload_entry("user/tiny") == "user/tiny"
    assert preload_entry(f"user/tiny@{commit}", ["config.json", "model.safetensors"]) == (
        f"user/tiny config.json,model.safetensors {commit}")
    with pytest.raises(ValueError, match="pins a commit, not a branch or tag"):
        preload_entry("user/tiny@v1", ["config.json"])
    with pytest.raises(ValueError, match="names its files"):
        preload_entry(f"user/tiny@{commit}")



def test_the_space_gets_every_local_module_the_app_imports():
    """A module app.py imports from the project's top level (not ddpm/, shipped whole) must be in the Space."""
    import ast

    tree = ast.parse((ROOT / "app.py").read_text(encoding="utf-8"))
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    local = {f"{n}.py" for n in names if (ROOT / f"{n}.py").is_file()}
    assert local, "app.py imports no top-level module: update this test"
    assert local <= set(space_files(ROOT)), local - set(space_files(ROOT))
