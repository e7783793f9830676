"""`clear_rl.rewards.builtin` read from a source checkout: the top-level `rewards/` folder.

Wheels and editable installs build this package from `rewards/` itself (pyproject.toml's
`package-dir`), so this file ships in neither. It is what `import clear_rl.rewards.builtin.accuracy`
finds when clear_rl is imported straight from a checkout (PYTHONPATH, a git worktree sharing
another checkout's install), and it points the package at the `rewards/` folder beside this
`clear_rl`, never at another checkout's.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parents[3] / "rewards")]
