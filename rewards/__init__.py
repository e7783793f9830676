"""The built-in reward plugins (accuracy, format, decision, latent_quality), importable as
`clear_rl.builtin_rewards.<name>`.

Each module is written exactly as a user's plugin is: a plain Python module with a function that
follows TRL's contract `fn(prompts, completions, **kwargs) -> list[float | None]`, named like
the module. pyproject.toml ships this folder as the package `clear_rl.builtin_rewards`; in a source
checkout `clear_rl/builtin_rewards/__init__.py` points that package here.
"""
