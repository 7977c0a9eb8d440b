"""README.md and docs/: the Space front matter matches what is pinned, the two commands are the ones CI and users
run, every command, flag, link and layout row points at something that exists, and the models' facts are theirs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from ddpm.checkpoint import load_config
from ddpm.evaluate import row_options
from ddpm.hub import pinned_version
from ddpm.registry import local_checkpoints

ROOT = Path(__file__).resolve().parents[1]
MAX_README_LINES = 250
USAGE_DOCS = ("README.md", "docs/training.md", "docs/app.md")  # pages whose commands must run as written today


def readme() -> str:
    return (ROOT / "README.md").read_text()


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "research" / "README.md"]


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next heading of level 2 or higher)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", text, flags=re.S | re.M)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def test_front_matter_is_a_gradio_space_on_the_pinned_gradio():
    text = readme()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    requirements = (ROOT / "requirements.txt").read_text()
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == pinned_version(requirements, "gradio")
    assert meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    assert str(meta["python_version"]) == "3.11"
    assert meta["license"] == "mit" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    for key in ("title", "emoji", "colorFrom", "colorTo", "short_description"):
        assert meta.get(key), key


def test_the_two_commands_come_first_and_ci_runs_the_test_command():
    body = readme().split("---\n", 2)[2]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    run_app, run_tests = blocks[0].strip(), blocks[1].strip()
    assert run_app == "pip install -r requirements.txt && python app.py"
    assert run_tests == "bash scripts/test.sh"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == run_tests
    assert (ROOT / "scripts" / "test.sh").is_file()


def test_the_readme_is_short():
    lines = readme().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {MAX_README_LINES})"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_github_anchor_matches_githubs_rule():
    assert github_anchor("The experiment log: the run's checkpoints and what came after") == \
        "the-experiment-log-the-runs-checkpoints-and-what-came-after"
    assert github_anchor("On GPUs and several machines (torchrun)") == "on-gpus-and-several-machines-torchrun"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_image_resolves(page):
    """Relative links and images of README.md and docs/ point at files that exist, and #anchors at headings."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.relative_to(ROOT)} links to #{anchor}, not a heading there"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in re.findall(r"\]\(([^)\s#]+)[^)]*\)", readme())}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


def commands(page: Path) -> list[list[str]]:
    """The command lines of a page's plain and bash code blocks (continuations joined, comments dropped)."""
    out = []
    for language, block in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), flags=re.S | re.M):
        if language not in ("", "bash"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line.replace("&&", " && ")))
    return out


_HELP: dict[tuple[str, str | None], str] = {}


def cli_help(target: str, subcommand: str | None, capsys) -> str:
    """The --help text of train.py or `python -m ddpm.X [subcommand]`, run in this process."""
    if (target, subcommand) in _HELP:
        return _HELP[target, subcommand]
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(target).stem, ROOT / target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        module.main([subcommand, "--help"] if subcommand else ["--help"])
    assert exit_info.value.code == 0
    _HELP[target, subcommand] = capsys.readouterr().out
    return _HELP[target, subcommand]


@pytest.mark.parametrize("doc", USAGE_DOCS)
def test_the_documented_commands_exist_with_their_flags(doc, capsys):
    """Every `python X.py`, `python -m ddpm.X`, `torchrun ... train.py` and `bash scripts/X` names a file that
    exists, and every --flag given to train.py or a ddpm CLI is one its --help lists."""
    checked = 0
    for tokens in commands(ROOT / doc):
        for i, word in enumerate(tokens):
            if word == "-m" and tokens[i + 1].startswith("ddpm."):
                target = tokens[i + 1]
                path = ROOT / target.replace(".", "/")
                if (path / "__main__.py").is_file():  # a package run with -m runs its __main__
                    target += ".__main__"
                else:
                    assert path.with_suffix(".py").is_file(), f"{doc}: no module {target}"
                rest = tokens[i + 2:]
                sub = rest[0] if target.startswith("ddpm.hub") else None
            elif word.endswith(".py") and (i > 0 and tokens[i - 1] in ("python", "python3") or word == "train.py"):
                target, rest, sub = word, tokens[i + 1:], None
                assert (ROOT / target).is_file(), f"{doc}: no file {target}"
            elif word == "bash" and i + 1 < len(tokens):
                assert (ROOT / tokens[i + 1]).is_file(), f"{doc}: no file {tokens[i + 1]}"
                break
            else:
                continue
            flags = [w.split("=")[0] for w in rest if w.startswith("--")]
            if flags and target != "app.py":  # app.py imports gradio; its flags are checked in tests/test_app.py
                text = cli_help(target, sub, capsys)
                for flag in flags:
                    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{doc}: {target} has no {flag}"
                checked += 1
            break
    assert checked, f"{doc}: no command with flags found"


def test_the_layout_table_is_true_to_the_tree():
    """Every path the layout table names exists, and every module and subpackage of ddpm/ and every top-level
    folder is in it."""
    table = section(readme(), "Layout")
    named = set()
    for row in re.findall(r"^\| (.+?) \|", table, flags=re.M):
        named.update(re.findall(r"`([^`]+)`", row))
    assert named, "no layout table"
    for path in named:
        assert (ROOT / path).exists(), f"the layout table names {path}, which does not exist"
    modules = [f"ddpm/{m.name}" for m in (ROOT / "ddpm").glob("*.py")]
    modules += [f"ddpm/{m.parent.name}/" for m in (ROOT / "ddpm").glob("*/__init__.py")]
    for module in sorted(modules):
        assert module in named, f"{module} is missing from the layout table"
    for folder in ("bench", "checkpoints", "docs", "research", "scripts", "tests"):
        assert f"{folder}/" in named, f"{folder}/ is missing from the layout table"


SAMPLER_NAMES = {"ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)", "ddpm": "DDPM"}


@pytest.mark.parametrize("name", [Path(f).name for f in local_checkpoints(ROOT / "checkpoints")])
def test_each_shipped_models_facts_are_its_own(name):
    """The models table has a column for every shipped model, and it quotes the model's config.json (training
    steps, recommended sampler and steps) and evaluation.json (accuracy and FD over the floor at that default)."""
    folder = ROOT / "checkpoints" / name
    config = load_config(folder)
    table = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in section(readme(), "The shipped models").splitlines() if line.startswith("|")]
    header = [re.sub(r"`([^`]+)`.*", r"\1", c) for c in table[0]]
    assert name in header, f"no column for checkpoints/{name} in the models table: {header}"
    rows = {r[0]: r[header.index(name)] for r in table[2:]}
    assert f"{config.training['steps']:,} steps" in rows["training"], rows["training"]
    sampling = config.sampling
    assert rows["default"].startswith(f"{SAMPLER_NAMES[sampling.sampler]}, {sampling.steps} steps"), rows["default"]

    evaluation = json.loads((folder / "evaluation.json").read_text())
    row = next((r for r in evaluation["results"] if row_options(r).replace(precision="fp32") == sampling), None)
    assert row, f"{name}: no evaluation row at its default"
    quoted = rows["at the default"]
    assert f"{row['accuracy']:.1%}" in quoted and f"FD {row['fd_over_floor']:.2f}x" in quoted, quoted


def test_the_package_is_ddpm_alone():
    """pyproject.toml installs the ddpm package only (not tests, research or bench), at ddpm's version."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "ddpm-studio"
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["ddpm", "ddpm.*"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ddpm._version.__version__"}
    for module in (ROOT / "ddpm").rglob("*.py"):
        assert not re.search(r"^\s*(from|import) research\b", module.read_text(), flags=re.M), module.name
