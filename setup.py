"""Package discovery, which pyproject.toml cannot express on its own.

Everything else about the distribution is in pyproject.toml. The built-in reward plugins live in
the top-level `rewards/` folder (written exactly as a user's plugin is) and must ship inside the
package: `package_dir` maps that folder to `clear_rl.builtin_rewards`, and a declarative
`packages.find` cannot add a mapped package beside the ones it discovers.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["clear_rl", "clear_rl.*"]), "clear_rl.builtin_rewards"],
    package_dir={"clear_rl.builtin_rewards": "rewards"},
)
