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
from clear_rl.rewards import builtin_rewards_dir, load_rewards
names = sys.argv[1].split(",")
functions, weights = load_rewards([{"name": n, "weight": 0.5} for n in names])
out = [f(prompts=["q"], completions=["<think>t</think><answer>B</answer>"], answer=["B"], restored=[False],
         restored_latents=[None], clean_latents=[None]) for f in functions]
print(json.dumps({"dir": str(builtin_rewards_dir()), "names": [f.__name__ for f in functions], "out": out}))
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
    assert (target / "clear_rl" / "builtin_rewards" / "latent_quality.py").is_file()
    names = "accuracy,format,decision,latent_quality"
    report = _run([sys.executable, "-c", CHECK, names], cwd=tmp_path, env_path=str(target))
    assert Path(report["dir"]) == target / "clear_rl" / "builtin_rewards"
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
    script = f"import site; site.addsitedir({site_dir!r}); import clear_rl.builtin_rewards.format\n" + CHECK
    report = _run(
        [sys.executable, "-S", "-c", script, "accuracy,format,decision"], cwd=tmp_path, env_path=None
    )
    assert Path(report["dir"]) == source / "rewards"
    assert report["out"] == [[1.0], [1.0], [0.0]]
