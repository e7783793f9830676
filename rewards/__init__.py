"""The built-in reward plugins (accuracy, format, decision, latent_quality), importable as
`clear_rl.rewards.builtin.<name>`.

Each module is written exactly as a user's plugin is: a plain Python module with a function that
follows TRL's contract `fn(prompts, completions, **kwargs) -> list[float | None]`, named like
the module plus `_reward` (`format_reward`), as TRL names its own. pyproject.toml ships this
folder as the package `clear_rl.rewards.builtin`; in a source checkout
`clear_rl/rewards/builtin/__init__.py` points that package here.
"""
