"""The lock file (requirements.lock) against pyproject.toml's ranges, the installed packages and the
README, so the tested set, the declared ranges and what the README states cannot drift apart."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# The packages the README names in its "Tested with" line.
HEADLINE = ("torch", "transformers", "trl", "peft", "diffusers", "accelerate", "datasets", "bitsandbytes")


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [d for deps in project["optional-dependencies"].values() for d in deps]
    return [Requirement(line) for line in lines]


def test_every_dependency_is_locked_within_its_range():
    pins = locked()
    problems = []
    for requirement in declared():
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} is outside pyproject's {requirement}")
    assert not problems, "run `make lock` after changing a dependency:\n" + "\n".join(problems)


@pytest.mark.lock
def test_the_installed_packages_are_the_locked_ones():
    wrong = []
    for name, version in locked().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (locked {version})")
            continue
        if Version(installed).public != Version(version).public:
            wrong.append(f"{name}: {installed} installed, {version} locked")
    assert not wrong, "this environment is not the tested set; `make install` installs it:\n" + "\n".join(
        wrong
    )


def test_the_readme_states_the_locked_versions():
    readme = (ROOT / "README.md").read_text()
    line = next((ln for ln in readme.splitlines() if ln.startswith("Tested with")), None)
    assert line is not None, "README.md has no 'Tested with' line"
    stated = {canonicalize_name(n): v for n, v in re.findall(r"([A-Za-z][\w-]*) (\d+(?:\.\d+)+)", line)}
    pins = locked()
    assert set(stated) == set(HEADLINE), f"the README names {sorted(stated)}, not {sorted(HEADLINE)}"
    assert {n: pins[n] for n in stated} == stated, "the README's versions differ from requirements.lock"
