"""Sub-commands of the `clear-rl` CLI, one module each (see `clear_rl/cli.py`)."""
