"""README.md: the Space front matter matches what is pinned, and its two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ddpm.hub import pinned_version

ROOT = Path(__file__).resolve().parents[1]


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_front_matter_is_a_gradio_space_on_the_pinned_gradio():
    text = readme()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    requirements = (ROOT / "requirements.txt").read_text()
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == pinned_version(requirements, "gradio")
    assert meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    assert str(meta["python_version"]) == "3.11"
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


def test_images_the_readme_shows_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme()):
        assert (ROOT / path).is_file(), path
