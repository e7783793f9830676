"""Built-in rewards load by name from a normal wheel install and from an editable install."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import json, sys
from pathlib import Path
from clear_rl.rewards import load_rewards
names = sys.argv[1].split(",")
functions, weights = load_rewards([{"name": n, "weight": 0.5} for n in names])
out = [f(prompts=["q"], completions=["<think>t</think><answer>B</answer>"], answer=["B"], restored=[False],
         restored_latents=[None], clean_latents=[None]) for f in functions]
# Where each built-in was imported from (by name, as clear_rl.rewards.builtin.<name>).
modules = {sys.modules[f.function.__module__].__file__ for f in functions}
print(json.dumps({"dirs": sorted({str(Path(m).parent) for m in modules}),
                  "modules": [f.function.__module__ for f in functions],
                  "names": [f.__name__ for f in functions], "out": out}))
"""


def _pip_install(*args: str) -> None:
    # Build with the environment's own setuptools when it has one, so no index is needed.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", *isolation, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _copy_project(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".venv", "tests"
    )
    shutil.copytree(REPO, source, ignore=ignore)
    return source


def _run(args: list[str], cwd: Path, env_path: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if env_path:
        env["PYTHONPATH"] = env_path
    result = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_wheel_install_ships_the_builtin_rewards(tmp_path):
    target = tmp_path / "site"
    _pip_install("--target", str(target), str(_copy_project(tmp_path)))
    assert (target / "clear_rl" / "rewards" / "builtin" / "latent_quality.py").is_file()
    # The package is built from rewards/ itself: the checkout's redirecting __init__ is not shipped.
    shipped_init = (target / "clear_rl" / "rewards" / "builtin" / "__init__.py").read_text()
    assert shipped_init == (REPO / "rewards" / "__init__.py").read_text()
    names = "accuracy,format,decision,latent_quality"
    report = _run([sys.executable, "-c", CHECK, names], cwd=tmp_path, env_path=str(target))
    assert [Path(d) for d in report["dirs"]] == [target / "clear_rl" / "rewards" / "builtin"]
    assert report["modules"] == [f"clear_rl.rewards.builtin.{n}" for n in names.split(",")]
    assert report["names"] == names.split(",")
    assert report["out"] == [[1.0], [1.0], [0.0], [None]]


@pytest.mark.slow
def test_editable_install_reads_the_checkout_rewards_folder(tmp_path):
    source, prefix = _copy_project(tmp_path), tmp_path / "prefix"
    # --ignore-installed: without it pip uninstalls the running environment's own clear-rl first.
    _pip_install("--ignore-installed", "--prefix", str(prefix), "-e", str(source))
    site_dir = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    # -S: only this prefix's site-packages, not the test environment's own clear_rl (stdlib only: no torch,
    # so latent_quality, which imports torch, is left out here).
    script = f"import site; site.addsitedir({site_dir!r}); import clear_rl.rewards.builtin.format\n" + CHECK
    report = _run(
        [sys.executable, "-S", "-c", script, "accuracy,format,decision"], cwd=tmp_path, env_path=None
    )
    assert [Path(d) for d in report["dirs"]] == [source / "rewards"]
    assert report["out"] == [[1.0], [1.0], [0.0]]


@pytest.mark.slow
def test_source_checkout_reads_its_own_rewards_folder(tmp_path):
    """clear_rl imported from a checkout on PYTHONPATH (a git worktree, say) takes the built-ins of
    that checkout, even where the environment has another checkout installed in editable mode."""
    source = _copy_project(tmp_path)
    report = _run(
        [sys.executable, "-c", CHECK, "accuracy,format,decision"], cwd=tmp_path, env_path=str(source)
    )
    assert [Path(d) for d in report["dirs"]] == [source / "rewards"]
    assert report["out"] == [[1.0], [1.0], [0.0]]
