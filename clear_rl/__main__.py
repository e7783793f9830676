"""`python -m clear_rl ...` (and so `accelerate launch -m clear_rl ...`) is the `clear-rl` CLI."""

import sys

from clear_rl.cli import main

if __name__ == "__main__":
    sys.exit(main())
