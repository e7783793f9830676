"""The built-in reward plugins (accuracy, format, decision, latent_quality).

Each file is written exactly as a user's plugin is: a plain Python file with a function that
follows TRL's contract `fn(prompts, completions, **kwargs) -> list[float | None]`, named like
the file. clear-rl loads them by file path, the same way it loads `path: my_rewards.py:fn`;
this `__init__` exists only so that wheels can ship the folder as `clear_rl.builtin_rewards`.
"""
